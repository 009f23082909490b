"""The enhanced slide as an AnnData: predicted counts, site table, measured counts, provenance."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import __version__
from .classical import linear_weights
from .estimators.base import typed_validation
from .io import library_of, source_of
from .io.common import clean_spatial
from .lattice import fit_affine
from .sites import KINDS, OutputSites
from .slide import Slide, site_keys


def _version_of(package: str) -> str:
    try:
        return _package_version(package)
    except PackageNotFoundError:
        return "not installed"


def _absolute(source: str) -> str:
    """The input's path as provenance: absolute, so it names the file from any folder (a path as
    given on the command line, ``../data/A1.tsv.gz``, pointed elsewhere from another folder)."""
    return str(Path(source).absolute()) if source and Path(source).exists() else source


def _unused_torch(model) -> str:
    """What ``torch_version`` says of an estimate made without a network.

    A learned preset whose network was refused trained one with torch (its history has the
    epochs) and wrote the default's estimate: both are said.
    """
    if "train_loss" in model.history:
        return f"not used for the estimate (torch {_version_of('torch')} trained a network that was not kept)"
    return "not used"


def assemble(
    slide: Slide,
    model,
    gene_idx: np.ndarray,
    sites: OutputSites,
    counts: np.ndarray | None,
    predictor,
    patterns: dict | None = None,
) -> ad.AnnData:
    """The enhanced AnnData (scanpy/squidpy conventions).

    Parameters
    ----------
    slide
        The prepared input slide.
    model
        The fitted model that predicted (:class:`~.estimators.base.FittedModel`).
    gene_idx
        ``(n_genes,)`` indices of the enhanced genes in the slide.
    sites
        The output sites.
    counts
        ``(n_sites, n_genes)`` predicted counts, or None when ``X`` is streamed to disk later.
    predictor
        The predictor (:class:`~.estimators.base.Predictor`): its provenance notes (e.g. where
        the classical rank came from) and the classical parameters it used.
    patterns
        The shared-pattern check of the enhanced genes (:class:`~.patterns.PatternCheck`), when
        known (a streamed file gets it after the last batch).

    Returns
    -------
    AnnData: ``X`` = ``counts``; ``obs`` half-pitch ``array_row``/``array_col``, ``kind``,
    ``barcode`` (missing at sites without a spot); ``var["training_gene"]``;
    ``layers["measured"]`` (CSR, measured counts at the measured sites); ``obsm["spatial"]`` in the input's image pixels and ``obsm["spatial_um"]``;
    ``uns["spatial"]`` with the spot diameter halved; ``uns["stentrans"]`` the provenance
    (with ``library_id`` when the input names its library); ``obs["library_id"]`` when the
    input has that column; every other column of the input's ``obs`` (layer labels, clusters,
    QC values) at the sites of its spots, missing at new sites (:func:`input_annotations`).
    """
    has_spot = sites.spot >= 0
    barcodes = np.where(has_spot, slide.barcodes[np.clip(sites.spot, 0, None)], "")
    barcodes = _unmeasured_barcodes(slide, sites, barcodes)
    names = np.where(
        has_spot,
        barcodes,
        np.char.add(np.char.add("hp_r", sites.row.astype(str)), np.char.add("_c", sites.col.astype(str))),
    )
    obs = pd.DataFrame(
        {
            "array_row": sites.row,
            "array_col": sites.col,
            "kind": pd.Categorical(sites.kind, categories=list(KINDS)),
            # missing (not "") at sites without a spot, like the input annotations carried below
            "barcode": pd.Categorical(np.where(barcodes != "", barcodes, None)),
        },
        index=pd.Index(names, dtype=str),
    )
    library = library_of(slide.adata)
    if library is not None and "library_id" in slide.adata.obs.columns:
        obs["library_id"] = pd.Categorical(np.full(len(obs), library))
    # a SpatialData table's region and instance keys index the input store, not annotations
    store_keys = [slide.adata.uns.get("spatialdata_attrs", {}).get(k) for k in ("region_key", "instance_key")]
    skip = [*obs.columns, *(k for k in store_keys if k)]
    for name, values in input_annotations(slide.adata.obs, sites.spot, exclude=skip).items():
        obs[name] = values
    # the input's gene annotations (symbols, ids, feature types) travel with the written genes
    var = slide.adata.var.iloc[gene_idx].drop(columns=["training_gene"], errors="ignore").copy()
    var.index = pd.Index(slide.genes[gene_idx], dtype=str)
    var["training_gene"] = var.index.isin(model.training_genes)
    measured = _measured_layer(slide, gene_idx, sites.spot)
    out = ad.AnnData(X=counts, obs=obs, var=var, layers={"measured": measured})
    adata = slide.adata
    out.obsm["spatial_um"] = slide.lattice.physical(sites.row, sites.col, scale=2.0)
    out.obsm["spatial"] = _image_positions(adata, slide, sites)
    if "spatial" in adata.uns:
        out.uns["spatial"] = _half_spot_spatial(clean_spatial(adata.uns["spatial"], "input slide"))
    described = model.describe()
    described.pop("classical", None)
    classical = None if predictor.params is None else predictor.params.describe()
    info = {
        "version": __version__,
        "torch_version": _version_of("torch") if model.uses_network else _unused_torch(model),
        "anndata_version": _version_of("anndata"),
        "lattice": slide.lattice.kind,
        "input_pitch_um": float(slide.lattice.pitch_um),
        "pitch_um": float(slide.lattice.pitch_um) / 2.0,
        "coordinates": "half-pitch: measured spot (r, c) of the input is at (2r, 2c)",
        "preset": described.pop("preset"),
        "config": _plain(model.config.to_dict()) if hasattr(model, "config") else {},
        # a learned preset that fell back to the default: what was asked for, beside what ran
        **(
            {"requested_config": _plain(model.requested.to_dict())}
            if getattr(model, "requested", None) is not None
            else {}
        ),
        "model": _plain(described),
        "n_training_genes": len(model.training_genes),
        "history": {k: np.asarray(v, dtype=int if k == "epoch" else float) for k, v in model.history.items()},
        "validation": typed_validation(model.validation),
        "n_lost_sites": int(len(slide.lost_sites)),
        "lost_sites": np.asarray(slide.lost_sites, dtype=np.int64).reshape(-1, 2),
        "source": _absolute(source_of(adata)),
        **({"library_id": library} if library is not None else {}),
        **{k: str(v) for k, v in predictor.notes.items()},
    }
    if classical is not None:
        info["classical"] = _plain(classical)
    if patterns is not None:
        info["patterns"] = patterns
    out.uns["stentrans"] = info
    return out


def input_annotations(obs: pd.DataFrame, spot: np.ndarray, exclude=()) -> dict[str, object]:
    """The input's ``obs`` columns at the output sites: a spot's own value, missing elsewhere.

    Parameters
    ----------
    obs
        The input slide's ``obs`` (one row per spot).
    spot
        ``(n_sites,)`` index of each output site's spot in ``obs``, -1 for a site without one
        (new half-pitch sites, imputed in-tissue sites the matrix lacks).
    exclude
        Column names the output sets itself (``array_row``, ``kind``, ...): not copied.

    Returns
    -------
    ``{name: column}``: categorical for categories, text and booleans (no category at sites
    without a spot), nullable ``Int64`` for integers, float with NaN for other numbers.
    """
    has = np.asarray(spot) >= 0
    rows = np.asarray(spot)[has]
    skipped = {*exclude, "array_row", "array_col", "in_tissue"}
    out: dict[str, object] = {}
    for name in obs.columns:
        if name in skipped:
            continue
        column = obs[name]
        if pd.api.types.is_integer_dtype(column):  # e.g. cluster numbers: nullable, not float
            values = pd.array(np.zeros(len(has), dtype=np.int64), dtype="Int64")
            values[~has] = pd.NA
            values[has] = column.to_numpy()[rows]
            out[name] = values
        elif pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            values = np.full(len(has), np.nan)
            values[has] = column.to_numpy(dtype=np.float64, na_value=np.nan)[rows]
            out[name] = values
        else:  # categories, text, booleans: a categorical, missing where there is no spot
            categorical = pd.Categorical(
                column.astype("object") if not isinstance(column.dtype, pd.CategoricalDtype) else column
            )
            codes = np.full(len(has), -1, dtype=np.int64)
            codes[has] = categorical.codes[rows]
            out[name] = pd.Categorical.from_codes(codes, categories=categorical.categories)
    return out


def _measured_layer(slide: Slide, gene_idx: np.ndarray, spot: np.ndarray) -> sp.csr_matrix:
    """Measured counts at the output sites (rows of sites without a spot are empty).

    Built from the spots' CSR rows directly: one copy of the measured entries, however many
    genes there are.
    """
    rows = np.flatnonzero(spot >= 0)  # ascending, so the spots' rows come in site order
    picked = slide.counts[spot[rows]]
    if not np.array_equal(gene_idx, np.arange(slide.counts.shape[1])):
        picked = picked[:, gene_idx]
    per_site = np.zeros(len(spot), dtype=np.int64)
    per_site[rows] = np.diff(picked.indptr)
    indptr = np.concatenate([[0], np.cumsum(per_site)])
    return sp.csr_matrix(
        (picked.data.astype(np.float32, copy=False), picked.indices, indptr), shape=(len(spot), len(gene_idx))
    )


def _image_positions(adata: ad.AnnData, slide: Slide, sites: OutputSites) -> np.ndarray:
    """Positions ``(n_sites, 2)`` of the sites in the input's ``obsm["spatial"]`` frame.

    A site at a spot of the input (measured, or lost) keeps that spot's own position. Every
    other site takes the least-squares affine map from array coordinates to the input's
    positions, plus the spots' own offsets from that map interpolated linearly between them
    (:func:`~.classical.linear_weights`): a new site between two spots lies midway between their
    real positions. Spot positions found on an image deviate from any affine map (legacy ST:
    up to a quarter of the pitch), and the map alone moved measured spots off where they were
    measured. Without ``obsm["spatial"]``: the lattice's physical positions (micrometres).
    """
    row, col = sites.row / 2.0, sites.col / 2.0
    spatial = np.asarray(adata.obsm["spatial"], float) if "spatial" in adata.obsm else None
    coef = None if spatial is None else fit_affine(slide.row, slide.col, spatial)
    if coef is None:
        return slide.lattice.physical(row, col)
    offsets = spatial - np.column_stack([slide.row, slide.col, np.ones(len(slide.row))]) @ coef
    out = np.column_stack([row, col, np.ones(len(row))]) @ coef
    out += linear_weights(slide.positions(), sites.positions(slide)) @ offsets
    at_spot = sites.spot >= 0
    out[at_spot] = spatial[sites.spot[at_spot]]
    return out


def _half_spot_spatial(spatial: dict) -> dict:
    out = {}
    for library, entry in spatial.items():
        entry = dict(entry)
        scalefactors = dict(entry.get("scalefactors", {}))
        for key in ("spot_diameter_fullres", "bin_size_um"):  # Visium HD: 16 um bins -> 8 um
            if key in scalefactors:
                scalefactors[key] = float(scalefactors[key]) / 2.0
        entry["scalefactors"] = scalefactors
        out[library] = entry
    return out


def _plain(value):
    """Make a nested dict storable in ``uns`` (no None, no tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None:
        return "none"
    return value


__all__ = ["assemble"]


def _unmeasured_barcodes(slide: Slide, sites: OutputSites, barcodes: np.ndarray) -> np.ndarray:
    """``barcodes`` with the imputed in-tissue spots that the count matrix lacks named too.

    A Space Ranger positions file names every in-tissue spot, also one missing from the matrix
    (filtered out upstream): its site is imputed like a spot without counts, and keeps its
    barcode like one (``uns["stentrans_lattice"]["in_tissue_unmeasured_barcodes"]``).
    """
    known = slide.adata.uns.get("stentrans_lattice", {}).get("in_tissue_unmeasured_barcodes")
    if known is None or len(known) != len(slide.in_tissue_unmeasured) or not len(known):
        return barcodes
    own = (sites.spot < 0) & (sites.child == 0)  # a site of the input lattice without a spot
    unmeasured = slide.in_tissue_unmeasured
    lookup = pd.Series(np.asarray(known, dtype=str), index=site_keys(unmeasured[:, 0], unmeasured[:, 1]))
    found = lookup.reindex(site_keys(sites.fine_row[own], sites.fine_col[own])).fillna("").to_numpy(str)
    out = barcodes.astype(object)
    out[own] = np.where(found != "", found, barcodes[own])
    return out.astype(str)
