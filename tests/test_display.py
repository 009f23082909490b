"""Display geometry: spot centres land exactly on their image positions, in micrometres."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import block_sites, make_slide, shared_data_or_skip
from napari_stentrans.core.display import DisplayFrame, spatially_variable_genes, spot_raster


def _pixel_centres(raster) -> np.ndarray:
    """World (y, x) of each site's centre: the middle of its pixel (pair)."""
    p, q = raster.pixel_of
    q = q + (0.5 if raster.doubled else 0.0)
    pq1 = np.column_stack([p, q, np.ones(len(p))])
    return (pq1 @ raster.affine.T)[:, :2]


@pytest.mark.parametrize("kind", ["square", "hex", "checkerboard"])
def test_spot_centres_are_their_image_positions_in_micrometres(kind):
    r, c = block_sites(kind, 9, 14)
    adata = make_slide(r, c, kind)
    # rotate the image frame by 180 degrees like the muscle slides: spatial runs against the array
    adata.obsm["spatial"] = 1000.0 - adata.obsm["spatial"]
    frame = DisplayFrame.of(adata)
    raster = spot_raster(frame, r, c, np.ones((len(r), 1)))
    world = _pixel_centres(raster)
    expected = frame.um_per_pixel * adata.obsm["spatial"][:, ::-1]
    np.testing.assert_allclose(world, expected, atol=1e-6)
    # neighbours are one pitch apart in world micrometres
    from scipy.spatial import cKDTree

    d, _ = cKDTree(world).query(world, k=2)
    np.testing.assert_allclose(d[:, 1], frame.lattice.pitch_um, rtol=1e-9)
    assert raster.mask.sum() == len(r) * (2 if kind != "square" else 1)


def test_half_pitch_raster_is_centred_on_the_original_spots():
    r, c = block_sites("hex", 6, 10)
    frame = DisplayFrame.of(make_slide(r, c, "hex"))
    original = _pixel_centres(spot_raster(frame, r, c, np.ones((len(r), 1))))
    enhanced = spot_raster(frame, 2 * r, 2 * c, np.ones((len(r), 1)), half_pitch=True)
    np.testing.assert_allclose(_pixel_centres(enhanced), original, atol=1e-9)
    full = spot_raster(frame, r, c, np.ones((len(r), 1)))
    # half the pixel size
    np.testing.assert_allclose(
        np.abs(np.linalg.det(enhanced.affine[:2, :2])), np.abs(np.linalg.det(full.affine[:2, :2])) / 4
    )


def test_visium_frame_matches_the_h_and_e():
    from napari_stentrans.core.io import read

    adata = read(shared_data_or_skip() / "visium_mouse_muscle_mckellar2021/Vis7B_5dpi")
    frame = DisplayFrame.of(adata)
    world = frame.world(adata.obs["array_row"], adata.obs["array_col"])
    residual = world - frame.um_per_pixel * adata.obsm["spatial"][:, ::-1]
    assert np.abs(residual).max() < 3.0  # micrometres: Space Ranger positions are rounded pixels
    # Space Ranger's spot_diameter_fullres spans a nominal 65 um spot: an independent check of the
    # micrometre scale fitted from the 100 um pitch
    diameter = next(iter(adata.uns["spatial"].values()))["scalefactors"]["spot_diameter_fullres"]
    assert frame.um_per_pixel == pytest.approx(65.0 / diameter, rel=0.01)


def test_spatially_variable_genes_prefer_structure_over_noise():
    r, c = block_sites("square", 12, 12)
    adata = make_slide(r, c, "square", n_genes=12, seed=3)
    rng = np.random.default_rng(0)
    x = adata.X.toarray()
    x[:, 5] = rng.poisson(50.0, size=len(r))  # high but spatially random
    x[:, 6] = np.where(c < 6, 80.0, 2.0) + rng.poisson(2.0, size=len(r))  # a sharp domain
    import scipy.sparse as sp

    adata.X = sp.csr_matrix(x)
    ranking = spatially_variable_genes(adata, n=12)
    assert ranking.index("G6") < ranking.index("G5")
    assert ranking.index("G5") >= 8  # spatially random, however high: near the bottom


@pytest.mark.parametrize("kind", ["square", "hex"])
def test_painted_pixels_map_back_to_their_sites(kind):
    r, c = block_sites(kind, 8, 12)
    raster = spot_raster(DisplayFrame.of(make_slide(r, c, kind)), r, c, np.ones((len(r), 1)))
    chosen = np.array([3, 10, 17])
    painted = raster.pixels_of_sites(r[chosen], c[chosen])
    rows, cols = raster.sites_of_pixels(painted)
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == set(
        zip(r[chosen].tolist(), c[chosen].tolist(), strict=True)
    )
    if kind == "hex":  # painting only the right half of a spot's pixel pair still marks the spot
        half = np.zeros_like(painted)
        p, q = raster.pixel_of
        half[p[5], q[5] + 1] = True
        rows, cols = raster.sites_of_pixels(half)
        assert (rows.tolist(), cols.tolist()) == ([r[5]], [c[5]])
