"""SpatialData Zarr stores (scverse ``spatialdata``): a slide read from one, an enhanced slide written as one.

Format: the SpatialData on-disk format (a Zarr group with ``tables/``, ``shapes/``,
``images/``; https://spatialdata.scverse.org/en/stable/design_doc.html). A table is an AnnData
whose ``uns["spatialdata_attrs"]`` names the ``region`` (the shapes element of the spots),
``region_key`` and ``instance_key``.

Reading needs only anndata (the table: counts, ``obs["array_row"]``/``["array_col"]``,
``obsm["spatial"]``); with the optional ``spatialdata`` package (``pip install
"napari-stentrans[spatialdata]"``) the H&E image and its scale factor come along too, taken
from the coordinate transformations that the image and the spots share, and spot positions
come from the circles when the table has no ``obsm["spatial"]``. Writing needs ``spatialdata``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import InputError, ReadError
from .enhanced import is_enhanced, read_enhanced

INSTALL = 'pip install "napari-stentrans[spatialdata]"'
SITE_KEY = "site_id"  # instance key of the written table: the row of the site's circle


def is_spatialdata_store(path: Path) -> bool:
    """Whether the folder ``path`` is a SpatialData Zarr store (names only: cheap, never reads data)."""
    zarr_group = (path / "zarr.json").is_file() or (path / ".zgroup").is_file()
    return zarr_group and any((path / element).is_dir() for element in ("tables", "shapes", "images"))


def _spatialdata():
    """The ``spatialdata`` package, or None when it is not installed."""
    try:
        import spatialdata
    except ImportError:
        return None
    return spatialdata


def read_spatialdata(path: str | Path, table: str | None = None, library_id: str | None = None) -> ad.AnnData:
    """Read one slide from a SpatialData Zarr store.

    Parameters
    ----------
    path
        The store (a folder, usually ``NAME.zarr``).
    table
        Name of the table under ``tables/``; needed when the store holds several.
    library_id
        The region (spots element) to read when the table annotates several slides.

    Returns
    -------
    AnnData of the table's spots as :func:`napari_stentrans.read` returns it (raw counts,
    lattice coordinates), ``uns["spatial"][region]`` with the image (when ``spatialdata`` is
    installed and the image is a plain scaling of the spot frame) and ``spot_diameter_fullres``
    from the circles' radius. An enhanced store written by :func:`write_spatialdata` is read
    as an enhanced slide (:mod:`.enhanced`).

    Raises
    ------
    ReadError
        No table, several tables or regions without a choice, an unknown choice, or a table
        that is not a slide (see :func:`~.h5ad.slide_from_anndata`).
    """
    from .h5ad import slide_from_anndata

    path = Path(path)
    tables_dir = path / "tables"
    names = sorted(p.name for p in tables_dir.iterdir() if p.is_dir()) if tables_dir.is_dir() else []
    if not names:
        raise ReadError(f"{path}: SpatialData store without a table (tables/ is empty); nothing to enhance")
    if table is None and len(names) > 1:
        raise ReadError(
            f"{path}: SpatialData store with {len(names)} tables ({', '.join(names)}); choose one with "
            f"--table NAME (Python: read(path, table=NAME))"
        )
    table = table or names[0]
    if table not in names:
        raise ReadError(f"{path}: no table {table!r} in the store; it holds {', '.join(names)}")
    adata = ad.read_zarr(tables_dir / table)
    attrs = dict(adata.uns.get("spatialdata_attrs", {}))
    region = _pick_region(adata, attrs, path, table, library_id)
    notes = []
    sdata = _spatialdata()
    if sdata is None:
        notes.append(f"image and circles not read: install spatialdata ({INSTALL})")
        library = {}
    else:
        library = _image_and_positions(sdata.read_zarr(path), adata, attrs, region, notes)
    # an enhanced store (write_spatialdata) keeps its scale factors under the input's library
    enhanced = is_enhanced(adata)
    name = next(iter(adata.uns.get("spatial", {})), region) if enhanced else region
    if name is not None:
        kept = dict(adata.uns.get("spatial", {}).get(name, {}))
        kept["scalefactors"] = {**kept.get("scalefactors", {}), **library.get("scalefactors", {})}
        if library.get("images"):
            kept["images"] = library["images"]
        adata.uns["spatial"] = {name: kept}
    if enhanced:
        return read_enhanced(adata, path)
    adata = slide_from_anndata(adata, path)
    if notes:
        adata.uns["stentrans_read_note"] = "; ".join(notes)
    return adata


def _pick_region(
    adata: ad.AnnData, attrs: dict, path: Path, table: str, library_id: str | None
) -> str | None:
    """The region (slide) of the table to read; subsets ``adata`` in place to it."""
    key = attrs.get("region_key")
    if key is None or key not in adata.obs:
        regions = np.atleast_1d(attrs.get("region", [])).astype(str)
        return str(regions[0]) if len(regions) == 1 else None
    regions = sorted(pd.unique(adata.obs[key].astype(str)))
    if library_id is None and len(regions) > 1:
        raise ReadError(
            f"{path}: table {table!r} holds {len(regions)} slides (regions {', '.join(regions)}); "
            "choose one with read(path, library_id=NAME); slides are never merged"
        )
    region = library_id or regions[0]
    if region not in regions:
        raise ReadError(f"{path}: table {table!r} has no region {region!r}; it holds {', '.join(regions)}")
    if len(regions) > 1:
        adata._inplace_subset_obs(np.asarray(adata.obs[key].astype(str) == region))
    return region


def _image_and_positions(sdata, adata: ad.AnnData, attrs: dict, region: str | None, notes: list) -> dict:
    """``uns["spatial"]`` entry (image, scale factors) and, if missing, ``obsm["spatial"]`` from the circles."""
    from spatialdata.transformations import get_transformation

    if region is None or region not in sdata.shapes:
        return {}
    shapes = sdata.shapes[region]
    library: dict = {"scalefactors": {}}
    if "radius" in shapes:
        library["scalefactors"]["spot_diameter_fullres"] = 2.0 * float(np.median(shapes["radius"]))
    if "spatial" not in adata.obsm and attrs.get("instance_key") in adata.obs:
        centres = shapes.loc[adata.obs[attrs["instance_key"]].to_numpy()].geometry.centroid
        adata.obsm["spatial"] = np.column_stack([centres.x, centres.y])
    spots_to = get_transformation(shapes, get_all=True)
    for name, image in sdata.images.items():
        if not hasattr(image, "dims"):  # a multiscale DataTree: its full-resolution level
            image = next(iter(image.values())).ds["image"]
        for system, to_system in get_transformation(image, get_all=True).items():
            if system not in spots_to:
                continue
            xy = ("x", "y")
            m_image = to_system.to_affine_matrix(input_axes=xy, output_axes=xy)
            m_spots = spots_to[system].to_affine_matrix(input_axes=xy, output_axes=xy)
            spots_to_image = np.linalg.solve(m_image, m_spots)  # full-res pixels -> image pixels
            scale = spots_to_image[0, 0]
            if not np.allclose(spots_to_image, np.diag([scale, scale, 1.0]), rtol=1e-6, atol=1e-6):
                continue  # rotated or shifted against the spots: not an H&E of this frame
            resolution = "hires" if "hires" in name else "lowres"
            pixels = np.asarray(image.transpose("y", "x", "c").values)
            library.setdefault("images", {})[resolution] = pixels
            library["scalefactors"][f"tissue_{resolution}_scalef"] = float(scale)
            break
    if not library.get("images") and len(sdata.images):
        notes.append("no image shares a plain scaling with the spots; image left out")
    return library


# ------------------------------------------------------------------------------------------- writing


def write_spatialdata(
    enhanced: ad.AnnData, path: str | Path, inputs: Iterable[str | Path | None] = (), overwrite: bool = False
) -> Path:
    """Write an enhanced slide as a SpatialData Zarr store (atomically).

    Parameters
    ----------
    enhanced
        The enhanced AnnData (:func:`~napari_stentrans.core.output.assemble`).
    path
        The store to write (``NAME.zarr``).
    inputs
        Files and folders that must not be replaced.
    overwrite
        Replace an existing store at ``path``.

    Returns
    -------
    ``path``. The store holds ``tables/table`` (the enhanced AnnData, annotating the circles
    by ``obs["site_id"]``), ``shapes/{library}_x2`` (one circle per site at its
    ``obsm["spatial"]`` position, in the input's full-resolution pixels, radius half the
    halved spot diameter ``spot_diameter_fullres / 2``; without scale factors a quarter of the
    half pitch, so neighbouring circles do not touch) and ``images/{library}_{res}_image`` (the
    H&E, when the slide had one). Coordinate systems: ``{library}`` (full-resolution pixels),
    ``{library}_um`` (micrometres: the frame of ``obsm["spatial_um"]``, an affine map of the pixels)
    and ``{library}_downscaled_{res}`` (the image's pixels), for the circles and the images alike.

    Raises
    ------
    InputError
        ``spatialdata`` is not installed, ``path`` is an input, or it exists and
        ``overwrite`` is not set.
    """
    sdata_pkg = _spatialdata()
    if sdata_pkg is None:
        raise InputError(f"{path}: writing SpatialData needs the spatialdata package: {INSTALL}")
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Affine, Identity, Scale, Sequence

    path = Path(path)
    resolved = path.resolve()
    for source in inputs:
        if source is not None and Path(source).exists():
            src = Path(source).resolve()
            if resolved == src or src in resolved.parents or resolved in src.parents:
                raise InputError(f"{path}: refusing to overwrite or write inside the input {source}")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: output exists; pass overwrite=True (CLI: --overwrite) to replace it")
    library = next(iter(enhanced.uns.get("spatial", {})), "slide")
    entry = enhanced.uns.get("spatial", {}).get(library, {})
    scalefactors = dict(entry.get("scalefactors", {}))
    xy = np.asarray(enhanced.obsm["spatial"], float)
    px_to_um = _to_um(enhanced)
    um_per_px = float(np.sqrt(abs(np.linalg.det(px_to_um[:2, :2])))) or 1.0
    diameter = scalefactors.get("spot_diameter_fullres")
    if diameter is None:  # no Visium scale factors: a spot half the half pitch across
        diameter = 0.5 * float(enhanced.uns["stentrans"]["pitch_um"]) / um_per_px
    # the frame of obsm["spatial_um"] (the lattice's micrometres), not pixels times a scale: one
    # micrometre frame for the table and the store (a user found them apart by up to 2 mm)
    to_um = Affine(px_to_um, input_axes=("x", "y"), output_axes=("x", "y"))
    # the circles in every coordinate system of the images too (they vanished from the lowres one)
    in_images = {
        f"{library}_downscaled_{resolution}": Scale(
            [float(scalefactors[f"tissue_{resolution}_scalef"])] * 2, axes=("x", "y")
        )
        for resolution in entry.get("images", {})
    }
    shapes_key = f"{library}_x2"
    circles = ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(len(xy), float(diameter) / 2.0),
        index=np.arange(len(xy)),
        transformations={library: Identity(), f"{library}_um": to_um, **in_images},
    )
    # the matrices are shared, not copied (the enhanced X can be large); the tables are copied
    uns = {k: v for k, v in enhanced.uns.items() if k != "stentrans_lattice"}
    if "spatial" in uns:  # the image is an element of its own; keep the scale factors
        uns["spatial"] = {
            lib: {k: v for k, v in dict(e).items() if k != "images"} for lib, e in uns["spatial"].items()
        }
    table = ad.AnnData(
        X=enhanced.X,
        obs=enhanced.obs.copy(),
        var=enhanced.var.copy(),
        layers=dict(enhanced.layers),
        obsm=dict(enhanced.obsm),
        uns=uns,
    )
    table.obs["region"] = pd.Categorical([shapes_key] * table.n_obs)
    table.obs[SITE_KEY] = np.arange(table.n_obs)
    table = TableModel.parse(table, region=shapes_key, region_key="region", instance_key=SITE_KEY)
    images = {}
    for resolution, pixels in entry.get("images", {}).items():
        scalef = float(scalefactors[f"tissue_{resolution}_scalef"])
        to_full = Scale([1.0 / scalef, 1.0 / scalef], axes=("x", "y"))
        images[f"{library}_{resolution}_image"] = Image2DModel.parse(
            _channels_first(np.asarray(pixels)),
            dims=("c", "y", "x"),
            transformations={
                f"{library}_downscaled_{resolution}": Identity(),
                library: to_full,
                f"{library}_um": Sequence([to_full, to_um]),
            },
        )
    sdata = sdata_pkg.SpatialData(images=images, shapes={shapes_key: circles}, tables={"table": table})
    with _atomic_folder(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
        sdata.write(tmp)
    return path


def _to_um(enhanced: ad.AnnData) -> np.ndarray:
    """``3 x 3`` affine (x, y, 1) from ``obsm["spatial"]`` to ``obsm["spatial_um"]`` (least
    squares; the identity without them)."""
    if "spatial_um" not in enhanced.obsm or enhanced.n_obs < 3:
        return np.eye(3)
    um = np.asarray(enhanced.obsm["spatial_um"], float)
    px = np.asarray(enhanced.obsm["spatial"], float)
    coef, *_ = np.linalg.lstsq(np.column_stack([px, np.ones(len(px))]), um, rcond=None)
    return np.vstack([coef.T, [0.0, 0.0, 1.0]]) if np.linalg.det(coef[:2, :2]) != 0 else np.eye(3)


def _channels_first(pixels: np.ndarray) -> np.ndarray:
    """``(y, x, c)`` or ``(y, x)`` image -> ``(c, y, x)``."""
    return pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)


@contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a fresh folder path beside ``path``; on success it replaces ``path`` (an old store
    is removed only after the new one is complete), on any error it is removed."""
    parent = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp = parent / path.name
    try:
        yield tmp
        if path.exists():
            os.replace(path, parent / "previous")
        os.replace(tmp, path)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


__all__ = ["read_spatialdata", "write_spatialdata", "is_spatialdata_store", "INSTALL"]
