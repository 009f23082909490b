"""Every widget action as a plain function of a viewer (tests and scripts call these).

Only the main thread calls these functions; the training worker (:func:`run_job`) only yields
core events and returns results, whose layers the widget adds on the main thread
(:func:`record_result`, :func:`add_enhanced_layer`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import anndata as ad
import numpy as np

from ..core.display import DisplayFrame, SpotRaster, spot_raster
from .layers import enhanced_layers, gene_layers

LOST_LABEL = 1


@dataclass
class SlideInfo:
    """What the widgets know about one opened slide."""

    slide_id: str
    adata: ad.AnnData
    frame: DisplayFrame
    name: str
    model: object | None = None  # FittedModel
    enhanced: ad.AnnData | None = None
    runs: int = 0


# per viewer (by id), the slides it shows; pruned on every look-up so that a slide whose layers
# were all removed releases its table, model and enhanced result
_SLIDES: dict[int, dict[str, SlideInfo]] = {}


def _registry(viewer) -> dict[str, SlideInfo]:
    viewer = getattr(viewer, "__wrapped__", viewer)  # plugin widgets get a proxy of the viewer
    key = id(viewer)
    if key not in _SLIDES:
        _SLIDES[key] = {}
        try:  # drop the registry with its viewer; slide ids are unique, so a reused id is harmless
            weakref.finalize(viewer, _SLIDES.pop, key, None)
        except TypeError:
            pass
    return _SLIDES[key]


def slides(viewer) -> dict[str, SlideInfo]:
    """Slides with layers in the viewer, by slide id (order of first appearance)."""
    known = _registry(viewer)
    found: dict[str, SlideInfo] = {}
    for layer in viewer.layers:
        meta = layer.metadata.get("stentrans") if hasattr(layer, "metadata") else None
        if not meta or meta.get("role") not in ("gene", "he"):
            continue
        sid = meta["slide_id"]
        if sid not in found:
            found[sid] = known.get(sid) or SlideInfo(
                sid, meta["adata"], DisplayFrame.of(meta["adata"]), sid.split("#")[0]
            )
    known.clear()
    known.update(found)
    return found


def slide(viewer, slide_id: str | None = None) -> SlideInfo:
    """One slide by id, or the only/first slide in the viewer."""
    found = slides(viewer)
    if not found:
        raise LookupError("no stEnTrans slide is open: open a slide or a sample first")
    if slide_id is None:
        return next(iter(found.values()))
    if slide_id not in found:
        raise LookupError(f"slide {slide_id!r} has no layers in this viewer")
    return found[slide_id]


def _set_or_add(viewer, data: np.ndarray, attrs: dict, keep_previous: bool) -> object:
    """Update a layer by name; with ``keep_previous`` the old one is kept, renamed, not lost."""
    name = attrs["name"]
    if name in viewer.layers:
        old = viewer.layers[name]
        if keep_previous:
            run = old.metadata.get("stentrans", {}).get("run", 0)
            old.name = f"{name} (run {run})"
            old.visible = False
        else:
            old.data = data
            old.affine = attrs["affine"]
            old.contrast_limits = attrs["contrast_limits"]
            old.metadata = attrs["metadata"]
            return old
    return viewer.add_image(data, **attrs)


# ----------------------------------------------------------------------------- Genes


def gene_names(viewer, slide_id: str | None = None, query: str = "", limit: int = 500) -> list[str]:
    """Gene names of a slide matching ``query`` (case-insensitive substring), up to ``limit``."""
    names = slide(viewer, slide_id).adata.var_names
    if query:
        names = names[names.str.lower().str.contains(query.lower(), regex=False)]
    return [str(n) for n in names[:limit]]


def _owned_by_other_slide(viewer, name: str, slide_id: str) -> bool:
    if name not in viewer.layers:
        return False
    return viewer.layers[name].metadata.get("stentrans", {}).get("slide_id") != slide_id


def add_gene_layers(viewer, genes: list[str], slide_id: str | None = None) -> list:
    """Add (or refresh) one image layer per gene of a slide."""
    info = slide(viewer, slide_id)
    missing = [g for g in genes if g not in info.adata.var_names]
    if missing:
        raise KeyError(f"gene(s) not in the slide: {missing[:5]}")
    out = []
    for data, attrs, _ in gene_layers(info.adata, list(genes), info.slide_id, info.frame):
        if _owned_by_other_slide(viewer, attrs["name"], info.slide_id):
            attrs["name"] = f"{attrs['name']} [{info.name}]"  # same gene open from two slides
        out.append(_set_or_add(viewer, data, attrs, keep_previous=False))
    return out


def shown_genes(viewer, slide_id: str | None = None) -> list[str]:
    """Genes of a slide that have a measured-gene layer in the viewer."""
    info = slide(viewer, slide_id)
    return [
        layer.metadata["stentrans"]["gene"]
        for layer in viewer.layers
        if layer.metadata.get("stentrans", {}).get("role") == "gene"
        and layer.metadata["stentrans"]["slide_id"] == info.slide_id
    ]


# ----------------------------------------------------------------------------- Lost regions


def _site_grid(info: SlideInfo) -> SpotRaster:
    """A raster over every lattice site in the slide's bounding box (measured or not)."""
    from ..core.lattice import Lattice

    rows = info.adata.obs["array_row"].to_numpy()
    cols = info.adata.obs["array_col"].to_numpy()
    lattice: Lattice = info.frame.lattice
    r, c = np.meshgrid(
        np.arange(rows.min() - 1, rows.max() + 2), np.arange(cols.min() - 1, cols.max() + 2), indexing="ij"
    )
    r, c = r.ravel(), c.ravel()
    on = lattice.contains(r, c)
    return spot_raster(info.frame, r[on], c[on], np.zeros((int(on.sum()), 1)), pad=0)


def lost_layer(viewer, slide_id: str | None = None, create: bool = True):
    """The slide's lost-regions Labels layer (created aligned with the gene layers if absent)."""
    info = slide(viewer, slide_id)
    for layer in viewer.layers:
        meta = layer.metadata.get("stentrans", {})
        if meta.get("role") == "lost" and meta.get("slide_id") == info.slide_id:
            return layer
    if not create:
        return None
    grid = _site_grid(info)
    layer = viewer.add_labels(
        np.zeros(grid.mask.shape, dtype=np.uint8),
        name=f"{info.name} lost regions",
        affine=grid.affine,
        opacity=0.6,
        metadata={
            "stentrans": {"role": "lost", "slide_id": info.slide_id, "adata": info.adata, "raster": grid}
        },
    )
    layer.brush_size = 2
    layer.selected_label = LOST_LABEL
    return layer


def lost_sites(viewer, slide_id: str | None = None) -> np.ndarray:
    """``(k, 2)`` lattice sites painted as lost (empty when there is no lost-regions layer)."""
    layer = lost_layer(viewer, slide_id, create=False)
    if layer is None:
        return np.zeros((0, 2), dtype=np.int64)
    rows, cols = layer.metadata["stentrans"]["raster"].sites_of_pixels(np.asarray(layer.data) > 0)
    return np.column_stack([rows, cols]).astype(np.int64)


def lost_summary(viewer, slide_id: str | None = None) -> dict[str, int]:
    """How many measured spots and empty in-tissue sites are marked lost."""
    from ..core.sites import output_sites
    from ..core.slide import Slide, site_keys

    info = slide(viewer, slide_id)
    sites = lost_sites(viewer, info.slide_id)
    keys = site_keys(sites[:, 0], sites[:, 1])
    adata = info.adata
    measured = np.isin(site_keys(adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()), keys)
    out = output_sites(Slide.from_adata(adata))
    holes = out.kind == "imputed"
    empty = np.isin(site_keys(out.fine_row[holes], out.fine_col[holes]), keys)
    return {"measured": int(measured.sum()), "empty_in_tissue": int(empty.sum()), "total": int(len(sites))}


def propose_holes(viewer, slide_id: str | None = None) -> int:
    """Paint the slide's in-tissue holes (unmeasured sites enclosed by tissue) as lost; undoable."""
    from ..core.sites import output_sites
    from ..core.slide import Slide

    info = slide(viewer, slide_id)
    layer = lost_layer(viewer, info.slide_id)
    out = output_sites(Slide.from_adata(info.adata))
    holes = out.kind == "imputed"
    painted = layer.metadata["stentrans"]["raster"].pixels_of_sites(out.fine_row[holes], out.fine_col[holes])
    idx = np.nonzero(painted & (np.asarray(layer.data) != LOST_LABEL))
    if len(idx[0]):
        layer.data_setitem(idx, LOST_LABEL)  # recorded in the layer's undo history
    return int(holes.sum())


# ----------------------------------------------------------------------------- Train & enhance


@dataclass
class TrainingJob:
    """Inputs of a run, copied on the main thread before the worker starts."""

    slide_id: str
    adata: ad.AnnData
    mask: np.ndarray
    genes: list[str]
    config: object  # Config
    frame: DisplayFrame
    device: str = "auto"


def prepare_job(
    viewer, config, slide_id: str | None = None, genes: list[str] | None = None, device: str = "auto"
) -> TrainingJob:
    """Copy everything the worker needs (slide, lost sites, genes) on the main thread."""
    info = slide(viewer, slide_id)
    genes = list(genes) if genes is not None else shown_genes(viewer, info.slide_id)
    return TrainingJob(
        info.slide_id,
        info.adata.copy(),
        lost_sites(viewer, info.slide_id).copy(),
        genes,
        config,
        info.frame,
        device,
    )


def run_job(job: TrainingJob, stop=None):
    """Worker body: yields every training event; returns ``(model, enhanced, layer tuples)``.

    Returns None when stopped. The slide is prepared once for fitting and enhancing; the layer
    data of the ``GENE x2`` layers are built here, off the main thread; no napari object is
    touched.
    """
    from ..core.errors import TrainingStopped
    from ..core.fitting import Trainer

    trainer = Trainer(job.adata, job.config, mask=job.mask, device=job.device)
    yield from trainer.run(stop)
    if trainer.result is None:
        return None
    try:
        enhanced = trainer.result.enhance(
            trainer.slide, genes=job.genes or None, device=job.device, stop=stop
        )
    except TrainingStopped:
        return None
    genes = [g for g in job.genes if g in enhanced.var_names]
    return trainer.result, enhanced, enhanced_layers(enhanced, genes, job.slide_id, job.frame)


def record_result(viewer, slide_id: str, model, enhanced: ad.AnnData) -> int:
    """Main thread: remember a run's model and enhanced slide; returns the run number."""
    info = slide(viewer, slide_id)
    info.model, info.enhanced = model, enhanced
    info.runs += 1
    return info.runs


def add_enhanced_layer(viewer, layer_tuple: tuple, run: int):
    """Main thread: add one ``GENE x2`` layer, keeping an earlier run's layer renamed."""
    data, attrs, _ = layer_tuple
    attrs["metadata"]["stentrans"]["run"] = run
    return _set_or_add(viewer, data, attrs, keep_previous=True)


def refresh_imputation(viewer, slide_id: str | None = None) -> list:
    """Inference only: recompute the x2 layers with the current lost regions (no retraining)."""
    info = slide(viewer, slide_id)
    if info.model is None:
        raise RuntimeError("train or load a model first")
    genes = [g for g in shown_genes(viewer, info.slide_id) if g in info.adata.var_names]
    enhanced = info.model.enhance(
        info.adata, mask=lost_sites(viewer, info.slide_id), genes=genes, device="cpu"
    )
    info.enhanced = enhanced
    out = []
    for data, attrs, _ in enhanced_layers(enhanced, genes, info.slide_id, info.frame):
        attrs["metadata"]["stentrans"]["run"] = info.runs
        out.append(_set_or_add(viewer, data, attrs, keep_previous=False))
    return out


def side_by_side(viewer, enabled: bool = True) -> None:
    """Grid mode: originals and enhanced layers next to each other."""
    viewer.grid.enabled = enabled
    if enabled:
        viewer.grid.stride = 1


# ----------------------------------------------------------------------------- Quality check


def quality_check(
    adata: ad.AnnData,
    epochs: int = 5,
    n_genes: int = 200,
    seed: int = 0,
    methods: tuple[str, ...] | None = None,
) -> dict:
    """The honest held-out protocol (same engine and arguments as ``stentrans evaluate``)."""
    from ..core.evaluate import DEFAULT_METHODS, evaluate

    return evaluate(
        adata,
        "heldout",
        methods=methods or DEFAULT_METHODS,
        n_genes=n_genes,
        epochs=epochs,
        seed=seed,
        device="cpu",
    )


def residual_layer(viewer, gene: str, slide_id: str | None = None) -> object:
    """Enhanced minus measured counts of one gene at the measured spots (a residual map)."""
    info = slide(viewer, slide_id)
    if info.enhanced is None:
        raise RuntimeError("enhance the slide first")
    enh = info.enhanced
    measured = (enh.obs["kind"] == "measured").to_numpy()
    j = enh.var_names.get_loc(gene)
    pred = np.asarray(enh.X[measured, j]).ravel()
    truth = np.asarray(enh.layers["measured"][measured, j].todense()).ravel()
    rows = enh.obs["array_row"].to_numpy()[measured] // 2
    cols = enh.obs["array_col"].to_numpy()[measured] // 2
    raster = spot_raster(info.frame, rows, cols, (pred - truth)[:, None])
    limit = float(np.percentile(np.abs(pred - truth), 99)) or 1.0
    attrs = {
        "name": f"{gene} residual",
        "affine": raster.affine,
        "colormap": "PiYG",
        "contrast_limits": (-limit, limit),
        "metadata": {
            "stentrans": {"role": "residual", "slide_id": info.slide_id, "gene": gene, "adata": enh}
        },
    }
    return _set_or_add(viewer, raster.images[0], attrs, keep_previous=False)
