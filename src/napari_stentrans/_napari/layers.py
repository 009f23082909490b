"""Layer data tuples for slides and enhanced slides (geometry from :mod:`..core.display`).

Every layer carries ``metadata["stentrans"]`` with ``role`` (``"he"``, ``"gene"``, ``"enhanced"``,
``"truth"``, ``"lost"``, ``"residual"``), ``slide_id``, ``gene`` where relevant, and the AnnData it
was built from, so widgets and the writer can find a layer's slide without guessing.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ..core.display import DisplayFrame, spatially_variable_genes, spot_raster

if TYPE_CHECKING:  # not imported when napari builds the panel (see core.display)
    import anndata as ad

_IDS = itertools.count(1)


def new_slide_id(name: str) -> str:
    return f"{name}#{next(_IDS)}"


def _column(x, j: int) -> np.ndarray:
    col = x[:, j]
    return np.asarray(col.toarray() if sp.issparse(col) else col, dtype=np.float32).ravel()


def expression_colormap() -> str:
    """magma, opaque: every spot in colour (black at zero), the H&E around it.

    Pixels without a spot are NaN (``spot_raster(..., background=nan)``), which napari (vispy)
    draws fully transparent; an earlier colormap made its lowest 3 % transparent instead, so
    spots at exactly zero showed the H&E through while spots just above it were black (patchy).
    """
    return "magma"


def robust_limits(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 1st and 99.5th percentiles of the non-zero values."""
    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return (0.0, 1.0)
    low, high = np.percentile(v, [1.0, 99.5])
    return (0.0 if low < 0.25 * high else float(low), float(high) if high > low else float(low) + 1.0)


def _meta(role: str, slide_id: str, adata: ad.AnnData, **extra) -> dict:
    return {"stentrans": {"role": role, "slide_id": slide_id, "adata": adata, **extra}}


def he_layers(adata: ad.AnnData, slide_id: str, frame: DisplayFrame) -> list[tuple]:
    """The slide's H&E image (hires preferred) placed in the world frame, if it has one.

    An image without its scale factor cannot be placed: it is left out with an
    ``OptionalPartWarning`` (the core readers already do so; this covers AnnData from elsewhere).
    """
    from ..core.io import clean_spatial, source_of

    out = []
    source = source_of(adata) or "slide"
    for library, entry in clean_spatial(adata.uns.get("spatial", {}), source).items():
        images = entry["images"]
        for res in ("hires", "lowres"):
            if res in images:
                scalef = entry["scalefactors"][f"tissue_{res}_scalef"]
                out.append(
                    (
                        np.asarray(images[res]),
                        {
                            "name": f"{library} H&E",
                            "rgb": True,
                            "affine": frame.image_affine(scalef),
                            "metadata": _meta("he", slide_id, adata, library=library, resolution=res),
                        },
                        "image",
                    )
                )
                break
    return out


def gene_label(adata: ad.AnnData, gene: str) -> str:
    """A gene's layer name: its symbol when var names are ids with symbols in a column, else itself."""
    from ..core.slide import gene_label as label

    return label(adata.var, gene)


def gene_layers(adata: ad.AnnData, genes: list[str], slide_id: str, frame: DisplayFrame) -> list[tuple]:
    """One image layer per gene (raw counts), named by the gene, with the lattice's geometry."""
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    values = np.column_stack([_column(adata.X, adata.var_names.get_loc(g)) for g in genes])
    raster = spot_raster(frame, rows, cols, values, background=np.nan)
    return [
        (
            raster.images[i],
            {
                "name": gene_label(adata, gene),
                "affine": raster.affine,
                "colormap": expression_colormap(),
                "blending": "translucent",
                "contrast_limits": robust_limits(values[:, i]),
                "metadata": _meta("gene", slide_id, adata, gene=gene, label=gene_label(adata, gene)),
            },
            "image",
        )
        for i, gene in enumerate(genes)
    ]


def enhanced_layers(
    enhanced: ad.AnnData,
    genes: list[str],
    slide_id: str,
    frame: DisplayFrame,
    role: str = "enhanced",
    suffix: str = " x2",
) -> list[tuple]:
    """2x layers ``"GENE x2"``: half-pitch sites at half the pixel size, centred on the spots."""
    rows, cols = enhanced.obs["array_row"].to_numpy(), enhanced.obs["array_col"].to_numpy()
    values = np.column_stack([_column(enhanced.X, enhanced.var_names.get_loc(g)) for g in genes])
    raster = spot_raster(frame, rows, cols, values, half_pitch=True, background=np.nan)
    return [
        (
            raster.images[i],
            {
                "name": f"{gene_label(enhanced, gene)}{suffix}",
                "affine": raster.affine,
                "colormap": expression_colormap(),
                "blending": "translucent",
                "contrast_limits": robust_limits(values[:, i]),
                "metadata": _meta(role, slide_id, enhanced, gene=gene, label=gene_label(enhanced, gene)),
            },
            "image",
        )
        for i, gene in enumerate(genes)
    ]


# unannotated clones and loci without a gene symbol: rarely what a biologist wants to see first
_UNNAMED = re.compile(r"^(RP\d+-|RP[LS]\d|CT[ABCD]-|A[CLP]\d{6}|LINC\d|LOC\d|ENS[A-Z]*G\d)|\.\d+$")


def gene_family(name: str) -> str:
    """A gene's family for picking distinct defaults: the part before ``-``, else without its
    trailing number (HLA-A, HLA-B -> HLA; COL1A1, COL1A2 -> COL1A; S100A8 -> S100A)."""
    head = name.split("-")[0] if "-" in name else name
    return re.sub(r"\d+$", "", head).upper() or name.upper()


def distinct_genes(ranked: list[str], n: int) -> list[str]:
    """The first ``n`` of ``ranked`` with one gene per family and no unannotated clone, topped up
    in rank order when there are too few of those (e.g. synthetic Gene001, Gene002...)."""
    picked, families = [], set()
    for gene in ranked:
        family = gene_family(gene)
        if family not in families and not _UNNAMED.search(gene):
            picked.append(gene)
            families.add(family)
        if len(picked) == n:
            return picked
    rest = [g for g in ranked if g not in picked]
    return [g for g in ranked if g in set(picked) | set(rest[: n - len(picked)])]


def slide_layers(
    adata: ad.AnnData, name: str, n_genes: int = 4, genes: list[str] | None = None
) -> list[tuple]:
    """H&E (when present) and the ``n_genes`` most spatially variable genes of a slide.

    Default genes are distinct (:func:`distinct_genes`) and come in reverse rank order, so the
    most spatially variable is the last layer: on top of napari's layer list and the only one
    visible (one gene at a time over the H&E, the others one click away). Genes given by name
    keep their order (the last visible).
    """
    slide_id = new_slide_id(name)
    frame = DisplayFrame.of(adata)
    if genes is None:
        genes = _default_genes(adata, n_genes)
    gene_tuples = _last_visible(gene_layers(adata, genes, slide_id, frame))
    return he_layers(adata, slide_id, frame) + gene_tuples


def _default_genes(adata: ad.AnnData, n_genes: int) -> list[str]:
    """The ``n_genes`` most spatially variable distinct genes, most variable last (the top layer)."""
    ranked = spatially_variable_genes(adata, n=4 * n_genes)
    return distinct_genes(ranked, min(n_genes, adata.n_vars))[::-1]


def _last_visible(gene_tuples: list[tuple]) -> list[tuple]:
    """The layer tuples with only the last one visible (one gene at a time)."""
    for _, attrs, _ in gene_tuples:
        attrs["visible"] = False
    if gene_tuples:
        gene_tuples[-1][1]["visible"] = True
    return gene_tuples


def enhanced_file_layers(enhanced: ad.AnnData, name: str, n_genes: int = 4) -> list[tuple]:
    """H&E and ``"GENE x2"`` layers of an enhanced slide read from a file.

    The layers sit where they sat when the slide was enhanced: the frame is fitted on the
    measured spots in the input's coordinates (:func:`~..core.io.measured_spots`), and the genes
    shown are the ``n_genes`` most spatially variable in the measured counts, distinct as for a
    measured slide (:func:`distinct_genes`), the most variable last and the only one visible. The layers carry
    role ``"enhanced"`` (exportable again); the H&E carries the enhanced AnnData, so a request to
    train on it is refused with the reason (an enhanced slide holds predictions).
    """
    from ..core.io import measured_spots

    slide_id = new_slide_id(name)
    measured = measured_spots(enhanced)
    frame = DisplayFrame.of(measured)
    gene_tuples = _last_visible(enhanced_layers(enhanced, _default_genes(measured, n_genes), slide_id, frame))
    return he_layers(enhanced, slide_id, frame) + gene_tuples
