"""Seeded synthetic slides with known truth at 2x resolution (the bundled sample data).

A slide is drawn from smooth latent fields over physical space (tissue domains plus gradients).
Each gene's rate is a log-linear mix of a few fields; spot depth varies smoothly and per spot;
counts are negative binomial. The noise-free expression (rate per 10,000 counts) at every
half-pitch site inside the tissue is kept in ``uns["stentrans_truth"]`` for quality checks.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .core.lattice import Lattice

VISIUM_ROWS, VISIUM_COLS = 78, 128
ST_ROWS, ST_COLS = 33, 35


def _fields(xy: np.ndarray, centres: np.ndarray, scales: np.ndarray, tilt: np.ndarray) -> np.ndarray:
    """Smooth latent fields ``(n, k)`` at physical positions ``xy`` (units of the tissue size)."""
    d2 = ((xy[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    domains = np.exp(-d2 / (2 * scales[None, :] ** 2))
    gradients = xy @ tilt
    return np.concatenate([domains, gradients], axis=1)


#: the bundled samples: name (napari's File > Open Sample key, ``sample_data/NAME.h5ad``) -> lattice
SAMPLES = {"synthetic_visium": "hex", "synthetic_st": "square"}


def sample_slide(name: str) -> ad.AnnData:
    """The bundled sample ``name`` (:data:`SAMPLES`): 300 genes, seed 0, marked in
    ``uns["stentrans_sample"]`` so a front end can name the file ``sample_data/generate.py`` writes."""
    adata = synthetic_slide(SAMPLES[name], n_genes=300, seed=0)
    adata.uns["stentrans_sample"] = name
    return adata


def synthetic_slide(
    kind: str = "hex", n_genes: int = 300, seed: int = 0, with_truth: bool = True, full_array: bool = False
) -> ad.AnnData:
    """A synthetic slide in the reader's conventions.

    Parameters
    ----------
    kind
        ``"hex"`` (a Visium capture area, 78 x 128 array) or ``"square"`` (a legacy ST array).
    n_genes
        Number of genes.
    seed
        Random seed; the same seed gives the same slide.
    full_array
        Every array position is tissue (4,992 spots for Visium): for benchmarks.
    with_truth
        Keep the noise-free expression at every in-tissue half-pitch site in
        ``uns["stentrans_truth"]`` (``array_row``, ``array_col`` in half-pitch coordinates,
        ``expression`` as rate per 10,000 counts, ``genes``).
    """
    rng = np.random.default_rng(seed)
    lattice = Lattice(kind)
    if kind == "hex":
        r, c = np.meshgrid(np.arange(VISIUM_ROWS), np.arange(VISIUM_COLS), indexing="ij")
        keep = (r + c) % 2 == 0
        row, col = r[keep], c[keep]
        mean_depth = 8000.0
    elif kind == "square":
        row, col = (a.ravel() for a in np.meshgrid(np.arange(ST_ROWS), np.arange(ST_COLS), indexing="ij"))
        mean_depth = 6000.0
    else:
        raise ValueError(f"synthetic slides are 'hex' or 'square', not {kind!r}")
    xy_um = lattice.physical(row, col)
    centre = (xy_um.max(0) + xy_um.min(0)) / 2
    size = np.ptp(xy_um, axis=0).max() / 2

    def tissue(xy: np.ndarray) -> np.ndarray:
        """Inside an irregular blob, outside a few small holes."""
        z = (xy - centre) / size
        angle = np.arctan2(z[:, 1], z[:, 0])
        radius = 0.78 + 0.08 * np.sin(3 * angle + 0.5) + 0.05 * np.cos(5 * angle)
        inside = np.hypot(z[:, 0] * 1.1, z[:, 1]) < radius
        if full_array:
            return np.ones(len(xy), dtype=bool)
        for hx, hy, hr in hole_list:
            inside &= np.hypot(z[:, 0] - hx, z[:, 1] - hy) > hr
        return inside

    hole_radius = 1.6 * lattice.pitch_um / size
    hole_list = [(-0.3, -0.2, hole_radius), (0.25, 0.3, hole_radius * 0.8), (0.1, -0.45, hole_radius * 0.6)]
    in_tissue = tissue(xy_um)
    row, col = row[in_tissue], col[in_tissue]
    n_domains = 6
    centres = rng.uniform(-0.6, 0.6, size=(n_domains, 2))
    scales = rng.uniform(0.15, 0.35, size=n_domains)
    tilt = rng.normal(0, 0.6, size=(2, 2))
    loadings = rng.normal(0, 1.2, size=(n_domains + 2, n_genes)) * (
        rng.random((n_domains + 2, n_genes)) < 0.35
    )
    base = rng.normal(np.log(3.0), 1.2, size=n_genes)  # log rate per 10k counts
    dispersion = 4.0

    def rate(xy_um_: np.ndarray) -> np.ndarray:
        f = _fields((xy_um_ - centre) / size, centres, scales, tilt)
        log_rate = base + f @ loadings
        expr = np.exp(log_rate)
        return expr / expr.sum(1, keepdims=True) * 1e4  # per 10,000 counts

    xy = lattice.physical(row, col)
    expression = rate(xy)
    depth_field = np.exp(
        0.35 * np.sin(3 * (xy[:, 0] - centre[0]) / size) + 0.25 * ((xy[:, 1] - centre[1]) / size)
    )
    depth = mean_depth * depth_field * rng.lognormal(0, 0.25, size=len(row))
    mean = expression * depth[:, None] / 1e4
    counts = rng.poisson(rng.gamma(dispersion, mean / dispersion)).astype(np.float32)
    barcodes = [f"SYN{i:05d}-1" for i in range(len(row))]
    genes = [f"Gene{g:04d}" for g in range(n_genes)]
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"array_row": row, "array_col": col, "in_tissue": 1}, index=barcodes),
        var=pd.DataFrame(index=genes),
    )
    pixels_per_um = 1.8
    adata.obsm["spatial"] = xy * pixels_per_um + 300.0
    library = f"synthetic_{'visium' if kind == 'hex' else 'st'}"
    lowres_scale = 0.1
    adata.uns["spatial"] = {
        library: {
            "images": {"lowres": _tissue_image(tissue, lattice, xy, pixels_per_um, lowres_scale)},
            "scalefactors": {
                "tissue_lowres_scalef": lowres_scale,
                "spot_diameter_fullres": (55.0 if kind == "hex" else 100.0) * pixels_per_um,
            },
            "metadata": {"source": "napari_stentrans.synthetic", "seed": seed},
        }
    }
    all_sites = _all_sites(kind)
    adata.uns["stentrans_lattice"] = {
        "kind": kind,
        "pitch_um": float(lattice.pitch_um),
        "source": "synthetic",
    }
    if with_truth:
        hr, hc = lattice.half_pitch_children(all_sites[:, 0], all_sites[:, 1])
        hr, hc = hr.ravel(), hc.ravel()
        hxy = lattice.physical(hr, hc, scale=2.0)
        inside = tissue(hxy)
        adata.uns["stentrans_truth"] = {
            "array_row": hr[inside],
            "array_col": hc[inside],
            "expression": rate(hxy[inside]).astype(np.float32),
            "genes": np.asarray(genes),
        }
    return adata


def _all_sites(kind: str) -> np.ndarray:
    if kind == "hex":
        r, c = np.meshgrid(np.arange(VISIUM_ROWS), np.arange(VISIUM_COLS), indexing="ij")
        keep = (r + c) % 2 == 0
        return np.column_stack([r[keep], c[keep]])
    r, c = np.meshgrid(np.arange(ST_ROWS), np.arange(ST_COLS), indexing="ij")
    return np.column_stack([r.ravel(), c.ravel()])


def _tissue_image(tissue, lattice: Lattice, xy: np.ndarray, pixels_per_um: float, scale: float) -> np.ndarray:
    """A pale H&E-like RGB image of the tissue mask at ``scale`` of full resolution."""
    extent_um = lattice.physical(*_all_sites(lattice.kind).T).max(0) + lattice.pitch_um
    h = int((extent_um[1] * pixels_per_um + 600) * scale)
    w = int((extent_um[0] * pixels_per_um + 600) * scale)
    yy, xx = np.mgrid[0:h, 0:w]
    um = np.column_stack([xx.ravel(), yy.ravel()]) / scale - 300.0
    inside = tissue(um / pixels_per_um).reshape(h, w)
    texture = 0.5 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    img = np.full((h, w, 3), 245, dtype=np.uint8)
    img[inside] = np.column_stack(
        [215 - 25 * texture[inside], 150 - 40 * texture[inside], 190 - 20 * texture[inside]]
    ).astype(np.uint8)
    return img


HD_MICRONS_PER_PIXEL = 0.2737  # a Visium HD full-resolution image


def write_10x_h5(path, counts, barcodes, names, ids) -> None:
    """Write a 10x feature-barcode HDF5 matrix (``matrix/`` group, Gene Expression features).

    Parameters
    ----------
    path
        The ``.h5`` file to create.
    counts
        ``(n_spots, n_genes)`` integer counts (dense or sparse); stored genes x spots as CSC,
        as Space Ranger stores them (10x Genomics, "Feature-barcode matrix HDF5 format").
    barcodes, names, ids
        ``n_spots`` barcodes, ``n_genes`` gene names and gene ids.
    """
    import h5py

    matrix = sp.csc_matrix(sp.csr_matrix(counts).T).astype(np.int32)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = matrix.data, matrix.indices, matrix.indptr
        m["shape"] = np.array(matrix.shape)
        m["barcodes"] = np.asarray(barcodes).astype("S")
        feats = m.create_group("features")
        feats["name"] = np.asarray(names).astype("S")
        feats["id"] = np.asarray(ids).astype("S")
        feats["feature_type"] = np.full(len(names), "Gene Expression").astype("S")


def write_visium_hd(outs, bin_um: int = 16, n_genes: int = 100, seed: int = 0):
    """Write a synthetic Visium HD output: ``outs/binned_outputs/square_NNNum/`` and ``outs/spatial/``.

    The bins are the square synthetic slide (:func:`synthetic_slide` ``("square", n_genes, seed)``,
    same array coordinates and counts, so its truth is that slide's ``uns["stentrans_truth"]``)
    scaled to ``bin_um`` micrometre bins, in the layout of Space Ranger's Visium HD binned
    outputs (10x Genomics, "Visium HD outputs: binned outputs"): ``filtered_feature_bc_matrix.h5``
    (10x feature-barcode HDF5, barcodes ``s_016um_RRRRR_CCCCC-1``),
    ``spatial/tissue_positions.parquet`` (every bin of the array rectangle, ``in_tissue`` 0/1,
    pixel positions ``bin_um`` apart at ``HD_MICRONS_PER_PIXEL``), ``spatial/scalefactors_json.json``
    (``bin_size_um``, ``microns_per_pixel``, ...) and ``spatial/tissue_lowres_image.png``.
    ``outs/`` itself holds a ``spatial/`` folder and no count matrix, as in a real HD output.

    Parameters
    ----------
    outs
        Folder to create (must not exist).
    bin_um
        Bin size in micrometres (2, 8 or 16 in Space Ranger).

    Returns
    -------
    Path of the ``square_NNNum`` folder.
    """
    import json
    from pathlib import Path

    from PIL import Image

    adata = synthetic_slide("square", n_genes=n_genes, seed=seed)
    outs = Path(outs)
    folder = outs / "binned_outputs" / f"square_{bin_um:03d}um"
    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    (outs / "spatial").mkdir()
    row = adata.obs["array_row"].to_numpy()
    col = adata.obs["array_col"].to_numpy()
    barcodes = np.char.add(
        np.char.add(f"s_{bin_um:03d}um_", np.char.zfill(row.astype(str), 5)),
        np.char.add("_", np.char.add(np.char.zfill(col.astype(str), 5), "-1")),
    )
    write_10x_h5(
        folder / "filtered_feature_bc_matrix.h5",
        adata.X,
        barcodes,
        adata.var_names,
        np.char.add("SYNG", np.arange(adata.n_vars).astype(str)),
    )
    # every bin of the array rectangle, as Space Ranger lists them; in tissue = measured
    all_rc = _all_sites("square")
    measured = {(r, c) for r, c in zip(row.tolist(), col.tolist(), strict=True)}
    in_tissue = np.array([(r, c) in measured for r, c in all_rc.tolist()], dtype=np.int64)
    offset_px = 200.0
    table = pd.DataFrame(
        {
            "barcode": [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in all_rc.tolist()],
            "in_tissue": in_tissue,
            "array_row": all_rc[:, 0],
            "array_col": all_rc[:, 1],
            "pxl_row_in_fullres": all_rc[:, 0] * bin_um / HD_MICRONS_PER_PIXEL + offset_px,
            "pxl_col_in_fullres": all_rc[:, 1] * bin_um / HD_MICRONS_PER_PIXEL + offset_px,
        }
    )
    table.to_parquet(spatial / "tissue_positions.parquet", index=False)
    # a pale H&E-like image: tissue colour over the in-tissue bins, at 1/4 of full resolution
    scalef = 0.25
    tissue = np.zeros((all_rc[:, 0].max() + 1, all_rc[:, 1].max() + 1), dtype=bool)
    tissue[all_rc[:, 0], all_rc[:, 1]] = in_tissue.astype(bool)
    px_per_bin = bin_um / HD_MICRONS_PER_PIXEL
    h, w = (int(scalef * (2 * offset_px + px_per_bin * (n + 1))) for n in tissue.shape)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.rint((yy / scalef - offset_px) / px_per_bin).astype(int)
    c = np.rint((xx / scalef - offset_px) / px_per_bin).astype(int)
    inside = (r >= 0) & (c >= 0) & (r < tissue.shape[0]) & (c < tissue.shape[1])
    inside[inside] = tissue[r[inside], c[inside]]
    image = np.full((h, w, 3), 245, dtype=np.uint8)
    image[inside] = (200, 130, 180)
    Image.fromarray(image).save(spatial / "tissue_lowres_image.png")
    Image.fromarray(image).save(outs / "spatial" / "tissue_lowres_image.png")
    scalefactors = {
        "spot_diameter_fullres": bin_um / HD_MICRONS_PER_PIXEL,
        "bin_size_um": float(bin_um),
        "microns_per_pixel": HD_MICRONS_PER_PIXEL,
        "tissue_lowres_scalef": float(scalef),
        "fiducial_diameter_fullres": 1200.0,
        "regist_target_img_scalef": 1.0,
    }
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    return folder
