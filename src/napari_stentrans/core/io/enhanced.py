"""Enhanced slides written by napari-stentrans, read back for viewing and inspection.

An enhanced ``.h5ad`` (``stentrans enhance -o``, ``FittedModel.write``,
``enhance(...).write_h5ad`` or the napari export) is recognised by its provenance
``uns["stentrans"]`` (:func:`~napari_stentrans.core.output.assemble`). Its ``X`` holds predicted
values, not counts, so the count checks of an input slide do not apply: :func:`read_enhanced`
returns the AnnData as written, with ``obs["array_row"]``/``obs["array_col"]`` checked on the
half-pitch lattice and recorded in ``uns["stentrans_lattice"]`` as ``{"kind", "pitch_um" (half the
input's), "source" (the file), "enhanced": True}``, so positions, ``info`` and the napari layers
use the half-pitch geometry. Such a slide is never enhanced again (:func:`refuse_enhanced`):
predictions read as counts would be smoothed twice and their depths would be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp

from ..errors import InputError, ReadError
from ..lattice import detect_lattice, snap_to_integers
from .common import source_of

PROVENANCE = "stentrans"  # uns key of an enhanced slide's provenance (core/output.py)


def is_enhanced(adata: ad.AnnData) -> bool:
    """Whether ``adata`` is an enhanced slide made by napari-stentrans (its ``uns["stentrans"]``)."""
    info = adata.uns.get(PROVENANCE)
    return isinstance(info, Mapping) and "pitch_um" in info and "lattice" in info


def read_enhanced(adata: ad.AnnData, path: Path) -> ad.AnnData:
    """Check an enhanced slide read from ``path`` and record its half-pitch lattice.

    Parameters
    ----------
    adata
        The AnnData of the file (modified in place and returned).
    path
        The file, named in errors and recorded as ``uns["stentrans_lattice"]["source"]``.

    Returns
    -------
    The enhanced AnnData: ``X`` the predicted values ``(n_sites, n_genes)`` as written,
    ``obs["array_row"]``/``obs["array_col"]`` int64 half-pitch coordinates, and
    ``uns["stentrans_lattice"] = {"kind", "pitch_um", "source", "enhanced": True}``.

    Raises
    ------
    ReadError
        Sites without half-pitch coordinates, coordinates off the recorded lattice, or
        predicted values that are NaN or infinite.
    """
    adata = _with_lattice(adata, path)
    values = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if not np.all(np.isfinite(values)):
        raise ReadError(f"{path}: enhanced slide whose X holds NaN or infinite values")
    return adata


def read_enhanced_summary(path: Path) -> ad.AnnData | None:
    """An enhanced ``.h5ad``'s sites, genes and provenance without its values, or None.

    For ``stentrans info``: ``obs``, ``var`` and ``uns`` are read (the sites checked on the
    half-pitch lattice as :func:`read_enhanced` does) while ``X`` and the layers stay on disk, so
    a large output is described in a fraction of a second. ``X`` is not checked here.

    Returns
    -------
    An AnnData without ``X`` (``n_sites x n_genes`` from ``obs``/``var``), or None when the file
    is not an enhanced slide or cannot be opened this way (the caller then reads it whole, which
    names any problem).

    Raises
    ------
    ReadError
        An enhanced file whose sites are not on its recorded lattice.
    """
    try:
        # the provenance group first: an input slide's uns (images included) is not read twice
        with h5py.File(path, "r") as file:
            if PROVENANCE not in file.get("uns", {}):
                return None
        backed = ad.read_h5ad(path, backed="r")
    except Exception:  # the full read names the problem
        return None
    try:
        if not is_enhanced(backed):
            return None
        summary = ad.AnnData(obs=backed.obs.copy(), var=backed.var.copy(), uns=dict(backed.uns))
    finally:
        backed.file.close()
    return _with_lattice(summary, path)


def _with_lattice(adata: ad.AnnData, path: Path) -> ad.AnnData:
    """Check an enhanced slide's sites on its recorded lattice and record it (in place)."""
    info = adata.uns[PROVENANCE]
    for column in ("array_row", "array_col"):
        if column not in adata.obs:
            raise ReadError(f"{path}: enhanced slide without obs[{column!r}]; was the file edited?")
    row = snap_to_integers(adata.obs["array_row"].to_numpy(dtype=float), f"{path.name} obs['array_row']")
    col = snap_to_integers(adata.obs["array_col"].to_numpy(dtype=float), f"{path.name} obs['array_col']")
    lattice = detect_lattice(row, col, hint=str(info["lattice"]), pitch_um=float(info["pitch_um"]))
    adata.obs["array_row"] = row
    adata.obs["array_col"] = col
    adata.uns["stentrans_lattice"] = {
        "kind": lattice.kind,
        "pitch_um": float(lattice.pitch_um),
        "source": str(path),
        "enhanced": True,
    }
    return adata


def refuse_enhanced(adata: ad.AnnData) -> None:
    """Raise :class:`InputError` when ``adata`` is an enhanced slide (it holds predictions, not counts)."""
    if not is_enhanced(adata):
        return
    where = source_of(adata) or "this AnnData"
    origin = adata.uns[PROVENANCE].get("source") or "the input slide"
    raise InputError(
        f"{where}: an enhanced slide (uns['stentrans']: X holds predictions at half pitch, not counts) "
        f"cannot be enhanced or evaluated again; use the slide it was made from ({origin})"
    )


def measured_spots(enhanced: ad.AnnData) -> ad.AnnData:
    """The measured spots of an enhanced slide, as the input slide they were measured on.

    Parameters
    ----------
    enhanced
        An enhanced slide (:func:`is_enhanced`).

    Returns
    -------
    AnnData over the sites of kind ``"measured"``: ``X`` their measured counts of the enhanced
    genes (``layers["measured"]``, CSR float32), ``obs["array_row"]``/``obs["array_col"]`` the
    input's coordinates (half the half-pitch ones), ``obsm["spatial"]`` the same image positions,
    ``uns["spatial"]`` with the input's spot diameter, and ``uns["stentrans_lattice"]`` the
    input lattice. Used to place an enhanced slide in the frame of its input (napari) and to
    pick genes to show from measured counts.
    """
    info = enhanced.uns[PROVENANCE]
    keep = np.asarray(enhanced.obs["kind"] == "measured")
    row = enhanced.obs["array_row"].to_numpy(dtype=np.int64)[keep] // 2
    col = enhanced.obs["array_col"].to_numpy(dtype=np.int64)[keep] // 2
    measured = enhanced.layers["measured"] if "measured" in enhanced.layers else enhanced.X
    out = ad.AnnData(
        X=sp.csr_matrix(measured[keep], dtype=np.float32),
        obs={"array_row": row, "array_col": col},
        var=enhanced.var[[]].copy(),
    )
    out.obs_names = enhanced.obs_names[keep]
    if "spatial" in enhanced.obsm:
        out.obsm["spatial"] = np.asarray(enhanced.obsm["spatial"], float)[keep]
    if "spatial" in enhanced.uns:
        out.uns["spatial"] = _full_spot_spatial(enhanced.uns["spatial"])
    out.uns["stentrans_lattice"] = {
        "kind": str(info["lattice"]),
        "pitch_um": float(info.get("input_pitch_um", 2 * float(info["pitch_um"]))),
        "source": source_of(enhanced),
    }
    return out


def _full_spot_spatial(spatial: Mapping) -> dict:
    """``uns["spatial"]`` with the input's spot diameter (the enhanced slide's is halved)."""
    out = {}
    for library, entry in spatial.items():
        entry = dict(entry)
        scalefactors = dict(entry.get("scalefactors", {}))
        if "spot_diameter_fullres" in scalefactors:
            scalefactors["spot_diameter_fullres"] = 2.0 * float(scalefactors["spot_diameter_fullres"])
        entry["scalefactors"] = scalefactors
        out[library] = entry
    return out


__all__ = [
    "is_enhanced",
    "read_enhanced",
    "read_enhanced_summary",
    "refuse_enhanced",
    "measured_spots",
    "PROVENANCE",
]
