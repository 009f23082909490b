"""Side-by-side PNG of measured and enhanced genes (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .files import atomic_path
from .io import lattice_of

_MARKER = {"hex": "h", "square": "s", "checkerboard": "D"}


def _dense_column(x, j: int) -> np.ndarray:
    col = x[:, j]
    return np.asarray(col.toarray() if sp.issparse(col) else col).ravel()


def plot_side_by_side(original: ad.AnnData, enhanced: ad.AnnData, genes: list[str], path: str | Path) -> Path:
    """Write a PNG with one row per gene: measured counts (left) and enhanced counts (right).

    Spots are drawn at their physical positions with the lattice's own marker shape and
    size, so the 2x lattice shows as smaller, denser spots over the same tissue extent.
    """
    preset_name = enhanced.uns.get("stentrans", {}).get("preset", "stEnTrans")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lattice = lattice_of(original)
    xy_in = lattice.physical(original.obs["array_row"].to_numpy(), original.obs["array_col"].to_numpy())
    xy_out = np.asarray(enhanced.obsm["spatial_um"])
    marker = _MARKER[lattice.kind]
    fig, axes = plt.subplots(len(genes), 2, figsize=(8, 3.6 * len(genes)), squeeze=False)
    extent = np.ptp(np.vstack([xy_in, xy_out]), axis=0).max() + lattice.pitch_um
    for i, gene in enumerate(genes):
        before = _dense_column(original.X, original.var_names.get_loc(gene))
        after = _dense_column(enhanced.X, enhanced.var_names.get_loc(gene))
        vmax = float(np.percentile(np.concatenate([before, after]), 99)) or 1.0
        for ax, xy, values, pitch, title in (
            (axes[i, 0], xy_in, before, lattice.pitch_um, f"{gene}: measured ({len(before)} spots)"),
            (
                axes[i, 1],
                xy_out,
                after,
                lattice.pitch_um / 2,
                f"{gene}: 2x, {preset_name} ({len(after)} sites)",
            ),
        ):
            ax.set_aspect("equal")
            ax.set_xlim(xy_in[:, 0].min() - lattice.pitch_um, xy_in[:, 0].min() + extent)
            ax.set_ylim(xy_in[:, 1].min() + extent, xy_in[:, 1].min() - lattice.pitch_um)
            points_per_um = ax.get_window_extent().width / extent * 72.0 / fig.dpi
            size = (pitch * 0.95 * points_per_um) ** 2
            sc = ax.scatter(
                xy[:, 0],
                xy[:, 1],
                c=values,
                s=size,
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
    """Box plot of per-gene Pearson r (counts) per method from an :func:`evaluate` report."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    data = [[v for v in report["methods"][m]["pcc"] if v is not None] for m in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_ylabel("per-gene Pearson r (counts) at scored spots")
    ax.set_title(
        f"{report['dataset']}: {report['protocol']}, {report['n_genes']} genes, "
        f"{report['n_heldout_spots']} spots",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
