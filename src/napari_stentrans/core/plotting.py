"""Side-by-side PNG of measured and enhanced genes (matplotlib, no display needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .files import atomic_path
from .io import lattice_of
from .lattice import NEIGHBOUR_STEPS, Lattice, fit_affine
from .slide import gene_label, near_empty

MAX_GENES = 12  # rows of one figure; more genes are named as left out, never dropped silently


def _count(n: int, noun: str) -> str:
    """``"1 site"``, ``"2,232 sites"``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _dense_column(x, j: int) -> np.ndarray:
    col = x[:, j]
    return np.asarray(col.toarray() if sp.issparse(col) else col).ravel()


def genes_to_plot(requested: list[str] | None, ranked: list[str], n_default: int = 3) -> tuple[list, list]:
    """The genes a plot shows and those it leaves out.

    ``requested`` (names the user gave, in their order) are all shown up to :data:`MAX_GENES`;
    without them the ``n_default`` first of ``ranked`` (e.g. the most variable) are shown.
    """
    chosen = list(dict.fromkeys(requested)) if requested else list(ranked[:n_default])
    return chosen[:MAX_GENES], chosen[MAX_GENES:]


@dataclass
class PlotFrame:
    """Where spots are drawn: image pixels (y down, as the H&E) when the slide has them, else µm.

    ``xy_in``/``xy_out`` ``(n, 2)`` positions of the measured spots and the output sites,
    ``pitch`` the input pitch in those units, ``cell`` ``(sides, 2)`` the vertices of one input
    site's lattice cell around its centre (the output's cells are half of it), ``image`` the H&E
    (or None) and ``extent`` its (left, right, bottom, top) in those units for ``imshow``.
    """

    xy_in: np.ndarray
    xy_out: np.ndarray
    pitch: float
    units: str
    cell: np.ndarray
    image: np.ndarray | None = None
    extent: tuple[float, float, float, float] | None = None


def plot_frame(original: ad.AnnData, enhanced: ad.AnnData) -> PlotFrame:
    """The drawing frame of a measured slide and its enhancement (see :class:`PlotFrame`).

    With ``obsm["spatial"]`` (full-resolution image pixels from Space Ranger, or the pixel
    columns of an ST coordinates file) both are drawn as the image shows them, whatever the
    array axes' orientation (Vis7B's array rows run against its image's y axis); the H&E
    (hires, else lowres; a blank one-colour image is passed over) is placed under them with
    its scale factor. The measured spots sit where the least-squares affine map of their array
    coordinates puts them, and each cell is that map's image of the lattice's cell, so the
    cells tile a rotated, stretched or sheared frame too: an ST slide's detected spot centres
    scatter around the grid (her2st C1: median 7 % of a pitch, up to 23 %), which opened seams
    between cells drawn at them.
    """
    lattice = lattice_of(original)
    row, col = original.obs["array_row"].to_numpy(), original.obs["array_col"].to_numpy()
    physical = lattice.physical(row, col)
    cell_um = lattice_cell(lattice)
    spatial = np.asarray(original.obsm["spatial"], float) if "spatial" in original.obsm else None
    to_px = fit_affine(row, col, spatial) if spatial is not None else None
    to_um = fit_affine(row, col, physical)
    if to_px is None or to_um is None or "spatial" not in enhanced.obsm:
        return PlotFrame(physical, np.asarray(enhanced.obsm["spatial_um"]), lattice.pitch_um, "um", cell_um)
    um_to_px = np.linalg.solve(to_um[:2], to_px[:2])  # (2, 2): a µm step (row vector) -> pixels
    px_per_um = float(np.sqrt(abs(np.linalg.det(um_to_px))))
    fitted = np.column_stack([row, col, np.ones(len(row))]) @ to_px
    # the output's sites by the same map, not at obsm["spatial"]: that keeps each spot's detected
    # centre, and cells drawn at scattered centres open seams
    half = enhanced.obs[["array_row", "array_col"]].to_numpy(dtype=float) / 2.0
    frame = PlotFrame(
        fitted,
        np.column_stack([half, np.ones(len(half))]) @ to_px,
        lattice.pitch_um * px_per_um,
        "px",
        cell_um @ um_to_px,
    )
    for entry in original.uns.get("spatial", {}).values():
        images, scalefactors = entry.get("images", {}), entry.get("scalefactors", {})
        for res in ("hires", "lowres"):
            scalef = scalefactors.get(f"tissue_{res}_scalef")
            if res in images and isinstance(scalef, int | float) and scalef > 0:
                image = np.asarray(images[res])
                if image.size == 0 or np.ptp(image) == 0:  # scanpy's tiny slide: a black hires
                    continue
                h, w = image.shape[:2]
                frame.image = image
                frame.extent = (-0.5 / scalef, (w - 0.5) / scalef, (h - 0.5) / scalef, -0.5 / scalef)
                return frame
    return frame


def measured_spots(original: ad.AnnData, enhanced: ad.AnnData) -> np.ndarray:
    """``(n_spots,)`` whether each spot of ``original`` is measured as ``stentrans enhance`` counts it.

    From the output's ``obs["kind"]`` and ``obs["barcode"]`` when it has them (spots masked as
    lost, without counts or near-empty are imputed), else from the input's depth
    (:func:`~.slide.near_empty`).
    """
    if "kind" in enhanced.obs and "barcode" in enhanced.obs:
        kinds = enhanced.obs["kind"].to_numpy()
        return original.obs_names.isin(enhanced.obs["barcode"].to_numpy()[kinds == "measured"])
    return ~near_empty(np.asarray(original.X.sum(axis=1)).ravel())


def side_by_side_titles(
    original: ad.AnnData, enhanced: ad.AnnData, genes: list[str]
) -> list[tuple[str, str]]:
    """The titles of :func:`plot_side_by_side`'s panels: ``(measured, enhanced)`` per gene.

    Each names the gene by its symbol where the var names are ids (as the napari layers do),
    on its own line (an id and the panel's counts on one line ran into the next panel's title),
    and counts the spots as ``stentrans enhance`` does, the imputed ones on the 2x panel: from the output's ``obs["kind"]`` (spots
    masked as lost, without counts or near-empty are imputed, not measured), else from the
    input's depth (:func:`~.slide.near_empty`).
    """
    preset_name = enhanced.uns.get("stentrans", {}).get("preset", "stEnTrans")
    if "kind" in enhanced.obs:  # an output of ours: its barcodes name these spots (measured_spots)
        kinds = enhanced.obs["kind"].to_numpy()
        n_measured, n_imputed = int((kinds == "measured").sum()), int((kinds == "imputed").sum())
    else:
        n_measured = int(measured_spots(original, enhanced).sum())
        n_imputed = original.n_obs - n_measured
    # the imputed sites are the output's: named on its panel (the measured one shows them as holes)
    imputed = f", {n_imputed:,} imputed" if n_imputed else ""
    return [
        (
            f"{label}\nmeasured ({_count(n_measured, 'spot')})",
            f"{label}\n2x, {preset_name} ({enhanced.n_obs:,} sites{imputed})",
        )
        for label in (gene_label(original.var, gene) for gene in genes)
    ]


def lattice_cell(lattice: Lattice) -> np.ndarray:
    """``(sides, 2)`` vertices (µm) of one site's cell around its centre: the regular polygon
    that tiles the lattice in physical space.

    Its edges face the lattice's neighbours (:data:`~.lattice.NEIGHBOUR_STEPS`, both signs) at
    half the pitch: a hexagon on the hex lattice, a square on the square and checkerboard ones.
    """
    steps = NEIGHBOUR_STEPS[lattice.kind]
    sides = 2 * len(steps)
    dx, dy = lattice.physical(np.array([steps[0][0]]), np.array([steps[0][1]]))[0]
    angles = np.arctan2(dy, dx) + np.pi / sides + 2 * np.pi * np.arange(sides) / sides
    radius = lattice.pitch_um / 2 / np.cos(np.pi / sides)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


PANEL_INCHES = 3.2  # width of one map; its height follows the tissue's aspect
TITLE_INCHES = 0.8  # a row's two title lines and margins
DPI = 110


def panel_height(frame: PlotFrame) -> float:
    """Height in inches of one map of ``frame``: the tissue's own aspect, within 0.5-1.8."""
    xy = np.vstack([frame.xy_in, frame.xy_out])
    span = np.ptp(xy, axis=0) + 2 * frame.pitch
    return PANEL_INCHES * float(np.clip(span[1] / span[0], 0.5, 1.8))


def plot_side_by_side(original: ad.AnnData, enhanced: ad.AnnData, genes: list[str], path: str | Path) -> Path:
    """Write a PNG with one row per gene: measured counts (left) and enhanced counts (right).

    Sites are drawn in the slide's image orientation (:func:`plot_frame`; otherwise at their
    physical positions), each as its lattice cell (hexagons, squares meeting edge to edge), so
    the 2x lattice shows as cells of half the size over the same tissue. The cells tile the
    tissue and would hide an H&E under them, so a slide with one gets a first row with the
    image alone, framed as the maps are (the maps themselves are drawn on white), and beside it
    the sites the output imputed (``obs["kind"]``), in cyan as the napari layers paint lost
    regions (without imputed sites the image is centred over both columns). Each map is framed
    on the tissue (no square box around a long section). Every gene of ``genes`` is drawn
    (choose them with :func:`genes_to_plot`); titles from :func:`side_by_side_titles`. The PNG is ``2 * PANEL_INCHES + 1.6`` inches wide and
    ``panel_height + TITLE_INCHES`` inches a row, at :data:`DPI`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    frame = plot_frame(original, enhanced)
    xy_in, xy_out, pitch = frame.xy_in, frame.xy_out, frame.pitch
    measured = measured_spots(original, enhanced)  # the others are holes here, filled in the 2x map
    cells_in = (xy_in[:, None, :] + frame.cell[None, :, :])[measured]
    cells_out = xy_out[:, None, :] + frame.cell[None, :, :] / 2  # the 2x lattice: same axes, half pitch
    titles = side_by_side_titles(original, enhanced, genes)
    image_row = frame.image is not None
    n_rows = len(genes) + image_row
    height = panel_height(frame)
    fig, axes = plt.subplots(
        n_rows,
        2,
        figsize=(2 * PANEL_INCHES + 1.6, (height + TITLE_INCHES) * n_rows),
        squeeze=False,
        layout="constrained",
    )
    xy_all = np.vstack([xy_in, xy_out])
    low, high = xy_all.min(axis=0) - pitch, xy_all.max(axis=0) + pitch

    def frame_axes(ax, he: bool = False) -> None:
        ax.set_aspect("equal")
        if he:  # the gene maps hide it: drawn in the first row only
            ax.imshow(frame.image, extent=frame.extent, interpolation="bilinear")
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(high[1], low[1])  # y down, as images (and the H&E) are drawn
        ax.set_xticks([])
        ax.set_yticks([])

    if image_row:
        imputed = (
            enhanced.obs["kind"].to_numpy() == "imputed" if "kind" in enhanced.obs else np.zeros(0, bool)
        )
        he = axes[0, 0]
        if not imputed.any():  # nothing to show beside it: the H&E alone, centred over both columns
            for ax in axes[0]:
                ax.remove()
            he = fig.add_subplot(axes[0, 0].get_gridspec()[0, :])
        frame_axes(he, he=True)
        he.set_title("H&E (where the spots below lie)", fontsize=9)
        if imputed.any():  # where the output holds values no spot measured
            frame_axes(axes[0, 1], he=True)
            axes[0, 1].add_collection(
                PolyCollection(cells_out[imputed], facecolors="cyan", edgecolors="face", linewidths=0.2)
            )
            axes[0, 1].set_title(f"H&E, {_count(int(imputed.sum()), 'site')} imputed (cyan)", fontsize=9)
    for i, gene in enumerate(genes):
        row = axes[i + image_row]
        before = _dense_column(original.X, original.var_names.get_loc(gene))[measured]
        after = _dense_column(enhanced.X, enhanced.var_names.get_loc(gene))
        vmax = float(np.percentile(np.concatenate([before, after]), 99)) or 1.0
        for ax, cells, values, title in (
            (row[0], cells_in, before, titles[i][0]),
            (row[1], cells_out, after, titles[i][1]),
        ):
            frame_axes(ax)
            # edges in the face colour: antialiased seams between cells would show the H&E
            sc = PolyCollection(cells, array=values, cmap="magma", edgecolors="face", linewidths=0.2)
            sc.set_clim(0, vmax)
            ax.add_collection(sc)
            ax.set_title(title, fontsize=9)
        fig.colorbar(sc, ax=row.tolist(), shrink=0.8, label="counts")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def plot_evaluation(report: dict, path: str | Path) -> Path:
    """The metrics of an :func:`.evaluate.evaluate` report, one panel each, methods side by side.

    Top: box plot of per-gene Pearson r on counts. Middle: box plot of per-gene gene-specific r
    (the 100 most spatially variable genes; reports without it skip the panel). Bottom:
    co-expression r against the measured truth and against its signal (count splitting), with
    the signal's reliability in the panel's title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    methods = [report["methods"][m] for m in names]

    def finite(values) -> list[float]:
        return [v for v in values if v is not None and np.isfinite(v)]

    with_gs = all("gene_specific_pcc" in m for m in methods)
    rows = 3 if with_gs else 2
    fig, axes = plt.subplots(rows, 1, figsize=(1.2 * len(names) + 2.5, 3.0 * rows), sharex=True)
    positions = np.arange(1, len(names) + 1)
    axes[0].boxplot([finite(m["pcc"]) or [np.nan] for m in methods], positions=positions, showfliers=False)
    axes[0].set_ylabel("per-gene r (counts)")
    if with_gs:
        axes[1].boxplot(
            [finite(m["gene_specific_pcc"]) or [np.nan] for m in methods],
            positions=positions,
            showfliers=False,
        )
        spatial = len(report.get("spatial_genes", ())) or 100
        axes[1].set_ylabel(f"gene-specific r\n({spatial} most spatial genes)")
    co = axes[-1]
    for key, marker, label in (
        ("coexpression_r", "o", "against the measured truth"),
        ("coexpression_r_signal", "s", "against its signal (count splitting)"),
    ):
        values = [m.get(key) for m in methods]
        values = [np.nan if v is None else v for v in values]
        if np.isfinite(values).any():
            co.plot(positions, values, marker, label=label, ms=6)
    reliability = report.get("truth", {}).get("signal_coexpression_reliability")
    co.set_ylabel("co-expression r")
    co.legend(fontsize=8, loc="best")
    from .evaluate import signal_grade

    grade = signal_grade(reliability)
    if grade is None:
        co.set_title("signal correlations not judged (too few spots or signal genes)", fontsize=8)
    else:
        co.set_title(f"signal correlations {grade} determined (split-half r = {reliability:.2f})", fontsize=8)
    for ax in axes[:-1]:  # the co-expression panel keeps its own range: its values sit close together
        ax.axhline(0, color="0.6", lw=0.8)
    co.set_xticks(positions, names, rotation=30, ha="right")
    axes[0].set_title(
        f"{Path(report['dataset']).name or report['dataset']}: {report['protocol']}, {report['n_genes']} genes, "
        f"{report['n_heldout_spots']} spots",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
