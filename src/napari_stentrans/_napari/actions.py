"""Every widget action as a plain function of a viewer (tests and scripts call these).

Only the main thread calls these functions; the training worker (:func:`run_job`) only yields
core events and returns results, whose layers the widget adds on the main thread
(:func:`record_result`, :func:`add_enhanced_layer`).
"""

from __future__ import annotations

import os
import queue
import re
import threading
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.display import DisplayFrame, SpotRaster, lattice_spot_diameter_um, spot_raster
from .layers import enhanced_layers, gene_layers

if TYPE_CHECKING:  # not imported when napari builds the panel (see core.display)
    import anndata as ad

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
    sites: object | None = None  # SiteIndex, built on first use


# per viewer (by id), the slides it shows; pruned on every look-up so that a slide whose layers
# were all removed releases its table, model and enhanced result
_SLIDES: dict[int, dict[str, SlideInfo]] = {}


def per_viewer(store: dict, viewer, new: Callable[[], object]):
    """``store``'s entry for ``viewer`` (by id), made with ``new()`` on first use and dropped with
    the viewer, so a later viewer given the same id starts afresh."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # plugin widgets get a proxy of the viewer
    key = id(viewer)
    if key not in store:
        store[key] = new()
        try:
            weakref.finalize(viewer, store.pop, key, None)
        except TypeError:
            pass
    return store[key]


def _registry(viewer) -> dict[str, SlideInfo]:
    return per_viewer(_SLIDES, viewer, dict)


def _slide_of(layer) -> str | None:
    """The id of the slide a layer belongs to; None for a layer of no slide."""
    return layer.metadata.get("stentrans", {}).get("slide_id")


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


# per viewer (by id), for each slide, the layers hidden when another slide was brought forward
_HIDDEN: dict[int, dict[str, list]] = {}


def _shown_layers(viewer, slide_id: str) -> list:
    """The slide's visible layers, bottom to top."""
    return [layer for layer in viewer.layers if layer.visible and _slide_of(layer) == slide_id]


def is_shown(viewer, slide_id: str) -> bool:
    """Whether any layer of the slide is visible."""
    return bool(_shown_layers(viewer, slide_id))


def bring_forward(viewer, slide_id: str) -> list[str]:
    """Show one slide: hide the other slides' visible layers; show again those of this slide hidden here.

    Every slide is drawn in its own micrometre frame from the same origin, so two open slides
    lie over one another (the second one's H&E over the first one's genes), as the sections of
    one file would (the reader shows only the first). The layers hidden are one click away in
    the layer list and remembered: they come back when their slide is brought forward again.
    Layers of no slide (a user's own points or shapes) are left as they are.

    Returns
    -------
    The names of the layers hidden.
    """
    hidden = per_viewer(_HIDDEN, viewer, dict)
    names = []
    for layer in viewer.layers:
        owner = _slide_of(layer)
        if owner is None or owner == slide_id or not layer.visible:
            continue
        layer.visible = False
        hidden.setdefault(owner, []).append(weakref.ref(layer))
        names.append(layer.name)
    for ref in hidden.pop(slide_id, []):
        layer = ref()
        if layer is not None and layer in viewer.layers:
            layer.visible = True
    active = viewer.layers.selection.active
    if active is not None and not active.visible:  # the layer controls would act on a hidden layer
        shown = _shown_layers(viewer, slide_id)
        if shown:
            viewer.layers.selection.active = shown[-1]  # the topmost
    return names


def slide_label(viewer, slide_id: str) -> str:
    """The slide's name, with its number when another open slide has the same name
    (``synthetic_st (3)``, as the panels' Slide choosers show it)."""
    return label_among(slides(viewer), slide_id)


def label_among(found: dict[str, SlideInfo], slide_id: str) -> str:
    """:func:`slide_label` among the open slides ``found`` (:func:`slides`)."""
    name = found[slide_id].name
    if sum(info.name == name for info in found.values()) > 1:
        return f"{name} ({slide_id.split('#')[1]})"
    return name


_DUPLICATE = re.compile(r"^(.*) \[\d+\]$")  # napari's name for a layer whose name is taken


def name_after_slides(viewer) -> list[str]:
    """Rename layers napari numbered (``Actc1 [1]``) after their slide (``Actc1 [Vis7B_5dpi]``).

    napari appends `` [N]`` to a layer whose name another layer has, here the same gene of
    another slide; the slide's name says which it is, as :func:`add_gene_layers` names them.
    Returns the new names.
    """
    taken = {layer.name: _slide_of(layer) for layer in viewer.layers}
    found = slides(viewer)
    renamed = []
    for layer in viewer.layers:
        match = _DUPLICATE.match(layer.name)
        owner = _slide_of(layer)
        if match is None or owner is None or owner not in found:
            continue
        base = match.group(1)
        if taken.get(base, owner) == owner:  # not another slide's name
            continue
        new = f"{base} [{label_among(found, owner)}]"
        if new not in taken:
            layer.name = new
            taken[new] = owner
            renamed.append(new)
    return renamed


def _set_or_add(viewer, data: np.ndarray, attrs: dict, keep_previous: bool) -> object:
    """Update a layer of the slide by name; with ``keep_previous`` the old one is kept, renamed, not lost.

    A name another slide's layer has (the same gene open from two slides) gets the slide's name
    (``Actc1 [Vis7B_5dpi]``): that layer is never updated or renamed here.
    """
    sid = attrs["metadata"]["stentrans"]["slide_id"]
    if _owned_by_other_slide(viewer, attrs["name"], sid):
        attrs["name"] = f"{attrs['name']} [{slide_label(viewer, sid)}]"
    name = attrs["name"]
    if name in viewer.layers:
        old = viewer.layers[name]
        if keep_previous:
            meta = old.metadata.get("stentrans", {})
            preset = meta.get("preset")
            old.name = f"{name} (run {meta.get('run', 0)}" + (f": {preset})" if preset else ")")
            old.visible = False
        else:
            old.data = data
            old.affine = attrs["affine"]
            old.contrast_limits = attrs["contrast_limits"]
            old.metadata = attrs["metadata"]
            return old
    return viewer.add_image(data, **attrs)


# ----------------------------------------------------------------------------- Genes


def read_layers(path) -> list[tuple]:
    """Worker: read a slide with the core reader and build its layer tuples (H&E, genes).

    Touches no napari object, so it can run in a thread worker; the widget adds the layers on
    the main thread, one per event-loop turn (:func:`add_layer_tuple`).
    """
    from ..core.io import read
    from .layers import slide_layers

    path = Path(path)
    return slide_layers(read(path), name=path.name.split(".")[0])


def add_layer_tuple(viewer, layer_tuple: tuple):
    """Main thread: add one ``(data, attrs, kind)`` layer tuple to the viewer."""
    data, attrs, kind = layer_tuple
    return getattr(viewer, f"add_{kind}")(data, **attrs)


def gene_names(viewer, slide_id: str | None = None, query: str = "", limit: int = 500) -> list[str]:
    """Gene names of a slide matching ``query`` (case-insensitive substring), up to ``limit``."""
    names = slide(viewer, slide_id).adata.var_names
    if query:
        names = names[names.str.lower().str.contains(query.lower(), regex=False)]
    return [str(n) for n in names[:limit]]


def _owned_by_other_slide(viewer, name: str, slide_id: str) -> bool:
    if name not in viewer.layers:
        return False
    return _slide_of(viewer.layers[name]) != slide_id


def add_gene_layers(viewer, genes: list[str], slide_id: str | None = None) -> list:
    """Add (or refresh) one image layer per gene of a slide."""
    info = slide(viewer, slide_id)
    missing = [g for g in genes if g not in info.adata.var_names]
    if missing:
        raise KeyError(f"gene(s) not in the slide: {missing[:5]}")
    out = []
    for data, attrs, _ in gene_layers(info.adata, list(genes), info.slide_id, info.frame):
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


# ----------------------------------------------------------------------------- Annotations

# obs columns that are coordinates or bookkeeping, not annotations
_NOT_ANNOTATIONS = {"array_row", "array_col", "in_tissue", "barcode", "kind", "spot", "library_id"}
MAX_CATEGORIES = 50


def annotation_columns(viewer, slide_id: str | None = None) -> list[str]:
    """The slide's categorical ``obs`` columns (2-50 values: clusters, layers, regions)."""
    import pandas as pd

    obs = slide(viewer, slide_id).adata.obs
    out = []
    for name, column in obs.items():
        if name in _NOT_ANNOTATIONS:
            continue
        dtype = column.dtype
        categorical = (
            isinstance(dtype, pd.CategoricalDtype)
            or pd.api.types.is_object_dtype(dtype)
            or pd.api.types.is_bool_dtype(dtype)
            or pd.api.types.is_integer_dtype(dtype)
            or pd.api.types.is_string_dtype(dtype)
        )
        if categorical and 1 < column.nunique(dropna=True) <= MAX_CATEGORIES:
            out.append(str(name))
    return out


def add_annotations(viewer, path, slide_id: str | None = None) -> str:
    """Read a table of spot annotations (``barcode,label``, e.g. DLPFC's layer labels, or legacy
    ST's ``x,y,...,label``; :func:`~..core.io.labels.read_labels`) into the slide's ``obs`` as a
    categorical column named after the file (spots it does not list: missing), so it colours the
    spots, is an "ARI vs" choice and travels to the enhanced output. Returns the column's name.

    Raises
    ------
    ReadError
        The table cannot be read or names none of the slide's spots (nothing is changed).
    ValueError
        No file given, every spot it names has one label (no annotation to show), or the file is
        named after a column the slide needs (``array_row.csv``).
    """
    import pandas as pd

    from ..core.io.labels import read_labels

    if not path or str(path) in (".", ""):
        raise ValueError("choose a table of spot annotations (barcode,label) to add")
    info = slide(viewer, slide_id)
    obs = info.adata.obs
    labels = read_labels(path, obs.index, (obs["array_row"].to_numpy(), obs["array_col"].to_numpy()))
    values = pd.Series(labels, index=obs.index).replace("nan", np.nan)
    if values.nunique(dropna=True) < 2:
        raise ValueError(f"{Path(path).name}: every spot it lists has the same label, nothing to colour by")
    name = Path(path).stem
    if name in _NOT_ANNOTATIONS:  # array_row.csv must not replace the slide's coordinates
        raise ValueError(f"{Path(path).name}: {name!r} names a column the slide needs; rename the file")
    obs[name] = pd.Categorical(values)
    return name


def _category_layer(
    viewer, values, rows, cols, frame, half_pitch: bool, name: str, meta: dict, colors: dict | None = None
):
    """A Labels layer of one category per site (label = category + 1; 0 = no site or no value).

    Its ``features`` name each label, so napari's status bar shows the category under the cursor.
    ``colors`` (category -> RGBA) fixes the categories, in its order, and their colours: the same
    on every slide, whichever categories it has; otherwise the sorted categories present take
    napari's label colours.
    """
    import pandas as pd

    if colors is None:
        codes, categories = pd.factorize(pd.Series(values), sort=True)  # -1 for a missing value
    else:
        categories = list(colors)
        codes = pd.Categorical(values, categories=categories).codes
    raster = spot_raster(frame, rows, cols, (codes + 1)[:, None].astype(np.float32), half_pitch=half_pitch)
    features = pd.DataFrame(
        {"index": np.arange(len(categories) + 1), meta["column"]: ["(none)", *map(str, categories)]}
    )
    if name in viewer.layers:
        viewer.layers.remove(name)
    extra = {}
    if colors is not None:
        from napari.utils.colormaps import DirectLabelColormap

        fixed = {i + 1: color for i, color in enumerate(colors.values())}
        extra["colormap"] = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), **fixed})
    return viewer.add_labels(
        raster.images[0].astype(np.int32),
        name=name,
        affine=raster.affine,
        opacity=0.6,
        features=features,
        metadata={"stentrans": meta},
        **extra,
    )


def annotation_layer(viewer, column: str, slide_id: str | None = None):
    """One colour per category of an ``obs`` column (e.g. BayesSpace clusters), at the spots."""
    info = slide(viewer, slide_id)
    obs = info.adata.obs
    if column not in obs:
        raise KeyError(
            f"obs has no column {column!r}; annotations: {annotation_columns(viewer, info.slide_id)}"
        )
    meta = {"role": "annotation", "slide_id": info.slide_id, "column": column, "adata": info.adata}
    values = obs[column].astype(str).where(obs[column].notna(), None)  # missing: no label
    present = list(obs[column].dropna().unique())
    try:  # clusters 2 before 10
        present = sorted(present)
    except TypeError:
        present = sorted(present, key=str)
    categories = list(dict.fromkeys(map(str, present)))
    return _category_layer(
        viewer,
        values.to_numpy(),
        obs["array_row"].to_numpy(),
        obs["array_col"].to_numpy(),
        info.frame,
        False,
        f"{info.name} {column}",
        meta,
        dict(zip(categories, annotation_palette(len(categories)), strict=True)),
    )


def annotation_palette(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct RGBA colours for annotation categories (matplotlib's tab20, cycled), none
    near the lost regions' cyan: napari's label colours drew DLPFC's L2 in a cyan that the lost
    regions' outline beside it could not be told from."""
    from matplotlib import colormaps

    lost = np.asarray(LOST_COLOR[:3])
    tab20 = np.asarray(colormaps["tab20"].colors, dtype=float)
    # the pairs' darker colour first (0, 2, ..., 18), then the lighter ones
    ordered = np.concatenate([tab20[0::2], tab20[1::2]])
    kept = [c for c in ordered if np.linalg.norm(c - lost) > 0.45]
    return [(*map(float, kept[i % len(kept)]), 1.0) for i in range(n)]


def site_kind_layer(viewer, slide_id: str | None = None):
    """The enhanced slide's sites by kind: measured, new (between spots) or imputed (lost/holes)."""
    info = slide(viewer, slide_id)
    if info.enhanced is None:
        raise RuntimeError("enhance the slide first")
    obs = info.enhanced.obs
    meta = {"role": "site_kind", "slide_id": info.slide_id, "column": "site kind", "adata": info.enhanced}
    return _category_layer(
        viewer,
        obs["kind"].astype(str).to_numpy(),
        obs["array_row"].to_numpy(),
        obs["array_col"].to_numpy(),
        info.frame,
        True,
        f"{info.name} site kinds",
        meta,
        KIND_COLORS,
    )


#: one colour per site kind on every slide (they followed the kinds present: "measured" was brown
#: on one slide and cyan, the lost regions' colour, on another); none of them is that cyan
KIND_COLORS = {
    "measured": (0.62, 0.62, 0.62, 1.0),  # grey: the slide as it was
    "imputed": (1.0, 0.35, 0.1, 1.0),  # orange: lost spots and holes, where nothing was measured
    "new": (0.6, 0.45, 1.0, 1.0),  # lilac: between spots
}


def legend(layer) -> list[tuple[str, tuple[float, float, float, float]]]:
    """``(category, RGBA)`` of a category layer, in label order: the categories it shows (no
    entry for label 0, nor for a fixed category without a site, such as "imputed" on a slide
    without lost spots)."""
    column = layer.metadata["stentrans"]["column"]
    names = list(layer.features[column])[1:]
    labels = np.intersect1d(np.arange(1, len(names) + 1), np.unique(np.asarray(layer.data)))
    colors = np.asarray(layer.colormap.map(labels), dtype=float).reshape(len(labels), 4)
    return [
        (names[label - 1], tuple(float(v) for v in color))
        for label, color in zip(labels, colors, strict=True)
    ]


def legend_html(layer) -> str:
    """The legend as rich text: a coloured square and the category, wrapped as a paragraph (one
    line per category would make the dock as tall as the number of clusters)."""
    from html import escape

    rows = []
    for name, (r, g, b, _a) in legend(layer):
        hexcolor = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
        rows.append(f'<span style="color:{hexcolor}">&#9632;</span>&nbsp;{escape(name)}')
    return " &nbsp; ".join(rows)


# ----------------------------------------------------------------------------- True-size spots


def spot_diameter_um(info: SlideInfo) -> float:
    """The spots' diameter in micrometres: 55 % of the pitch on a hex lattice (Visium: 55 of
    100 um), half the pitch on a square one (legacy ST: 100 of 200 um), the whole pitch for Visium
    HD bins (they tile the slide).

    Space Ranger's ``spot_diameter_fullres`` is not used: it spans a 65 um circle, the spot plus
    a margin, by its definition.
    """
    lattice = info.frame.lattice
    for entry in (info.adata.uns.get("spatial") or {}).values():
        if (entry.get("scalefactors") or {}).get("bin_size_um"):
            return float(lattice.pitch_um)
    return lattice_spot_diameter_um(lattice)


def spot_points_layer(viewer, gene: str, slide_id: str | None = None):
    """A gene as true-size circular spots (Points, micrometres) coloured by its counts.

    Hovering a spot shows its barcode, count and kind in napari's status bar (the layer's
    ``features``).
    """
    import pandas as pd

    info = slide(viewer, slide_id)
    adata = info.adata
    if gene not in adata.var_names:
        raise KeyError(f"gene {gene!r} is not in the slide")
    column = adata[:, gene].X
    counts = np.asarray(column.toarray() if hasattr(column, "toarray") else column, dtype=np.float32).ravel()
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    features = pd.DataFrame(
        {"barcode": adata.obs_names.astype(str), gene: counts, "kind": "measured"}, index=None
    )
    from .layers import robust_limits

    name = f"{gene} spots"
    if name in viewer.layers:
        viewer.layers.remove(name)
    layer = viewer.add_points(
        info.frame.world(rows, cols),
        name=name,
        size=spot_diameter_um(info),
        features=features,
        face_color=gene,
        face_colormap="magma",
        face_contrast_limits=robust_limits(counts),
        border_width=0,
        metadata={"stentrans": {"role": "spots", "slide_id": info.slide_id, "gene": gene, "adata": adata}},
    )
    return layer


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


# cyan: visible on magma's black-red-yellow and on the pink/purple of H&E (red vanished on magma)
LOST_COLOR = (0.0, 0.9, 1.0, 1.0)


def lost_colormap():
    """Label 1 (lost) in cyan, everything else transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), LOST_LABEL: LOST_COLOR})


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
        opacity=0.7,
        colormap=lost_colormap(),
        metadata={
            "stentrans": {"role": "lost", "slide_id": info.slide_id, "adata": info.adata, "raster": grid}
        },
    )
    layer.brush_size = 2
    layer.selected_label = LOST_LABEL
    return layer


def outline_lost_regions(viewer, slide_id: str | None = None) -> None:
    """Draw the slide's lost regions as outlines (when it has any): the imputed values of a run's
    x2 layers show through them (the filled cyan layer, on top, hid them)."""
    layer = lost_layer(viewer, slide_id, create=False)
    if layer is not None:
        layer.contour = 1


def lost_sites(viewer, slide_id: str | None = None) -> np.ndarray:
    """``(k, 2)`` lattice sites painted as lost (empty when there is no lost-regions layer)."""
    layer = lost_layer(viewer, slide_id, create=False)
    if layer is None:
        return np.zeros((0, 2), dtype=np.int64)
    rows, cols = layer.metadata["stentrans"]["raster"].sites_of_pixels(np.asarray(layer.data) > 0)
    return np.column_stack([rows, cols]).astype(np.int64)


@dataclass
class SiteIndex:
    """A slide's measured spots and in-tissue empty sites as sorted site keys (built once a slide).

    The lost-regions counter looks painted sites up here instead of recomputing the slide's
    output sites on every brush stroke.
    """

    measured: np.ndarray  # sorted keys of the measured spots (the output's kind "measured")
    holes: np.ndarray  # sorted keys of the sites the output imputes (enclosed, without counts, near-empty)
    hole_rows: np.ndarray
    hole_cols: np.ndarray


def site_index(info: SlideInfo) -> SiteIndex:
    """The slide's :class:`SiteIndex`, computed on first use and kept with the slide."""
    from ..core.sites import output_sites
    from ..core.slide import Slide, site_keys

    if info.sites is not None:
        return info.sites
    adata = info.adata
    out = output_sites(Slide.from_adata(adata))
    holes = out.kind == "imputed"
    # measured as the output counts them: a spot without counts or near-empty is imputed, and was
    # counted as both (Vis5A: "1 of 982 measured spots, 1 empty ... (-1 painted site(s) outside")
    measured = out.kind == "measured"
    index = SiteIndex(
        np.unique(site_keys(out.fine_row[measured], out.fine_col[measured])),
        np.unique(site_keys(out.fine_row[holes], out.fine_col[holes])),
        out.fine_row[holes],
        out.fine_col[holes],
    )
    info.sites = index
    return index


def _count_in(sorted_keys: np.ndarray, keys: np.ndarray) -> int:
    if len(sorted_keys) == 0 or len(keys) == 0:
        return 0
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    return int((sorted_keys[pos] == keys).sum())


def lost_summary(viewer, slide_id: str | None = None) -> dict[str, int]:
    """How many measured spots and empty in-tissue sites are marked lost.

    Returns ``{"measured", "empty_in_tissue", "outside", "total", "n_measured"}``: painted
    measured spots, painted unmeasured sites enclosed by tissue, painted sites outside the tissue
    (ignored by the fit), all painted sites, and the slide's number of measured spots. Cost: one
    pass over the layer's pixels and two sorted look-ups (no output sites recomputed).
    """
    from ..core.slide import site_keys

    info = slide(viewer, slide_id)
    sites = lost_sites(viewer, info.slide_id)
    keys = site_keys(sites[:, 0], sites[:, 1])
    index = site_index(info)
    measured = _count_in(index.measured, keys)
    empty = _count_in(index.holes, keys)
    return {
        "measured": measured,
        "empty_in_tissue": empty,
        "outside": int(len(keys)) - measured - empty,
        "total": int(len(keys)),
        "n_measured": int(len(index.measured)),
    }


def lost_summary_text(summary: dict[str, int]) -> str:
    """One plain line for the counter."""
    if summary["total"] == 0:
        return "no lost regions"
    text = (
        f"lost: {summary['measured']:,} of {summary['n_measured']:,} measured spots, "
        f"{summary['empty_in_tissue']:,} empty in-tissue site(s)"
    )
    if summary["outside"]:
        text += f" ({summary['outside']:,} painted site(s) outside the tissue are ignored)"
    return text


# a single edit that marks more than this share of the measured spots is a flood fill gone wide
FLOOD_SHARE = 0.5


def is_flood(before: dict[str, int], after: dict[str, int]) -> bool:
    """Whether one edit marked more than half of the slide's measured spots as lost at once."""
    return after["measured"] - before["measured"] > FLOOD_SHARE * max(1, after["n_measured"])


def propose_holes(viewer, slide_id: str | None = None) -> int:
    """Paint the slide's in-tissue holes (unmeasured sites enclosed by tissue) as lost; undoable."""
    info = slide(viewer, slide_id)
    layer = lost_layer(viewer, info.slide_id)
    index = site_index(info)
    painted = layer.metadata["stentrans"]["raster"].pixels_of_sites(index.hole_rows, index.hole_cols)
    idx = np.nonzero(painted & (np.asarray(layer.data) != LOST_LABEL))
    if len(idx[0]):
        layer.data_setitem(idx, LOST_LABEL)  # recorded in the layer's undo history
    return int(len(index.holes))


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
    model_path: str | None = None  # a saved (e.g. pretrained) model applied instead of a fit
    finetune: int = 0  # epochs of fine-tuning a pretrained model on the slide
    references: tuple[str, ...] = ()  # same-tissue reference slides (default preset)


def prepare_job(
    viewer,
    config,
    slide_id: str | None = None,
    genes: list[str] | None = None,
    device: str = "auto",
    model_path: str | Path | None = None,
    finetune: int = 0,
    references: tuple[str | Path, ...] | list = (),
) -> TrainingJob:
    """Copy everything the worker needs (slide, lost sites, genes) on the main thread.

    ``model_path``: a saved model to apply (a pretrained one is judged on the slide's held-out
    genes and fine-tuned ``finetune`` epochs first, as ``stentrans enhance --model --finetune``);
    ``references``: same-tissue slides for the default's basis (``--reference``). Both are
    checked here (files exist; not together; references with the default preset only).

    Raises
    ------
    ValueError
        A missing file, or options that do not go together.
    """
    info = slide(viewer, slide_id)
    genes = list(genes) if genes is not None else shown_genes(viewer, info.slide_id)
    references = tuple(str(r) for r in references)
    if model_path is not None and references:
        raise ValueError("reference slides shape a fit on this slide: they do not apply with a model file")
    if references and config.preset != "default":
        raise ValueError(f"reference slides apply to the default preset, not to {config.preset}")
    for path in ([model_path] if model_path is not None else []) + list(references):
        if not Path(path).exists():
            raise ValueError(f"{path}: no such file or folder")
    if finetune < 0:
        raise ValueError(f"fine-tune epochs: {finetune} is not a number of epochs >= 0")
    return TrainingJob(
        info.slide_id,
        info.adata.copy(),
        lost_sites(viewer, info.slide_id).copy(),
        genes,
        config,
        info.frame,
        device,
        None if model_path is None else str(model_path),
        int(finetune),
        references,
    )


def worker_threads() -> int:
    """Compute threads a worker may use: every core but one, which stays with the viewer."""
    return max(1, (os.cpu_count() or 1) - 1)


@contextmanager
def leave_a_core_to_the_viewer(uses_torch: bool):
    """Hold torch's and the BLAS/OpenMP pools to :func:`worker_threads` threads, restored after.

    The event loop runs on the main thread: a worker whose torch or BLAS threads fill every
    core leaves it waiting for the scheduler (gaps of 0.2-0.4 s on a loaded 2-core machine).
    Both settings are process-wide; the main thread runs no torch or BLAS work meanwhile.
    Learned scores depend slightly on torch's thread count (summation order), so a napari run
    may differ from a CLI run in the last digits.
    """
    from threadpoolctl import threadpool_limits

    n = worker_threads()
    torch = None
    if uses_torch:
        import torch
    previous = torch.get_num_threads() if torch is not None else None
    try:
        with threadpool_limits(limits=n):
            if torch is not None:
                torch.set_num_threads(min(n, previous))
            yield n
    finally:
        if torch is not None:
            torch.set_num_threads(previous)


def warm_up(learned: bool = False) -> tuple[list[str], str]:
    """Import torch ahead of a run, in a worker; the device choices and a hint about ``auto``.

    Importing torch takes 1-2 s and importing it in the Train panel's constructor froze the
    viewer that long while the panel opened; a thread started once the panel is built does it
    instead, with the core readers (anndata and pandas, about 1 s, also left out of the panel's
    own imports). With ``learned``, also import ``torch._dynamo``: torch's optimisers import it
    on first use (``torch._compile._disable_dynamo``, about 800 modules and 1.2 s), and doing
    that in the first epoch of the first learned run stalled the viewer mid-run
    (docs/benchmarks.md). Only for learned presets: it costs about 70 MB that the default preset
    never needs.

    Returns
    -------
    devices
        ``["cuda:0", ...]`` for each CUDA device torch sees, then ``"mps"`` where Apple's Metal
        backend is available (empty on a machine with neither).
    hint
        One line: the device ``auto`` resolves to, and how to get CUDA when it is missing.
    """
    import torch

    from ..core import io  # noqa: F401  (the readers: anndata, pandas, h5py)
    from ..core.device import resolve_device

    if learned:
        import torch._dynamo  # noqa: F401  (see above)
    try:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        cuda = torch.cuda.is_available()
    except Exception:  # a torch build without CUDA support
        devices, cuda = [], False
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():  # Apple silicon; never offered where it cannot run
        devices.append("mps")
    hint = "" if cuda else " (CUDA not available: install a CUDA build of PyTorch to use a GPU)"
    return devices, f"auto uses: {resolve_device('auto')}{hint}"


def _apply_model_events(job: TrainingJob, prepared, stop):
    """Worker: load ``job.model_path``, judge (and fine-tune) a pretrained model on the slide.

    The same core functions as ``stentrans enhance --model [--finetune]``; returns the model to
    enhance with and the prepared slide, or None when stopped.
    """
    from ..core.checkpoint import load_model
    from ..core.errors import InputError
    from ..core.pretrain import finetune_events, uses_validation

    model = load_model(job.model_path)
    if model.lattice_kind != prepared.lattice.kind:
        raise InputError(
            f"{job.model_path}: the model was fitted on a {model.lattice_kind} lattice but this slide "
            f"is {prepared.lattice.kind}"
        )
    if job.finetune or uses_validation(model):
        model = yield from finetune_events(model, prepared, job.finetune, job.device, stop)
    return model, prepared


def run_job(job: TrainingJob, stop=None):
    """Worker body: yields every training event; returns ``(model, enhanced, layer tuples)``.

    Returns None when stopped. The slide is prepared once for fitting and enhancing; the layer
    data of the ``GENE x2`` layers are built here, off the main thread; no napari object is
    touched. Torch and BLAS use one core fewer than the machine has
    (:func:`leave_a_core_to_the_viewer`).
    """
    import time

    from ..core.errors import TrainingStopped
    from ..core.estimators.base import stage_event
    from ..core.fitting import Trainer

    start = time.perf_counter()
    what = f"preparing the slide: lattice, lost sites and gaps of {job.adata.n_obs:,} spots"
    yield stage_event(what, 0, 1, 0.0)
    learns = job.model_path is not None or getattr(job.config, "learns", False)
    with leave_a_core_to_the_viewer(learns):
        if job.model_path is not None:
            from ..core.slide import as_slide

            prepared = as_slide(job.adata, job.mask)
            yield stage_event(what, 1, 1, time.perf_counter() - start)
            model, prepared = yield from _apply_model_events(job, prepared, stop)
        else:
            reference = None
            if job.references:
                from ..core.reference import read_references

                reference = read_references(job.references)
            trainer = Trainer(
                job.adata,
                job.config,
                mask=job.mask,
                device=job.device,
                reference=reference,
                reference_names=list(job.references) or None,
            )
            yield stage_event(what, 1, 1, time.perf_counter() - start)
            yield from trainer.run(stop)
            model, prepared = trainer.result, trainer.slide
        if model is None:
            return None
        try:
            enhanced = model.enhance(prepared, genes=job.genes or None, device=job.device, stop=stop)
        except TrainingStopped:
            return None
        genes = [g for g in job.genes if g in enhanced.var_names]
        return model, enhanced, enhanced_layers(enhanced, genes, job.slide_id, job.frame)


def record_result(viewer, slide_id: str, model, enhanced: ad.AnnData) -> int:
    """Main thread: remember a run's model and enhanced slide; returns the run number."""
    info = slide(viewer, slide_id)
    info.model, info.enhanced = model, enhanced
    info.runs += 1
    return info.runs


def add_enhanced_layer(viewer, layer_tuple: tuple, run: int):
    """Main thread: add one ``GENE x2`` layer right above its measured layer, keeping an earlier
    run's layer renamed.

    It is visible when its gene's measured layer is: one gene on screen at a time, and a hidden
    layer costs no drawing (on software OpenGL each new visible layer links a shader, ~0.1 s).
    """
    data, attrs, _ = layer_tuple
    meta = attrs["metadata"]["stentrans"]
    meta["run"] = run
    meta["preset"] = meta["adata"].uns.get("stentrans", {}).get("preset")
    original = next(
        (
            layer
            for layer in viewer.layers
            if layer.metadata.get("stentrans", {}).get("role") == "gene"
            and layer.metadata["stentrans"].get("gene") == meta.get("gene")
            and layer.metadata["stentrans"].get("slide_id") == meta.get("slide_id")
        ),
        None,
    )
    attrs["visible"] = original is None or bool(original.visible)
    layer = _set_or_add(viewer, data, attrs, keep_previous=True)
    if original is not None and original in viewer.layers:
        # right above its measured layer, with its slide's layers (napari adds it on top of all)
        viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(original) + 1)
    return layer


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


PRESET_LABELS = {
    "default": "default (classical estimate)",
    "transformer": "transformer (learned correction)",
    "published": "published recipe",
}


def run_verdict(model, enhanced: ad.AnnData) -> str:
    """The plain end-of-run verdict of a fitted model (what the result is, in one or two sentences)."""
    described = model.describe()
    preset = described.get("preset", getattr(model, "name", ""))
    label = PRESET_LABELS.get(preset, preset)
    history = getattr(model, "history", None) or {}
    best = int(getattr(model, "validation", {}).get("best_epoch", -1))
    note = described.get("note")
    if note or best == 0:
        return (
            f"{label}: the learned correction did not improve on the validation genes, so the "
            "result is the classical estimate (the same as the default preset, which takes seconds)."
        )
    if best > 0 and len(history.get("val_loss", [])) > 1:
        val = np.asarray(history["val_loss"], dtype=float).ravel()
        return (
            f"{label}: the learned correction improved the validation loss from {val[0]:.4g} "
            f"(classical estimate) to {val[best]:.4g} (epoch {best} of {len(val) - 1})."
        )
    if described.get("pretrained_on"):  # a pretrained model that passed the slide's own gate
        return (
            f"{label}: the pretrained correction ({len(described['pretrained_on'])} slides) improved "
            "held-out genes on this slide, so it is applied."
        )
    summary = enhanced.uns.get("stentrans", {}).get("classical_summary")
    reference = described.get("reference")
    with_reference = (
        f", basis gene loadings fitted with {len(reference['slides'])} reference slide(s)"
        if reference
        else ""
    )
    # the smoothers and mixture weights are for experts: the line's tooltip (run_details) has them
    chosen = described.get("classical", {})
    patterns = ""
    if "rank" in chosen:
        # "rank", not "N shared patterns": the pattern check counts its genes' effective patterns
        # (e.g. 2.5 against 5.4), which read as contradicting "5 shared patterns" beside it
        own = " plus each gene's own spatial residual" if chosen.get("residual") is not None else ""
        patterns = f" (a rank-{chosen['rank']} low-rank part{own})"
    return f"{label}: classical estimate chosen on this slide{with_reference}{patterns}, nothing trained" + (
        "; the whole choice is in this line's tooltip." if summary else "."
    )


def run_details(enhanced: ad.AnnData) -> str:
    """The classical choice of a run in full (ranks, smoothers, depth mixtures), for the verdict's tooltip."""
    summary = enhanced.uns.get("stentrans", {}).get("classical_summary")
    return f"classical estimate: {summary}" if summary else ""


EXPORT_CHOICES = {
    "all detected genes": "all",
    "genes on screen": "shown",
    "chosen genes": "chosen",
}


@dataclass
class ExportJob:
    """Inputs of an export, copied on the main thread before the worker writes."""

    model: object  # FittedModel
    adata: ad.AnnData
    mask: np.ndarray
    genes: list[str] | None  # None: every gene detected in >= the model's min_detection of spots
    path: str
    source: str
    what: str  # what the gene selection is, in words


def prepare_export(
    viewer, path, which: str = "all", genes: list[str] | None = None, slide_id: str | None = None
) -> ExportJob:
    """Main thread: what to export (``which``: ``all``, ``shown`` or ``chosen`` with ``genes``).

    Raises
    ------
    RuntimeError
        Nothing trained or loaded yet.
    ValueError
        No path, no gene chosen, or gene names not in the slide.
    """
    info = slide(viewer, slide_id)
    if info.model is None:
        raise RuntimeError("nothing to export: train or load a model first")
    if not path or str(path) in (".", ""):
        raise ValueError("choose a file to export to (.h5ad)")
    if which == "all":
        chosen, what = None, f"every gene detected in >= {info.model.min_detection:.0%} of spots"
    elif which == "shown":
        chosen, what = shown_genes(viewer, info.slide_id), "the genes on screen"
    elif which == "chosen":
        chosen, what = [g.strip() for g in (genes or []) if g and g.strip()], "the chosen genes"
    else:
        raise ValueError(f"export: {which!r} is not one of all, shown, chosen")
    if chosen is not None:
        if not chosen:
            raise ValueError(f"no gene to export: {what} is empty")
        missing = [g for g in chosen if g not in info.adata.var_names]
        if missing:
            from ..core.slide import did_you_mean

            known = np.asarray(info.adata.var_names)
            shown = ", ".join(f"{name!r}{did_you_mean(name, known)}" for name in missing[:3])
            raise ValueError(f"{len(missing)} chosen gene(s) not in the slide: {shown}")
    from ..core.io import source_of

    source = source_of(info.adata)
    return ExportJob(
        info.model, info.adata, lost_sites(viewer, info.slide_id).copy(), chosen, str(path), source, what
    )


def run_export(job: ExportJob, stop=None, progress: Callable[[str], None] | None = None) -> str:
    """Worker: enhance and stream the slide to ``job.path`` with the CLI's writer; a summary line.

    The file is written by :meth:`FittedModel.write` (atomic, never over an input), the same
    writer as ``stentrans enhance``, so it opens again like any enhanced output. ``progress``
    gets a status line after every gene batch (called in the worker's thread).
    """
    from ..core.estimators.base import stage_text

    def said(event) -> None:
        progress(f"exporting {job.what}: {stage_text(event)}")

    with leave_a_core_to_the_viewer(job.model.uses_network):
        written = job.model.write(
            job.adata,
            job.path,
            mask=job.mask,
            genes=job.genes,
            stop=stop,
            device="cpu",
            inputs=tuple(p for p in [job.source] if p),
            callback=None if progress is None else said,
        )
    n_sites, n_genes = len(written.obs), len(written.var)
    warning = written.uns.get("patterns", {}).get("warning")  # the check over every gene written
    return (
        f"exported {n_sites:,} sites x {n_genes:,} genes ({job.what}; {n_genes:,} of the slide's "
        f"{job.adata.n_vars:,}) to {Path(job.path).name}" + (f". Note: {warning}" if warning else "")
    )


def side_by_side(viewer, enabled: bool = True, gene: str | None = None) -> list[str]:
    """Grid mode with one gene: measured | ``x2`` (| ``truth x2`` on the samples), nothing else.

    napari gives each visible layer its own cell; with every layer visible that made 13-14 tiny
    cells. Only the gene's layers stay visible (the others are hidden, one click away). Returns
    the names of the layers shown, in the layer list's order.
    """
    viewer.grid.enabled = enabled
    if not enabled or gene is None:
        return []
    labels = [  # layers are named by the gene's symbol when the slide has one (layers.gene_label)
        layer.metadata["stentrans"].get("label", gene)
        for layer in viewer.layers
        if layer.metadata.get("stentrans", {}).get("gene") == gene
    ]
    label = labels[0] if labels else gene
    shown = [name for name in (label, f"{label} x2", f"{label} truth x2") if name in viewer.layers]
    for layer in viewer.layers:
        layer.visible = layer.name in shown
    viewer.grid.stride = 1
    viewer.reset_view()
    return [layer.name for layer in viewer.layers if layer.visible]


# ----------------------------------------------------------------------------- Quality check


METHOD_LABELS = {
    "default": "stEnTrans default",
    "transformer": "stEnTrans transformer",
    "published": "stEnTrans published recipe",
    "nearest": "nearest spot (interpolation)",
    "linear": "linear interpolation",
    "cubic": "cubic interpolation",
    "lowrank": "low-rank only (the previous default)",
    "lowrank_linear": "low-rank + linear (reference)",
    "lowrank_kernel": "low-rank + kernel (reference)",
    "residual_cnn": "residual CNN (DIST-like reference)",
}
# the enhancement a user can run from the widget, and the interpolation it has to beat
ENHANCEMENTS = ("default", "transformer", "published")
INTERPOLATIONS = ("nearest", "linear", "cubic")
QUICK_METHODS = ("default", *INTERPOLATIONS)  # seconds on a Visium slide
LEARNED_METHODS = ("transformer", "published")  # minutes each on a CPU


class QualityStopped(Exception):
    """The quality check was stopped between two methods."""


def quality_events(
    adata: ad.AnnData,
    epochs: int = 5,
    n_genes: int = 200,
    seed: int = 0,
    methods: tuple[str, ...] = QUICK_METHODS,
    stop=None,
    labels: str | None = None,
):
    """Worker: the held-out protocol (as ``stentrans evaluate``), one event per finished method.

    Yields ``(done, total, method)`` after each method; returns the report, or None when ``stop``
    was set (it takes effect when the running method ends). ``labels``: an ``obs`` column of
    annotations for the ARI (``stentrans evaluate --labels``).
    """
    from ..core.evaluate import evaluate

    done: queue.Queue = queue.Queue()
    outcome: dict = {}

    def callback(name: str, _summary: dict) -> None:
        done.put(name)
        if stop is not None and stop.is_set():
            raise QualityStopped

    def work() -> None:
        try:
            with leave_a_core_to_the_viewer(not set(methods) <= set(QUICK_METHODS)):
                outcome["report"] = evaluate(
                    adata,
                    "heldout",
                    methods=tuple(methods),
                    n_genes=n_genes,
                    epochs=epochs,
                    seed=seed,
                    device="cpu",
                    callback=callback,
                    labels=labels,
                )
        except QualityStopped:
            outcome["report"] = None
        except Exception as exc:  # re-raised in the worker, which reports it
            outcome["error"] = exc
        finally:
            done.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    count = 0
    yield (0, len(methods), None)
    while True:
        name = done.get()
        if name is None:
            break
        count += 1
        yield (count, len(methods), name)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("report")


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


def method_label(name: str) -> str:
    """The user-facing name of an evaluation method."""
    return METHOD_LABELS.get(name, name)


#: a difference the verdict calls level rather than a win or a loss
LEVEL = 0.005
#: the interpolations as the verdict names the best of them on each metric
INTERPOLATION_NAMES = {"nearest": "nearest spot", "linear": "linear", "cubic": "cubic"}
#: what the Quality check's verdict compares (report key, words): each gene's own values, what
#: is left of each gene beyond the slide's main axes, and the genes' correlations with each other
VERDICT_METRICS = (
    ("median_pcc", "median r"),
    ("gene_specific_r", "gene-specific r"),
    ("coexpression_r", "co-expression r"),
    ("coexpression_r_signal", "co-expression r against the signal"),
    ("ari", "the ARI against the annotation"),  # only when an annotation was chosen
)


def quality_verdict(report: dict) -> str:
    """Plain sentences: does the enhancement beat interpolation on this slide, metric by metric?

    The best enhancement by median r is compared, on median r, gene-specific r and co-expression
    r (and co-expression r against the signal where the scored spots determine it,
    :func:`~..core.evaluate.signal_grade`; the ARI where an annotation was chosen), with the best
    interpolation on that same metric (a
    method that wins one and loses the others erases what makes each gene a gene; METHOD.md);
    differences under :data:`LEVEL` are called level; then the notes of methods that explain
    themselves (a learned preset that kept the classical estimate).
    """
    from ..core.evaluate import signal_grade
    from ..core.methods import canonical_method

    methods = {canonical_method(m): v for m, v in report["methods"].items()}  # 0.2.0: "stentrans"
    finite = {  # metric -> method -> its finite value
        key: {m: float(v[key]) for m, v in methods.items() if v.get(key) is not None and np.isfinite(v[key])}
        for key, _ in VERDICT_METRICS
    }
    r = finite["median_pcc"]
    ours = [m for m in ENHANCEMENTS if m in r]
    where = f"at {report['n_heldout_spots']:,} held-out spots, {report['n_genes']:,} genes"
    if not ours or not any(m in r for m in INTERPOLATIONS):
        return f"Not enough methods scored to compare the enhancement with interpolation ({where})."
    best_ours = max(ours, key=r.get)
    wins, level, losses = [], [], []
    reliability = report.get("truth", {}).get("signal_coexpression_reliability")
    grade = signal_grade(reliability)
    unjudged = None  # why co-expression r against the signal is left out, when it is
    for key, words in VERDICT_METRICS:
        values = finite[key]
        theirs = [m for m in INTERPOLATIONS if m in values]
        if best_ours not in values or not theirs:
            continue
        if key == "coexpression_r_signal" and grade != "well":
            if grade is not None:
                unjudged = (
                    f"{words.capitalize()} is not judged: two halves of the scored spots agree on the "
                    f"signal's correlations at r = {reliability:.2f} only."
                )
            continue
        best = max(theirs, key=values.get)
        said = f"{words} ({values[best_ours]:.3f} vs {values[best]:.3f}, {INTERPOLATION_NAMES[best]})"
        difference = values[best_ours] - values[best]
        (level if abs(difference) < LEVEL else wins if difference > 0 else losses).append(said)

    def listed(items: list[str], conjunction: str) -> str:
        return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"

    parts = []
    if wins:
        parts.append(f"beats every interpolation on {listed(wins, 'and')}")
    if level:
        parts.append(f"is level with {'it' if wins else 'interpolation'} on {listed(level, 'and')}")
    if losses:
        if level:
            parts.append(f"and loses to it on {listed(losses, 'and')}")
        elif wins:
            parts.append(f"not on {listed(losses, 'or')}")
        else:
            parts.append(f"does not beat interpolation on {listed(losses, 'or')}")
    verb = ", ".join(parts)
    text = f"On this slide the enhancement ({method_label(best_ours)}) {verb}, {where}."
    notes = [f"{method_label(m)}: {v['note']}" for m, v in methods.items() if v.get("note")]
    sentences = [text, *([unjudged] if unjudged else []), *_few_patterns(report, methods[best_ours])]
    return " ".join([*sentences, *(note if note.endswith(".") else note + "." for note in notes)])


def _few_patterns(report: dict, scores: dict) -> list[str]:
    """The plain warning of the CLI when the enhanced genes share a few patterns at the held-out
    spots (:func:`~..core.patterns.few_patterns` over the report's spatially variable genes), as
    one sentence; none otherwise."""
    from ..core.patterns import NOT_SUITABLE, compared, few_in_report, how_few, report_bar

    rank = scores.get("effective_rank")
    if not few_in_report(report, rank):
        return []
    measured, signal, _ = report_bar(report)
    return [f"Its genes follow {how_few(signal)} ({compared(rank, measured, signal)}): {NOT_SUITABLE}."]


#: the measured slide's own values in the quality table: what a method close to them keeps, and
#: its PC1 share and effective rank without its Poisson noise (the pattern verdict's bar)
TRUTH_KEYS = ("pc1_share", "effective_rank", "ari", "signal_pc1_share", "signal_effective_rank")
TRUTH = "truth"  # the measured slide's column (CSV row), as the JSON report names it
SIGNAL_KEYS = ("pc1_share", "effective_rank")  # what the truth has without its noise


def without_noise(truth: dict, key: str) -> float:
    """The truth's ``key`` (one of :data:`SIGNAL_KEYS`) without its Poisson noise, from a
    report's ``truth``; NaN when the report has none (a JSON report writes NaN as null)."""
    value = truth.get(f"signal_{key}")
    return float("nan") if value is None else float(value)


def quality_table(report: dict, columns: dict[str, str]) -> dict[str, list]:
    """Table columns (method label, method id, then ``columns``: header -> report key), rounded
    to 3 digits.

    One row per method, then a row of the measured slide at the scored spots, with the values it
    has of its own (:data:`TRUTH_KEYS`: PC1 share, effective rank, both also without its Poisson
    noise, and the ARI of its clustering against the annotation); its other cells are None.
    """
    names = list(report["methods"])
    truth = report.get("truth", {})

    def rounded(v):
        return None if v is None or not np.isfinite(v) else round(float(v), 3)

    return {
        "method": [method_label(m) for m in names] + ["measured slide (truth at the scored spots)"],
        "method id": [*names, TRUTH],
        **{
            column: [rounded(report["methods"][m].get(key)) for m in names]
            + [rounded(truth.get(key)) if key in TRUTH_KEYS else None]
            for column, key in columns.items()
        },
    }


def write_quality_csv(report: dict, path, columns: dict[str, str]) -> Path:
    """The quality table (:func:`quality_table`) as CSV, written atomically."""
    import pandas as pd

    from ..core.files import atomic_path

    table = pd.DataFrame(quality_table(report, columns))
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


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
        "blending": "translucent",
        "opacity": 0.75,
        "metadata": {
            "stentrans": {"role": "residual", "slide_id": info.slide_id, "gene": gene, "adata": enh}
        },
    }
    layer = _set_or_add(viewer, raster.images[0], attrs, keep_previous=False)
    _show_colorbar(layer)
    return layer


def _show_colorbar(layer) -> None:
    """Turn on the layer's colour bar (napari >= 0.6); older napari has none."""
    colorbar = getattr(layer, "colorbar", None)
    if colorbar is not None:
        colorbar.visible = True
