"""Side-by-side PNG of measured and enhanced genes (matplotlib, no display needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .files import atomic_path
from .io import lattice_of
from .lattice import fit_affine
from .slide import gene_label, near_empty

_MARKER = {"hex": "h", "square": "s", "checkerboard": "D"}
MAX_GENES = 12  # rows of one figure; more genes are named as left out, never dropped silently


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
    ``pitch`` the input pitch in those units, ``image`` the H&E (or None) and ``extent`` its
    (left, right, bottom, top) in those units for ``imshow``.
    """

    xy_in: np.ndarray
    xy_out: np.ndarray
    pitch: float
    units: str
    image: np.ndarray | None = None
    extent: tuple[float, float, float, float] | None = None


def plot_frame(original: ad.AnnData, enhanced: ad.AnnData) -> PlotFrame:
    """The drawing frame of a measured slide and its enhancement (see :class:`PlotFrame`).

    With ``obsm["spatial"]`` (full-resolution image pixels from Space Ranger, or the pixel
    columns of an ST coordinates file) both are drawn as the image shows them, whatever the
    array axes' orientation (Vis7B's array rows run against its image's y axis); the H&E
    (hires, else lowres) is placed under them with its scale factor.
    """
    lattice = lattice_of(original)
    row, col = original.obs["array_row"].to_numpy(), original.obs["array_col"].to_numpy()
    physical = lattice.physical(row, col)
    spatial = np.asarray(original.obsm["spatial"], float) if "spatial" in original.obsm else None
    to_px = fit_affine(row, col, spatial) if spatial is not None else None
    to_um = fit_affine(row, col, physical)
    if to_px is None or to_um is None or "spatial" not in enhanced.obsm:
        return PlotFrame(physical, np.asarray(enhanced.obsm["spatial_um"]), lattice.pitch_um, "um")
    px_per_um = float(np.sqrt(abs(np.linalg.det(to_px[:2])) / abs(np.linalg.det(to_um[:2]))))
    frame = PlotFrame(
        spatial, np.asarray(enhanced.obsm["spatial"], float), lattice.pitch_um * px_per_um, "px"
    )
    for entry in original.uns.get("spatial", {}).values():
        images, scalefactors = entry.get("images", {}), entry.get("scalefactors", {})
        for res in ("hires", "lowres"):
            scalef = scalefactors.get(f"tissue_{res}_scalef")
            if res in images and isinstance(scalef, int | float) and scalef > 0:
                image = np.asarray(images[res])
                h, w = image.shape[:2]
                frame.image = image
                frame.extent = (-0.5 / scalef, (w - 0.5) / scalef, (h - 0.5) / scalef, -0.5 / scalef)
                return frame
    return frame


def side_by_side_titles(
    original: ad.AnnData, enhanced: ad.AnnData, genes: list[str]
) -> list[tuple[str, str]]:
    """The titles of :func:`plot_side_by_side`'s panels: ``(measured, enhanced)`` per gene.

    Each names the gene by its symbol where the var names are ids (as the napari layers do),
    on its own line (an id and the panel's counts on one line ran into the next panel's title),
    and counts the spots as ``stentrans enhance`` does: from the output's ``obs["kind"]`` (spots
    masked as lost, without counts or near-empty are imputed, not measured), else from the
    input's depth (:func:`~.slide.near_empty`).
    """
    preset_name = enhanced.uns.get("stentrans", {}).get("preset", "stEnTrans")
    if "kind" in enhanced.obs:
        kinds = enhanced.obs["kind"].to_numpy()
        n_measured, n_imputed = int((kinds == "measured").sum()), int((kinds == "imputed").sum())
    else:
        n_imputed = int(near_empty(np.asarray(original.X.sum(axis=1)).ravel()).sum())
        n_measured = original.n_obs - n_imputed
    measured = f"measured ({n_measured:,} spots" + (f"; {n_imputed:,} sites imputed)" if n_imputed else ")")
    return [
        (f"{label}\n{measured}", f"{label}\n2x, {preset_name} ({enhanced.n_obs:,} sites)")
        for label in (gene_label(original.var, gene) for gene in genes)
    ]


def plot_side_by_side(original: ad.AnnData, enhanced: ad.AnnData, genes: list[str], path: str | Path) -> Path:
    """Write a PNG with one row per gene: measured counts (left) and enhanced counts (right).

    Spots are drawn in the slide's image orientation over its H&E when it has one
    (:func:`plot_frame`; otherwise at their physical positions), with the lattice's own marker
    shape and size, so the 2x lattice shows as smaller, denser spots over the same tissue.
    Every gene of ``genes`` is drawn (choose them with :func:`genes_to_plot`); titles from
    :func:`side_by_side_titles`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lattice = lattice_of(original)
    frame = plot_frame(original, enhanced)
    xy_in, xy_out, pitch = frame.xy_in, frame.xy_out, frame.pitch
    marker = _MARKER[lattice.kind]
    titles = side_by_side_titles(original, enhanced, genes)
    fig, axes = plt.subplots(len(genes), 2, figsize=(8, 3.6 * len(genes)), squeeze=False)
    low = np.vstack([xy_in, xy_out]).min(axis=0) - pitch
    extent = np.ptp(np.vstack([xy_in, xy_out]), axis=0).max() + 2 * pitch
    for i, gene in enumerate(genes):
        before = _dense_column(original.X, original.var_names.get_loc(gene))
        after = _dense_column(enhanced.X, enhanced.var_names.get_loc(gene))
        vmax = float(np.percentile(np.concatenate([before, after]), 99)) or 1.0
        for ax, xy, values, size_pitch, title in (
            (axes[i, 0], xy_in, before, pitch, titles[i][0]),
            (axes[i, 1], xy_out, after, pitch / 2, titles[i][1]),
        ):
            ax.set_aspect("equal")
            if frame.image is not None:
                ax.imshow(frame.image, extent=frame.extent, interpolation="bilinear")
            ax.set_xlim(low[0], low[0] + extent)
            ax.set_ylim(low[1] + extent, low[1])  # y down, as images (and the H&E) are drawn
            points_per_unit = ax.get_window_extent().width / extent * 72.0 / fig.dpi
            sc = ax.scatter(
                xy[:, 0],
                xy[:, 1],
                c=values,
                s=(size_pitch * 0.95 * points_per_unit) ** 2,
                marker=marker,
                cmap="magma",
                vmin=0,
                vmax=vmax,
                linewidths=0,
            )
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(sc, ax=axes[i].tolist(), shrink=0.8, label="counts")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
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
