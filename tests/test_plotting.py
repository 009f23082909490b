"""Geometry of the `--plot` maps: every site's cell tiles its lattice, in any image frame."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import block_sites, make_slide
from napari_stentrans.core.lattice import Lattice
from napari_stentrans.core.plotting import plot_frame


def _polygon_area(cells: np.ndarray) -> np.ndarray:
    x, y = cells[..., 0], cells[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))


def _meets_every_neighbour_edge_to_edge(
    xy: np.ndarray, cells: np.ndarray, pitch: float, pairs: np.ndarray | None = None
) -> bool:
    """Each neighbour midpoint is the midpoint of an edge of both cells (no gap, no overlap).

    ``pairs`` of neighbours; None: those nearer than ``pitch`` (an undistorted frame).
    """
    from scipy.spatial import cKDTree

    edge_mid = 0.5 * (cells + np.roll(cells, -1, axis=1))  # (n, sides, 2)
    if pairs is None:
        pairs = cKDTree(xy).query_pairs(pitch * 1.01, output_type="ndarray")
    assert len(pairs) > len(xy)  # the test sees the lattice's neighbours
    mid = 0.5 * (xy[pairs[:, 0]] + xy[pairs[:, 1]])
    for side in (0, 1):
        gap = np.linalg.norm(edge_mid[pairs[:, side]] - mid[:, None, :], axis=2).min(axis=1)
        if gap.max() > 1e-6 * pitch:
            return False
    return True


@pytest.mark.parametrize("kind", ["hex", "square"])
@pytest.mark.parametrize("turn", [0.0, 0.4, np.pi / 2, 2.0])
@pytest.mark.parametrize("mirror", [False, True])
def test_cells_tile_a_lattice_turned_and_mirrored_as_images_show_it(kind, turn, mirror):
    lattice = Lattice(kind)
    r, c = block_sites(kind, 9, 14)
    adata = make_slide(r, c, kind)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    turned = (lattice.physical(r, c) * ([1, -1] if mirror else [1, 1])) @ rotation.T * 3.7 + 250.0
    adata.obsm["spatial"] = turned  # pixels, y down
    enhanced = adata.copy()  # plot_frame reads only the output's positions
    frame = plot_frame(adata, enhanced)
    xy, pitch = frame.xy_in, lattice.pitch_um * 3.7
    np.testing.assert_allclose(xy, turned, atol=1e-6 * pitch)
    sides = 6 if kind == "hex" else 4
    cells = xy[:, None, :] + frame.cell
    assert cells.shape == (len(xy), sides, 2)
    cell_area = pitch**2 * (np.sqrt(3) / 2 if kind == "hex" else 1.0)  # the lattice's Voronoi cell
    np.testing.assert_allclose(_polygon_area(cells), cell_area, rtol=1e-9)
    assert _meets_every_neighbour_edge_to_edge(xy, cells, pitch)


def test_the_2x_sites_tile_at_half_the_pitch_in_the_image_frame(tmp_path):
    from helpers import fit_cpu

    r, c = block_sites("hex", 10, 16)
    adata = make_slide(r, c, "hex")
    adata.obsm["spatial"] = 2000.0 - Lattice("hex").physical(r, c) * 2.0  # turned 180 degrees
    out = fit_cpu(adata, "default").enhance(adata, genes=2, device="cpu")
    frame = plot_frame(adata, out)
    cells = frame.xy_in[:, None, :] + frame.cell
    assert _meets_every_neighbour_edge_to_edge(frame.xy_in, cells, frame.pitch)
    half = frame.pitch / 2
    assert _meets_every_neighbour_edge_to_edge(frame.xy_out, frame.xy_out[:, None, :] + frame.cell / 2, half)


@pytest.mark.parametrize("kind", ["hex", "square"])
def test_cells_tile_a_sheared_image_frame_with_scattered_spot_centres(kind):
    """her2st C1's detected spot centres scatter around its grid (median 7 % of a pitch, up to
    23 %) and its squares showed seams and overlaps; a stretched or sheared image frame would turn
    regular polygons into the wrong shape. Cells are the affine image of the lattice's cell, at
    the fitted positions."""
    from scipy.spatial import cKDTree

    from helpers import fit_cpu
    from napari_stentrans.core.lattice import fit_affine

    lattice = Lattice(kind)
    r, c = block_sites(kind, 10, 16)
    adata = make_slide(r, c, kind)
    physical = lattice.physical(r, c)
    to_px = np.array([[1.9, 0.15], [-0.1, 2.2]])  # px per um: stretched, sheared, turned a little
    spread = np.random.default_rng(0).normal(0, 0.07 * lattice.pitch_um * 2, physical.shape)
    adata.obsm["spatial"] = physical @ to_px + 300.0 + spread
    out = fit_cpu(adata, "default").enhance(adata, genes=2, device="cpu")
    frame = plot_frame(adata, out)
    fitted = np.column_stack([r, c, np.ones(len(r))]) @ fit_affine(r, c, adata.obsm["spatial"])
    np.testing.assert_allclose(frame.xy_in, fitted)
    assert np.abs(frame.xy_in - adata.obsm["spatial"]).max() > 0.1 * frame.pitch  # not the scattered ones
    pairs = cKDTree(physical).query_pairs(lattice.pitch_um * 1.01, output_type="ndarray")
    cells = frame.xy_in[:, None, :] + frame.cell
    assert _meets_every_neighbour_edge_to_edge(frame.xy_in, cells, frame.pitch, pairs)
    area = lattice.pitch_um**2 * (np.sqrt(3) / 2 if kind == "hex" else 1.0) * abs(np.linalg.det(to_px))
    np.testing.assert_allclose(_polygon_area(cells), area, rtol=0.05)  # to_px fitted on scattered centres
    out_um = np.asarray(out.obsm["spatial_um"])
    pairs_out = cKDTree(out_um).query_pairs(lattice.pitch_um / 2 * 1.01, output_type="ndarray")
    half = frame.xy_out[:, None, :] + frame.cell / 2
    assert _meets_every_neighbour_edge_to_edge(frame.xy_out, half, frame.pitch / 2, pairs_out)


def test_plot_shows_the_he_and_the_imputed_sites_beside_it_or_the_he_alone_centred(tmp_path):
    from PIL import Image

    from helpers import fit_cpu
    from napari_stentrans.core.plotting import plot_side_by_side

    r, c = block_sites("hex", 12, 20)
    hole = np.hypot((r - 6) * np.sqrt(3), c - 10) < 2.5  # a lumen of 5 spots inside the tissue
    r, c = r[~hole], c[~hole]
    adata = make_slide(r, c, "hex")
    adata.obsm["spatial"] = 2000.0 - Lattice("hex").physical(r, c) * 2.0
    image = np.zeros((500, 500, 3), dtype=np.uint8)
    image[..., 1] = 200  # green: no colour map of the genes draws it
    adata.uns["spatial"] = {
        "lib": {"images": {"lowres": image}, "scalefactors": {"tissue_lowres_scalef": 0.25}}
    }
    out = fit_cpu(adata, "default").enhance(adata, genes=2, device="cpu")
    n_imputed = int((out.obs["kind"] == "imputed").sum())
    assert n_imputed == hole.sum()
    plot_side_by_side(adata, out, list(out.var_names[:1]), tmp_path / "p.png")
    pixels = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).astype(int)
    width = pixels.shape[1]
    cyan = (pixels[..., 0] < 60) & (pixels[..., 1] > 200) & (pixels[..., 2] > 200)
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    top = pixels.shape[0] // 2  # the H&E row (one gene row below it)
    assert cyan[:top, width // 2 :].sum() > 100 and cyan[:top, : width // 2].sum() == 0  # beside the H&E
    assert green[:top].sum() > 0.2 * top * width and cyan[top:].sum() == 0
    # nothing imputed: no empty cell beside the H&E, which is centred over both columns
    r, c = block_sites("hex", 12, 20)
    full = make_slide(r, c, "hex")
    full.obsm["spatial"] = 2000.0 - Lattice("hex").physical(r, c) * 2.0
    full.uns["spatial"] = adata.uns["spatial"]
    out = fit_cpu(full, "default").enhance(full, genes=2, device="cpu")
    assert (out.obs["kind"] == "imputed").sum() == 0
    plot_side_by_side(full, out, list(out.var_names[:1]), tmp_path / "full.png")
    pixels = np.asarray(Image.open(tmp_path / "full.png").convert("RGB")).astype(int)
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    columns = np.flatnonzero(green[: pixels.shape[0] // 2].any(axis=0))
    assert columns.min() < 0.4 * pixels.shape[1] and columns.max() > 0.6 * pixels.shape[1]  # over both


def test_a_blank_hires_image_gives_way_to_the_lowres_one():
    """scanpy's tiny Visium slide ships a black hires placeholder: the plot's H&E row was black."""
    r, c = block_sites("hex", 6, 10)
    adata = make_slide(r, c, "hex")
    adata.obsm["spatial"] = Lattice("hex").physical(r, c) * 2.0
    lowres = np.zeros((60, 60, 3), dtype=np.uint8)
    lowres[..., 0] = np.arange(60, dtype=np.uint8)[:, None]  # a real image varies
    images = {"hires": np.zeros((300, 300, 3), dtype=np.uint8), "lowres": lowres}
    scalefactors = {"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1}
    adata.uns["spatial"] = {"lib": {"images": images, "scalefactors": scalefactors}}
    enhanced = adata.copy()  # plot_frame reads only the output's positions
    enhanced.obsm["spatial"] = adata.obsm["spatial"]
    frame = plot_frame(adata, enhanced)
    assert frame.image is lowres and frame.extent == pytest.approx((-5.0, 595.0, 595.0, -5.0))
    images["hires"] = np.full((300, 300, 3), 7, dtype=np.uint8)
    images["hires"][0, 0] = 8
    assert plot_frame(adata, enhanced).image is images["hires"]  # any variation: a real image


def test_the_measured_map_leaves_out_the_spots_the_output_imputes():
    """Vis5A's measured map drew 982 cells under "measured (981 spots)": its near-empty spot,
    imputed by the output, was drawn as a dark measured cell."""
    import scipy.sparse as sp

    from helpers import fit_cpu
    from napari_stentrans.core.plotting import measured_spots, side_by_side_titles

    r, c = block_sites("hex", 10, 16)
    adata = make_slide(r, c, "hex")
    counts = adata.X.toarray() * 100  # ~thousands of counts a spot: 1 count is near-empty
    counts[5] = 0  # without counts
    counts[9] = 0
    counts[9, 0] = 1  # near-empty
    adata.X = sp.csr_matrix(counts)
    out = fit_cpu(adata, "default").enhance(adata, genes=2, device="cpu")
    measured = measured_spots(adata, out)
    assert measured.shape == (adata.n_obs,) and list(np.flatnonzero(~measured)) == [5, 9]
    title = side_by_side_titles(adata, out, [adata.var_names[0]])[0][0]
    assert title.endswith(f"measured ({measured.sum():,} spots)")
    del out.obs["kind"]  # not an output of ours: the input's depth says the same
    assert list(np.flatnonzero(~measured_spots(adata, out))) == [5, 9]
