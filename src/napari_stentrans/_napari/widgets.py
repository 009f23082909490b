"""The dock widgets: "Genes", "Lost regions", "Train & enhance", "Enhance & export", "Quality
check", and "Workspace", one dock holding all five as tabs (fits a 1280x800 screen).

magicgui containers wired to the plain functions of :mod:`.actions`; qtpy only for the loss-plot
canvas, the collapsible section and the tabs (magicgui has none of them). Long work runs in napari
thread workers that only yield events and return results; layers change on the main thread only.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
    Table,
)

from . import actions

if TYPE_CHECKING:
    import napari


# pause between two result layers: a 0 ms timer can run again before the event loop repaints
# or handles input, so two layers (0.3-0.5 s on a loaded machine) landed in one gap
LAYER_TURN_MS = 15


def _status_label(value: str = "") -> Label:
    """A label that wraps long text instead of widening the dock (which squeezed the canvas to 0 px)."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=value)
    label.native.setWordWrap(True)
    # a wrapped label still asks for the width of its longest line; ignore it horizontally
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def _scrolling(widget):
    """``widget`` in a frameless vertical scroll area (its contents keep their natural height).

    As wide as the contents need beside the vertical scroll bar, so nothing is cut at the right.
    """
    from qtpy.QtCore import QSize, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    class _Area(QScrollArea):
        def minimumSizeHint(self) -> QSize:
            inner = self.widget().minimumSizeHint()
            bar = self.verticalScrollBar().sizeHint().width()
            return QSize(inner.width() + bar, super().minimumSizeHint().height())

    layout = widget.layout()  # no right margin: the scroll bar is the edge there
    if layout is not None:
        margins = layout.contentsMargins()
        layout.setContentsMargins(margins.left(), margins.top(), 0, margins.bottom())
    area = _Area()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return area


def _never_shrink(label: Label) -> None:
    """Keep ``label`` at least as high as the text it shows now needs (it grows, never shrinks).

    Each change of a status's height resized the loss plot below it, which re-rendered: 36-60 ms
    a change on a loaded machine instead of 10-16 ms, and a run's stages alternate one- and
    two-line names.
    """
    native = label.native
    native.setMinimumHeight(max(native.minimumHeight(), native.heightForWidth(max(1, native.width()))))


def readable_error(exc: BaseException) -> str:
    """An error message with the reason first: a leading file path moves to the end, by name.

    ``"/very/long/path/slide.csv: no spots ..."`` becomes ``"no spots ... (slide.csv)"`` so that
    a notification cut at its width still shows why; any other absolute path is shortened to
    its last part (``"reference /data/151673/ is ..."`` -> ``"reference 151673 is ..."``).
    """
    import re
    from pathlib import PurePath

    text = str(exc) or type(exc).__name__
    match = re.match(r"^\s*'?(/[^:']+|[A-Za-z]:\\[^:']+)'?:\s+(.+)$", text, flags=re.S)
    if match:
        text = f"{match.group(2)} ({PurePath(match.group(1)).name})"
    # any other absolute path in the text: its last part (a long folder pushes the reason out)
    return re.sub(r"(?<![\w.~])/(?:[^\s:'\",;()/]+/)+([^\s:'\",;()/]+)/?", r"\1", text)


def _notify_error(exc: BaseException) -> None:
    from napari.utils.notifications import show_error

    show_error(f"stEnTrans: {readable_error(exc)}")


def _row(*widgets, labels: bool = False) -> Container:
    """Widgets side by side (e.g. Start | Stop), without margins: rows stay as low as one widget."""
    row = Container(widgets=list(widgets), layout="horizontal", labels=labels)
    row.margins = (0, 0, 0, 0)
    return row


class _Section:
    """A titled section that opens and closes (Qt: magicgui has no collapsible container)."""

    def __init__(self, title: str, body: Container, open_: bool = False) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QToolButton, QVBoxLayout, QWidget

        self.body = body
        self.native = QWidget()
        layout = QVBoxLayout(self.native)
        layout.setContentsMargins(0, 0, 0, 0)
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.button.toggled.connect(self.set_open)
        layout.addWidget(self.button)
        layout.addWidget(body.native)
        self.set_open(open_)
        self.button.setChecked(open_)

    def set_open(self, open_: bool) -> None:
        from qtpy.QtCore import Qt

        self.body.native.setVisible(open_)
        self.button.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)

    @property
    def is_open(self) -> bool:
        return self.body.native.isVisible() or self.button.isChecked()


_FIT_PENDING: set[int] = set()  # viewers whose view fit is scheduled


def _fit_view_soon(viewer) -> None:
    """Fit the view to the layers once the batch of a newly opened slide's layers is in.

    napari fits the view to the first layer only: a larger slide opened second lay partly out
    of view. Every docked panel sees the slide open; the view is fitted once.
    """
    from qtpy.QtCore import QTimer

    viewer = getattr(viewer, "__wrapped__", viewer)  # plugin widgets get a proxy of the viewer
    if id(viewer) in _FIT_PENDING:
        return
    _FIT_PENDING.add(id(viewer))

    def fit() -> None:
        _FIT_PENDING.discard(id(viewer))
        viewer.reset_view()

    QTimer.singleShot(0, fit)


# per viewer (by id), its panels with a slide chooser: choosing a slide in one chooses it in all
_PANELS: dict[int, weakref.WeakSet] = {}


class _SlideWidget(Container):
    """A container with a slide chooser that follows the viewer's layers and the other panels."""

    def __init__(self, viewer: napari.viewer.Viewer, **kwargs) -> None:
        self._viewer = viewer
        self._slide = ComboBox(
            label="Slide",
            choices=self._slide_choices,
            tooltip="The slide this widget works on (opened slides and samples)",
        )
        super().__init__(**kwargs)
        self.append(self._slide)
        self._arriving: set[str] = set()  # slides whose layers are coming in, none shown yet
        viewer.layers.events.inserted.connect(self._refresh_slides)
        viewer.layers.events.removed.connect(self._refresh_slides)
        self._slide.changed.connect(self._bring_forward)
        actions.per_viewer(_PANELS, viewer, weakref.WeakSet).add(self)

    def _slide_choices(self, _widget=None) -> list[tuple[str, str]]:
        # labelled as the verdicts and notes name them: a number only where two share a name
        found = actions.slides(self._viewer)
        return [(actions.label_among(found, sid), sid) for sid in found]

    def _refresh_slides(self, _event=None) -> None:
        before = set(self._slide.choices)  # first: a renamed layer resets every chooser (napari)
        actions.name_after_slides(self._viewer)
        self._slide.reset_choices()
        # a slide counts as opened once one of its layers is shown (a slide's first layers may
        # come hidden; the sections of one file after the first stay hidden: not to work on)
        self._arriving = {sid for sid in self._arriving if sid in self._slide.choices} | {
            sid for sid in self._slide.choices if sid not in before
        }
        opened = [
            sid
            for sid in self._slide.choices
            if sid in self._arriving and actions.is_shown(self._viewer, sid)
        ]
        self._arriving -= set(opened)
        if opened and before:
            # a slide opened while another was chosen: work on the one just opened (a new user
            # opened a sample after a slide and ran the Quality check on the first one unawares)
            self._slide.value = opened[-1]
            _fit_view_soon(self._viewer)

    def _bring_forward(self, slide_id: str | None) -> None:
        """The chosen slide is the one shown (:func:`actions.bring_forward`); said once, when
        layers were hidden."""
        if slide_id is None or slide_id not in actions.slides(self._viewer):
            return
        for panel in list(actions.per_viewer(_PANELS, self._viewer, weakref.WeakSet)):
            if panel is not self and panel._slide.value != slide_id and slide_id in panel._slide.choices:
                panel._slide.value = slide_id  # every panel works on the slide shown
        hidden = actions.bring_forward(self._viewer, slide_id)
        if hidden:
            from napari.utils.notifications import show_info

            show_info(
                f"{actions.slide_label(self._viewer, slide_id)}: the {len(hidden)} layer(s) of the other "
                "slide(s) are hidden, as the slides lie over one another; tick their eye in the layer "
                "list to show them (choosing their slide in a panel brings them back)"
            )

    @property
    def slide_id(self) -> str | None:
        return self._slide.value


class GenesWidget(_SlideWidget):
    """Open a slide in the background; search all genes of a slide and add them as image layers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._path = FileEdit(
            label="Open",
            mode="r",
            tooltip="A Space Ranger folder (type or paste its path), an .h5ad or an ST count table",
        )
        self._open = PushButton(
            text="Open slide in the background",
            tooltip="Read in a worker: the viewer stays responsive while a large file is read",
        )
        self._reading = ProgressBar(label="Reading", min=0, max=1, value=0, visible=False)
        self._query = LineEdit(label="Search", tooltip="Part of a gene name (case-insensitive)")
        self._genes = Select(
            label="Genes", choices=self._gene_choices, tooltip="Hold Ctrl/Shift to pick several"
        )
        self._genes.native.setMinimumHeight(80)
        self._add = PushButton(text="Add selected as layers")
        self._spots = PushButton(
            text="As true-size spots",
            tooltip="The selected genes as circular spots of their real diameter; "
            "hover for count and barcode",
        )
        self._status = _status_label(value="")
        self._annotation = ComboBox(
            label="Colour by",
            choices=self._annotation_choices,
            tooltip="Categorical spot annotations of the slide (clusters, layers, regions)",
        )
        self._show_annotation = PushButton(text="Show")
        self._labels_path = FileEdit(
            label="Annotations",
            mode="r",
            filter="*.csv *.tsv *.txt",
            tooltip="A table of barcode,label (e.g. DLPFC's layer_annotations.csv) or legacy ST x,y,label: "
            "added to the slide as a column to colour by and to score the ARI against",
        )
        self._add_labels = PushButton(text="Add")
        self._legend = _status_label(value="")
        self.extend(
            [
                self._path,
                self._open,
                self._reading,
                self._query,
                self._genes,
                _row(self._add, self._spots),
                self._status,
                _row(self._annotation, self._show_annotation, labels=True),
                _row(self._labels_path, self._add_labels, labels=True),
                self._legend,
            ]
        )
        self._slide.changed.connect(lambda _: self._annotation.reset_choices())
        viewer.layers.events.inserted.connect(lambda _e: self._annotation.reset_choices())
        self._show_annotation.changed.connect(lambda _: self.show_annotation(self._annotation.value))
        self._add_labels.changed.connect(lambda _: self.add_annotations(self._labels_path.value))
        self._query.changed.connect(lambda _: self._genes.reset_choices())
        self._slide.changed.connect(lambda _: self._genes.reset_choices())
        self._add.changed.connect(self.add_selected)
        self._spots.changed.connect(self.add_spots)
        self._open.changed.connect(lambda _: self.open_slide(self._path.value))
        self.worker = None
        self._pending: list = []

    def add_spots(self, _value=None) -> list:
        """The selected genes as true-size circular spots."""
        genes = list(self._genes.value)
        if not genes:
            self._status.value = "select one or more genes first"
            return []
        layers = [actions.spot_points_layer(self._viewer, gene, self.slide_id) for gene in genes]
        self._status.value = f"added {len(layers)} spot layer(s), {layers[0].size[0]:.0f} um spots"
        return layers

    def _annotation_choices(self, _widget=None) -> list[str]:
        if self.slide_id is None:
            return []
        try:
            return actions.annotation_columns(self._viewer, self.slide_id)
        except LookupError:
            return []

    def add_annotations(self, path):
        """Add a table of spot annotations to the slide and colour the spots by it."""
        from ..core.errors import StentransError

        try:
            column = actions.add_annotations(self._viewer, path, self.slide_id)
        except (StentransError, ValueError, LookupError) as exc:
            self._legend.value = f"annotations not added: {readable_error(exc)}"
            _notify_error(exc)
            return None
        self._annotation.reset_choices()
        self._annotation.value = column
        return self.show_annotation(column)

    def show_annotation(self, column: str | None):
        """A layer coloured by an annotation column, with its legend under the chooser."""
        if not column:
            self._legend.value = "this slide has no categorical annotation in obs"
            return None
        layer = actions.annotation_layer(self._viewer, column, self.slide_id)
        self._legend.value = actions.legend_html(layer)
        return layer

    def open_slide(self, path):
        """Read ``path`` in a worker, then add its layers one per event-loop turn."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            return self.worker
        if not path or str(path) in (".", ""):
            _notify_error(ValueError("choose a slide to open"))
            return None
        self._status.value = f"reading {Path(str(path)).name}..."
        self._reading.visible = True
        self._reading.max = 0  # busy: the core reader reports no progress
        worker = create_worker(actions.read_layers, str(path), _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_read)
        worker.errored.connect(self._on_read_error)
        worker.finished.connect(self._on_read_finished)
        self.worker = worker
        self._open.enabled = False
        worker.start()
        return worker

    def _on_read(self, layer_tuples: list) -> None:
        self._pending = list(layer_tuples)
        self._status.value = f"adding {len(layer_tuples)} layer(s)..."
        self._add_next_layer()

    def _add_next_layer(self) -> None:
        from qtpy.QtCore import QTimer

        if not self._pending:
            return
        actions.add_layer_tuple(self._viewer, self._pending.pop(0))
        if self._pending:
            QTimer.singleShot(LAYER_TURN_MS, self._add_next_layer)
        else:
            self._status.value = "slide opened"

    def _on_read_error(self, exc: BaseException) -> None:
        self._status.value = f"not opened: {readable_error(exc)}"
        _notify_error(exc)

    def _on_read_finished(self) -> None:
        self.worker = None
        self._open.enabled = True
        self._reading.visible = False

    @property
    def idle(self) -> bool:
        """No read in progress and no layers waiting to be added."""
        return self.worker is None and not self._pending

    def _gene_choices(self, _widget=None) -> list[str]:
        if self.slide_id is None:
            return []
        return actions.gene_names(self._viewer, self.slide_id, self._query.value, limit=500)

    def add_selected(self, _value=None) -> list:
        genes = list(self._genes.value)
        if not genes:
            self._status.value = "select one or more genes first"
            return []
        layers = actions.add_gene_layers(self._viewer, genes, self.slide_id)
        self._status.value = f"added {len(layers)} layer(s)"
        return layers


class LostRegionsWidget(_SlideWidget):
    """A Labels layer aligned with the slide to paint lost regions; hole proposal; counts.

    The counter follows every change of the layer, undo and redo included (they emit only
    ``set_data``), at most once per event-loop turn; a single edit that marks more than half of
    the measured spots (a fill click on the background floods the whole slide) is undone.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._create = PushButton(
            text="Paint lost regions",
            tooltip="Create (or select) the slide's lost-regions layer and start painting; "
            "outline a region with the brush, then fill inside it",
        )
        self._holes = PushButton(
            text="Propose in-tissue holes",
            tooltip="Mark unmeasured sites enclosed by tissue as lost (undo with Ctrl+Z)",
        )
        self._summary = _status_label(value="no lost regions")
        self._note = _status_label(value="")
        self.extend([self._create, self._holes, self._summary, self._note])
        self._connected: set[int] = set()
        self._last: dict | None = None
        self._update_pending = False
        self._create.changed.connect(self.create_layer)
        self._holes.changed.connect(self.propose)

    def create_layer(self, _value=None):
        layer = actions.lost_layer(self._viewer, self.slide_id)
        if id(layer) not in self._connected:
            layer.events.paint.connect(self._on_paint)
            layer.events.set_data.connect(self._schedule_update)  # undo/redo emit only this
            self._connected.add(id(layer))
        self._viewer.layers.selection.active = layer
        layer.mode = "paint"
        layer.contour = 0  # filled again to paint (a run's result outlines it)
        self.update_summary()
        return layer

    def propose(self, _value=None) -> int:
        self.create_layer()
        n = actions.propose_holes(self._viewer, self.slide_id)
        self.update_summary()
        return n

    def _schedule_update(self, _event=None) -> None:
        from qtpy.QtCore import QTimer

        if not self._update_pending:
            self._update_pending = True
            QTimer.singleShot(0, self._deferred_update)

    def _deferred_update(self) -> None:
        self._update_pending = False
        try:
            self.update_summary()
        except LookupError:  # the slide was closed meanwhile
            pass

    def _on_paint(self, _event=None) -> None:
        from qtpy.QtCore import QTimer

        # napari records the edit (and emits paint) before it writes the data: check next turn
        before = self._last
        QTimer.singleShot(0, lambda: self._check_flood(before))

    def _check_flood(self, before: dict | None) -> None:
        try:
            after = self.update_summary()
        except LookupError:  # the slide was closed meanwhile
            return
        if before is not None and actions.is_flood(before, after):
            layer = actions.lost_layer(self._viewer, self.slide_id, create=False)
            layer.undo()
            self._note.value = (
                f"undone: that edit marked {after['measured'] - before['measured']:,} of "
                f"{after['n_measured']:,} measured spots (a fill outside an outline floods the whole "
                "slide); outline the region with the brush first, then fill inside it"
            )
            self.update_summary()
        else:
            self._note.value = ""

    def update_summary(self, _event=None) -> dict:
        summary = actions.lost_summary(self._viewer, self.slide_id)
        self._summary.value = actions.lost_summary_text(summary)
        self._last = summary
        return summary


class _LossPlot:
    """Train/validation loss per epoch (matplotlib canvas; magicgui has no plot widget).

    Fixed margins instead of ``tight_layout`` (which warned "Tight layout not applied" in a small
    dock); new points update the lines' data and redraw once the event loop is idle. The panel
    holds an empty frame of the plot's size until :meth:`build` draws into it: importing
    matplotlib took about 0.25 s of the panel's opening, so the Train panel imports it in its
    warm-up thread and builds the canvas after (points added before then are kept). With no
    loss to show, the axes carry no ticks and a line of text says why (matplotlib's default
    range put ticks at +-0.04 on an empty plot); colours follow napari's theme.
    """

    MIN_HEIGHT = 180  # px: a readable plot in a 1280x800 window
    EMPTY = "the train and validation loss per epoch appear here"

    def __init__(self) -> None:
        from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

        self.widget = QWidget()
        QVBoxLayout(self.widget).setContentsMargins(0, 0, 0, 0)
        self.widget.setMinimumHeight(self.MIN_HEIGHT)
        self.widget.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        self.canvas = None
        self.epochs: list[int] = []
        self.train: list[float] = []
        self.val: list[float] = []
        self.note = self.EMPTY
        self.colours: dict[str, str] = {}  # set by build and style

    def build(self, colours: dict[str, str]) -> None:
        """Make the figure and its canvas in the frame, in ``colours`` (:meth:`style`; main thread; once)."""
        if self.canvas is not None:
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from qtpy.QtWidgets import QSizePolicy

        self.figure = Figure(figsize=(3.2, 2.2))
        self.figure.subplots_adjust(left=0.2, right=0.97, bottom=0.27, top=0.95)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        self.axes = self.figure.add_subplot(111)
        self.axes.set_xlabel("epoch", fontsize=8)
        self.axes.set_ylabel("loss", fontsize=8)
        self.axes.tick_params(labelsize=7)
        (self._train_line,) = self.axes.plot([], [], "o-", ms=3, label="train")
        (self._val_line,) = self.axes.plot([], [], "s-", ms=3, label="validation")
        self._note = self.axes.text(
            0.5, 0.5, "", transform=self.axes.transAxes, ha="center", va="center", fontsize=7, wrap=True
        )
        self.widget.layout().addWidget(self.canvas)
        self.style(colours)

    def style(self, colours: dict[str, str]) -> None:
        """Colour the built plot: ``{"background": ..., "text": ...}`` (e.g. napari's theme)."""
        self.colours = dict(colours)
        background, text = self.colours["background"], self.colours["text"]
        self.figure.set_facecolor(background)
        self.axes.set_facecolor(background)
        self.axes.tick_params(colors=text)
        for spine in self.axes.spines.values():
            spine.set_color(text)
        self.axes.xaxis.label.set_color(text)
        self.axes.yaxis.label.set_color(text)
        self._note.set_color(text)
        self._draw()

    def clear(self, note: str = EMPTY) -> None:
        """No points; ``note`` is shown until a loss comes."""
        self.epochs, self.train, self.val = [], [], []
        self.note = note
        self._draw()

    def say(self, note: str) -> None:
        """Show ``note`` while there is no loss to plot (e.g. a run with 0 epochs)."""
        self.note = note
        self._draw()

    def add(self, epoch: int, train: float | None, val: float | None) -> None:
        self.epochs.append(epoch)
        self.train.append(np.nan if train is None else train)
        self.val.append(np.nan if val is None else val)
        self._draw()

    def _draw(self) -> None:
        if self.canvas is None:
            return
        from matplotlib.ticker import MaxNLocator, NullLocator

        self._train_line.set_data(self.epochs, self.train)
        self._val_line.set_data(self.epochs, self.val)
        values = np.asarray(self.train + self.val, dtype=float)
        values = values[np.isfinite(values)]
        legend = self.axes.get_legend()
        if legend is not None:
            legend.remove()
        if values.size:
            self._note.set_text("")
            self.axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            self.axes.yaxis.set_major_locator(MaxNLocator())
            self.axes.set_xlim(-0.2, max(1, max(self.epochs)) + 0.2)
            low, high = float(values.min()), float(values.max())
            pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
            self.axes.set_ylim(low - pad, high + pad)
            # where the points are not (a fixed corner hid the last validation points)
            legend = self.axes.legend(fontsize=7, loc="best", framealpha=0.6)
            legend.get_frame().set_facecolor(self.colours["background"])
            for text in legend.get_texts():
                text.set_color(self.colours["text"])
        else:
            self._note.set_text(self.note)
            self.axes.xaxis.set_major_locator(NullLocator())
            self.axes.yaxis.set_major_locator(NullLocator())
        self.canvas.draw_idle()


def _theme_colours(viewer: napari.viewer.Viewer) -> dict[str, str]:
    """The background and text colours of the viewer's napari theme (the plot's colours)."""
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(viewer.theme)
    except ValueError:  # a theme registered by a plugin that is gone: napari's default
        theme = get_theme("dark")
    return {"background": theme.background.as_hex(), "text": theme.text.as_hex()}


def _import_plot_modules() -> None:
    """Import matplotlib and its Qt canvas (about 0.25 s; the warm-up thread, not the viewer)."""
    import matplotlib.backends.backend_qtagg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.ticker  # noqa: F401


#: one thread for the Train panels' torch imports (non-daemon: an exit waits for an import to end)
_WARM_UP = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stentrans-warm-up")


class TrainWidget(_SlideWidget):
    """Train on the slide in the background, stop; the x2 layers of the genes on screen and a
    plain verdict at the end (save, load and export: :class:`ExportWidget`)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        from qtpy.QtCore import QTimer

        from ..core.config import PRESETS, preset

        defaults = preset("default", "square").flat()
        self._preset = ComboBox(
            label="Preset",
            choices=[(actions.PRESET_LABELS.get(name, name), name) for name in PRESETS],
            value="default",
            tooltip="default: low-rank reconstruction + each gene's own residual, smoothers chosen on "
            "the slide (no training, seconds; best or within 0.001 of the best baseline in 21 of 36 "
            "benchmark rows); transformer: a ViT correction of the default's estimate, learned on the slide "
            "(research: it has not beaten the default); "
            "published: the authors' recipe, for comparison",
        )
        self._epochs = SpinBox(
            label="Epochs",
            min=0,
            max=1000,
            value=defaults["epochs"],
            tooltip="Passes over the training genes (early stopping on validation); "
            "0 = the classical estimate, nothing learned",
        )
        self._genes = SpinBox(
            label="Train genes",
            min=8,
            max=50000,
            value=defaults["n_train_genes"],
            tooltip="Most variable genes (detected in >= 10% of spots) to train on",
        )
        self._patch = SpinBox(
            label="Patch size",
            min=1,
            max=16,
            value=defaults["patch_size"],
            tooltip="Patch of the patch embedding, in lattice sites",
        )
        self._depth = SpinBox(
            label="Depth", min=1, max=24, value=defaults["depth"], tooltip="Transformer blocks"
        )
        self._heads = SpinBox(
            label="Heads",
            min=1,
            max=16,
            value=defaults["heads"],
            tooltip="Attention heads (must divide the token width)",
        )
        self._lr = FloatSpinBox(
            label="Learning rate",
            min=1e-6,
            max=1.0,
            step=1e-4,
            value=defaults["lr"],
            tooltip="Adam learning rate",
        )
        self._batch = SpinBox(
            label="Batch size", min=1, max=4096, value=defaults["batch_size"], tooltip="Genes a step"
        )
        self._seed = SpinBox(
            label="Seed",
            min=0,
            max=2**31 - 1,
            value=0,
            tooltip="Same seed and thread count, same result on a CPU; this panel leaves one core to "
            "the viewer, so a learned run here can differ in the last digits from the same run on the "
            "command line",
        )
        self._device = ComboBox(
            label="Device",
            choices=["auto", "cpu"],  # + the CUDA and MPS devices once torch is imported (_warm_up)
            value="auto",
            tooltip="auto picks CUDA, then MPS, then the CPU",
        )
        self._device_label = _status_label(value="looking for a GPU...")
        self._start = PushButton(text="Start")
        self._stop = PushButton(text="Stop", enabled=False)
        self._progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self._status = _status_label(value="idle")
        self._verdict = _status_label(value="")
        self._last_verdict = ""  # the verdict a refused or stopped run puts back
        self._verdict.native.setStyleSheet("font-weight: bold;")
        self.extend(
            [
                self._preset,
                _row(self._epochs, self._device, labels=True),  # one row: the panel fits 800 px
                _row(self._start, self._stop),
                self._progress,
                self._status,
                self._verdict,
            ]
        )
        self._plot = _LossPlot()
        self.native.layout().addWidget(self._plot.widget)  # right under the verdict
        self._advanced = _Section(
            "Advanced settings",
            Container(
                widgets=[
                    _row(self._genes, self._seed, labels=True),
                    _row(self._patch, self._depth, labels=True),
                    _row(self._heads, self._batch, labels=True),
                    self._lr,
                    self._device_label,
                ]
            ),
            open_=False,
        )
        self.native.layout().addWidget(self._advanced.native)
        # learning across slides (issue 13): the same core functions as enhance --model/--reference
        self._pretrained = FileEdit(
            label="Pretrained model",
            mode="r",
            filter="*.safetensors",
            nullable=True,
            tooltip="Apply this saved model (e.g. from stentrans pretrain) instead of fitting one; a "
            "pretrained correction is judged on the slide's held-out genes first and kept only if it beats "
            "the default there",
        )
        self._finetune = SpinBox(
            label="Fine-tune epochs",
            min=0,
            max=1000,
            value=0,
            tooltip="Epochs of fine-tuning the pretrained model on this slide's own pairs "
            "(0: judged as it is)",
        )
        self._references = LineEdit(
            label="Reference slides",
            value="",
            tooltip="Other slides of the same tissue (files or Space Ranger folders, separated by ';'): "
            "the default's low-rank gene loadings are fitted on them pooled with this slide; the rest "
            "stays this slide's own (default preset only; see README 'Same-tissue reference slides')",
        )
        self._across = _Section(
            "Across slides",
            Container(widgets=[self._pretrained, self._finetune, self._references]),
            open_=False,
        )
        self.native.layout().addWidget(self._across.native)
        self._preset.changed.connect(self._apply_preset)
        self._start.changed.connect(self.start)
        self._stop.changed.connect(self.stop)
        self.worker = None
        self._pending: list = []
        self._stop_flag = threading.Event()
        self.last_event = None
        # set by the Workspace: True while its Genes tab reads a slide; the first warm-up waits,
        # since importing torch beside a read slowed the read 2.4x and stalled the viewer 0.4 s
        self.busy: Callable[[], bool] | None = None
        self._warmed: set[bool] = set()
        self._warming: list[tuple[str, Future, Callable]] = []  # an import, what to do once it ends
        self._warm_timer = QTimer(self.native)  # polls the imports running in the thread
        self._warm_timer.timeout.connect(self._poll_warm_up)
        # once napari has built the whole panel: an import started in the constructor shares the
        # GIL with the rest of the panel's construction, which napari runs as one blocking call
        self._warm_start = QTimer(self.native)
        self._warm_start.setSingleShot(True)
        self._warm_start.timeout.connect(self._warm_up)
        self._warm_start.start(0)

    def _warm_up(self, learned: bool = False) -> None:
        """Import matplotlib, then torch, in a thread (:func:`.actions.warm_up`); then draw the
        loss plot and offer torch's CUDA and MPS devices.

        Once per panel, and once more (torch's compiler stack) for the first learned preset; a
        run started before an import ends waits for it in its own worker (Python's import lock),
        never on the viewer. A plain thread, polled by a timer the panel owns: a napari worker
        still running when the viewer closes emits into deleted Qt objects and aborts the process.
        """
        if learned in self._warmed:
            return
        if not learned and self.busy is not None and self.busy():
            self._warm_start.start(250)  # again once the read is done
            return
        self._warmed.add(learned)
        if not learned:
            plot = _WARM_UP.submit(_import_plot_modules)
            self._warming.append(("matplotlib", plot, lambda _: self._build_plot()))
        self._warming.append(("torch", _WARM_UP.submit(actions.warm_up, learned), self._set_devices))
        self._warm_timer.start(50)

    def _poll_warm_up(self) -> None:
        while self._warming and self._warming[0][1].done():
            what, future, then = self._warming.pop(0)
            if future.exception() is not None:
                self._device_label.value = f"{what} not usable: {readable_error(future.exception())}"
            else:
                then(future.result())
        if not self._warming:
            self._warm_timer.stop()

    def _build_plot(self) -> None:
        self._plot.build(_theme_colours(self._viewer))
        # a theme chosen later (napari's preferences) restyles the plot; not after the panel closed
        self._viewer.events.theme.connect(self._on_theme)
        self.native.destroyed.connect(lambda *_: self._viewer.events.theme.disconnect(self._on_theme))

    def _on_theme(self, _event=None) -> None:
        self._plot.style(_theme_colours(self._viewer))

    def _set_devices(self, found: tuple[list[str], str]) -> None:
        devices, hint = found
        value = self._device.value
        self._device.choices = ["auto", "cpu", *devices]
        self._device.value = value
        if self.worker is None:  # a run in progress names its own device there
            self._device_label.value = hint

    @property
    def warmed_up(self) -> bool:
        """The panel's imports (:meth:`_warm_up`) started and none is left running or unused."""
        return False in self._warmed and not self._warming

    def _apply_preset(self, name: str) -> None:
        from ..core.config import preset

        if name != "default":
            self._warm_up(learned=True)

        kind = actions.slide(self._viewer, self.slide_id).frame.lattice.kind if self.slide_id else "square"
        config = preset(name, kind).flat()
        self._epochs.value, self._patch.value = config["epochs"], config["patch_size"]
        self._depth.value, self._heads.value = config["depth"], config["heads"]
        self._lr.value, self._batch.value = config["lr"], config["batch_size"]

    def config(self):
        """The fit's configuration of the current parameters (the device is a runtime choice)."""
        from ..core.config import preset

        kind = actions.slide(self._viewer, self.slide_id).frame.lattice.kind
        return preset(
            self._preset.value,
            kind,
            epochs=self._epochs.value,
            n_train_genes=self._genes.value,
            patch_size=self._patch.value,
            depth=self._depth.value,
            heads=self._heads.value,
            lr=self._lr.value,
            batch_size=self._batch.value,
            seed=self._seed.value,
            **(
                {"embed_dim": None}
                if self._preset.value == "published"
                else {"embed_dim": 4 * self._patch.value**2}
            ),
        )

    def start(self, _value=None):
        """Copy the inputs on the main thread and train in a thread worker."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            return self.worker
        try:
            job = actions.prepare_job(
                self._viewer,
                self.config(),
                self.slide_id,
                device=self._device.value,
                **self.across_slides(),
            )
        except (LookupError, ValueError, RuntimeError) as exc:
            _notify_error(exc)
            return None
        self._stop_flag = threading.Event()
        self._plot.clear()
        self._status.value = f"starting the run on {job.adata.n_obs:,} spots..."
        self._last_verdict, self._verdict.value = self._verdict.value, ""
        self._progress.value = 0
        self._progress.native.setFormat("%p%")
        self._status.native.setMinimumHeight(0)  # see _never_shrink
        worker = create_worker(
            actions.run_job, job, self._stop_flag, _start_thread=False, _ignore_errors=True
        )
        worker.yielded.connect(self._on_event)
        worker.returned.connect(
            lambda result, sid=job.slide_id, genes=job.genes, model=job.model_path: self._on_result(
                sid, genes, result, model
            )
        )
        worker.errored.connect(self._on_run_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._start.enabled, self._stop.enabled = False, True
        worker.start()
        return worker

    def across_slides(self) -> dict:
        """The "Across slides" choices: a model file (+ fine-tune epochs) and reference slides."""
        model = self._pretrained.value
        model = None if model is None or str(model) in ("", ".") else Path(model)
        references = tuple(Path(p.strip()) for p in self._references.value.split(";") if p.strip())
        return {"model_path": model, "finetune": int(self._finetune.value), "references": references}

    def stop(self, _value=None) -> None:
        """Ask the run to stop; it ends within one batch and changes nothing."""
        self._stop_flag.set()
        self._status.value = "stopping..."

    def _on_event(self, event) -> None:
        self.last_event = event
        if event.kind == "stage":  # the work before training: its name, and its count in the bar
            if self._status.value != event.message:
                self._status.value = event.message
                _never_shrink(self._status)  # until the next Start
                self._progress.native.setFormat("%v/%m")
            self._progress.max = max(1, event.n_steps)
            self._progress.value = min(self._progress.max, event.step)
        elif event.kind == "prepared":
            self._progress.native.setFormat("%p%")
            self._progress.max = max(1, event.n_steps * event.n_epochs)
            self._device_label.value = f"training on: {event.device}"
            self._plot.add(0, None, event.val_loss)
            if event.n_epochs == 0:
                self._plot.say("0 epochs: nothing is trained (the classical estimate)")
            self._status.value = event.message
        elif event.kind == "step":
            self._progress.value = min(self._progress.max, (event.epoch - 1) * event.n_steps + event.step)
            eta = "" if event.eta is None else f", ETA {event.eta:.0f} s"
            self._status.value = f"epoch {event.epoch}/{event.n_epochs}, loss {event.train_loss:.4f}{eta}"
        elif event.kind == "epoch":
            self._plot.add(event.epoch, event.train_loss, event.val_loss)
        elif event.kind in ("finished", "stopped"):
            self._progress.native.setFormat("%p%")
            if event.kind == "finished":  # early stopping ends before the last planned step
                self._progress.value = self._progress.max
            from ..core.estimators.base import end_text

            self._status.value = end_text(event)

    def _on_run_error(self, exc: BaseException) -> None:
        """A run that failed or was refused: say so where the progress was; nothing changed."""
        self._progress.native.setFormat("%p%")
        self._progress.value = 0
        self._status.value = f"not run: {readable_error(exc)}. Nothing changed."
        self._verdict.value = self._last_verdict
        _notify_error(exc)

    def _on_result(self, slide_id: str, genes: list[str], result, model_path: Path | None = None) -> None:
        if result is None:
            self._status.value = "stopped: nothing changed"
            self._verdict.value = self._last_verdict
            return
        model, enhanced, layer_tuples = result
        if slide_id not in actions.slides(self._viewer):
            self._status.value = "the slide was closed during training: result discarded"
            return
        run = actions.record_result(self._viewer, slide_id, model, enhanced)
        self._pending = [(t, run) for t in layer_tuples]
        actions.outline_lost_regions(self._viewer, slide_id)
        patterns = enhanced.uns["stentrans"].get("patterns", {})
        warning = patterns.get("warning")
        if warning:
            note = f". Note: {warning}"
        elif "not_judged" in patterns:  # the genes on screen are too few to say
            note = f". Shared patterns not judged: {patterns['not_judged']}; Export checks every gene"
        else:
            note = ""
        self._status.value = (
            f"run {run}: enhanced {enhanced.n_obs:,} sites x {enhanced.n_vars} genes on screen as "
            f"'GENE x2' layers (the Export panel writes every gene)" + note
        )
        # the verdict has its own line: later status messages never replace it
        source = f" Model file: {Path(model_path).name}." if model_path is not None else ""
        name = actions.slide_label(self._viewer, slide_id)
        self._verdict.value = f"Run {run} on {name}, {actions.run_verdict(model, enhanced)}{source}"
        self._verdict.tooltip = actions.run_details(enhanced)
        self._add_next_layer()

    def _add_next_layer(self) -> None:
        """Add one pending layer per event-loop turn: the viewer stays responsive meanwhile."""
        from qtpy.QtCore import QTimer

        if not self._pending:
            return
        layer_tuple, run = self._pending.pop(0)
        actions.add_enhanced_layer(self._viewer, layer_tuple, run)
        if self._pending:
            QTimer.singleShot(LAYER_TURN_MS, self._add_next_layer)

    @property
    def idle(self) -> bool:
        """No run in progress and no result layers waiting to be added."""
        return self.worker is None and not self._pending

    def _on_finished(self) -> None:
        self.worker = None
        self._start.enabled, self._stop.enabled = True, False


HINT_NO_MODEL = "train or load a model, then export"


class ExportWidget(_SlideWidget):
    """The Predict side: save/load a model, re-impute lost regions, export all or chosen genes."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._model_path = FileEdit(label="Model file", mode="w", filter="*.safetensors")
        self._save = PushButton(text="Save model")
        self._load = PushButton(text="Load model")
        self._refresh = PushButton(
            text="Re-impute lost regions",
            tooltip="Recompute the x2 layers with the lost regions painted now (no retraining)",
        )
        self._kinds = PushButton(
            text="Show site kinds",
            tooltip="A layer of the enhanced sites: measured, new (between spots), imputed (lost or holes)",
        )
        self._kinds_legend = _status_label(value="")
        self._grid = PushButton(
            text="Side by side: measured | x2",
            tooltip="Grid of the selected (or last visible) gene: measured, enhanced (and truth); "
            "again to leave",
        )
        self._which = ComboBox(
            label="Genes",
            choices=list(actions.EXPORT_CHOICES.items()),
            value="all",
            tooltip="all detected genes: every gene detected in >= 10% of spots (like stentrans enhance); "
            "genes on screen: those with a layer; chosen genes: the names below",
        )
        self._chosen = LineEdit(label="Chosen", tooltip="Gene names separated by commas")
        self._export_path = FileEdit(label="Export to", mode="w", filter="*.h5ad")
        self._export = PushButton(text="Export enhanced .h5ad")
        self._stop = PushButton(text="Stop", enabled=False)
        self._status = _status_label(value=HINT_NO_MODEL)
        self._idle_hint = True  # the status shows the idle hint, not the message of a last action
        self.extend(
            [
                self._model_path,
                _row(self._save, self._load),
                _row(self._refresh, self._kinds),
                self._kinds_legend,
                self._grid,
                self._which,
                self._chosen,
                self._export_path,
                _row(self._export, self._stop),
                self._status,
            ]
        )
        self._save.changed.connect(lambda _: self.save_model(self._model_path.value))
        self._load.changed.connect(lambda _: self.load_model(self._model_path.value))
        self._refresh.changed.connect(self.refresh)
        self._kinds.changed.connect(self.show_site_kinds)
        self._grid.changed.connect(self.toggle_side_by_side)
        self._export.changed.connect(lambda _: self.export(self._export_path.value))
        self._stop.changed.connect(lambda _: self._stop_flag.set())
        self._stop_flag = threading.Event()
        self.worker = None
        # a run adds layers: the hint then names the model that export would use
        viewer.layers.events.inserted.connect(self._describe_model)
        self._slide.changed.connect(self._describe_model)

    def _describe_model(self, _event=None) -> None:
        """The idle status: what export would write, or what to do first."""
        if self.worker is not None or not self._idle_hint:
            return  # the message of the user's last action stays
        try:
            info = actions.slide(self._viewer, self.slide_id)
        except LookupError:
            return
        if info.model is None:
            self._status.value = HINT_NO_MODEL
            return
        preset = info.model.describe().get("preset", getattr(info.model, "name", "model"))
        label = actions.PRESET_LABELS.get(preset, preset)
        self._status.value = f"ready: run {info.runs} ({label}) can be exported or saved"

    def _say(self, text: str) -> None:
        """Status of the user's last action: it stays until the next action (no idle hint over it)."""
        self._idle_hint = False
        self._status.value = text

    def refresh(self, _value=None) -> None:
        try:
            layers = actions.refresh_imputation(self._viewer, self.slide_id)
        except (LookupError, RuntimeError) as exc:
            _notify_error(exc)
            return
        self._say(f"re-imputed {len(layers)} layer(s) with the current lost regions")

    def toggle_side_by_side(self, _value=None) -> list[str]:
        """Grid of one gene (the active layer's, else the last visible gene) or back to one view."""
        if self._viewer.grid.enabled:
            actions.side_by_side(self._viewer, False)
            return []
        active = self._viewer.layers.selection.active
        meta = active.metadata.get("stentrans", {}) if active is not None else {}
        gene = meta.get("gene")
        if gene is None:
            visible = [
                layer.metadata["stentrans"]["gene"]
                for layer in self._viewer.layers
                if layer.visible and layer.metadata.get("stentrans", {}).get("role") == "gene"
            ]
            gene = visible[-1] if visible else None
        if gene is None:
            _notify_error(LookupError("select a gene layer to show side by side"))
            return []
        return actions.side_by_side(self._viewer, True, gene)

    def show_site_kinds(self, _value=None):
        try:
            layer = actions.site_kind_layer(self._viewer, self.slide_id)
        except (LookupError, RuntimeError) as exc:
            _notify_error(exc)
            return None
        self._kinds_legend.value = actions.legend_html(layer)
        return layer

    def save_model(self, path) -> None:
        from ..core.checkpoint import save_model
        from ..core.errors import StentransError

        info = actions.slide(self._viewer, self.slide_id)
        if info.model is None:
            _notify_error(RuntimeError("no trained model to save"))
            return
        try:
            save_model(info.model, path)
        except (StentransError, OSError, ValueError) as exc:  # e.g. a model fitted with references
            self._say(f"model not saved: {readable_error(exc)}")
            _notify_error(exc)
            return
        self._say(f"saved {path}")

    def load_model(self, path) -> None:
        from ..core.checkpoint import load_model
        from ..core.errors import StentransError

        try:
            model = load_model(path)
            info = actions.slide(self._viewer, self.slide_id)
            if model.lattice_kind != info.frame.lattice.kind:
                raise ValueError(
                    f"the model is for {model.lattice_kind} lattices, the slide is {info.frame.lattice.kind}"
                )
        except (StentransError, ValueError, LookupError) as exc:
            self._say(f"model not loaded: {readable_error(exc)}")
            _notify_error(exc)
            return
        info.model = model
        actions.refresh_imputation(self._viewer, info.slide_id)
        info.runs += 1
        provenance = info.enhanced.uns["stentrans"] if info.enhanced is not None else {}
        choice = provenance.get("classical_choice")
        self._say(f"loaded {path}" + (f"; classical estimate {choice}" if choice else ""))

    def export(self, path):
        """Write the enhanced slide (all, on-screen or chosen genes) in a worker; the status says which."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            return self.worker
        try:
            job = actions.prepare_export(
                self._viewer, path, self._which.value, self._chosen.value.split(","), self.slide_id
            )
        except (LookupError, ValueError, RuntimeError, OSError) as exc:  # OSError: a WriteError
            # in the panel too: a user who missed the toast read the old "ready" status
            self._say(f"not exported: {readable_error(exc)}")
            _notify_error(exc)
            return None
        self._stop_flag = threading.Event()
        self._say(f"exporting {job.what}...")
        from superqt.utils import ensure_main_thread

        # the write of every gene takes seconds to tens of seconds: its progress in the status
        worker = create_worker(
            actions.run_export,
            job,
            self._stop_flag,
            ensure_main_thread(self._on_export_progress),
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.returned.connect(self._on_exported)
        worker.errored.connect(self._on_export_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._export.enabled, self._stop.enabled = False, True
        worker.start()
        return worker

    def _on_export_progress(self, text: str) -> None:
        if self.worker is not None:  # a late line never replaces the summary
            self._say(text)

    def _on_exported(self, summary: str) -> None:
        self._say(summary)

    def _on_export_error(self, exc: BaseException) -> None:
        from ..core.errors import TrainingStopped

        if isinstance(exc, TrainingStopped):
            self._say("export stopped: nothing written")
            return
        self._say(f"export failed: {readable_error(exc)}")
        _notify_error(exc)

    def _on_finished(self) -> None:
        self.worker = None
        self._export.enabled, self._stop.enabled = True, False


# table row -> report key (see core.evaluate and core.fidelity)
QUALITY_COLUMNS = {  # the verdict's three metrics first
    "median r": "median_pcc",
    "gene-specific r": "gene_specific_r",
    "co-expression r": "coexpression_r",
    "co-expr. r signal": "coexpression_r_signal",
    "median r (norm)": "median_pcc_norm",
    # each under it, the measured slide's without its Poisson noise: the pattern verdict's bar, in
    # rows of their own (a user read the truth's noisy 22.8 where the verdict said "against
    # 19.5"; a column of its own did not fit a docked panel beside four methods)
    "PC1 share": "pc1_share",
    "PC1 share signal": "signal_pc1_share",
    "effective rank": "effective_rank",
    "eff. rank signal": "signal_effective_rank",
    "count level": "count_level",  # predicted / measured counts per gene (1 = the measured level)
    "ARI": "ari",  # with annotations chosen: the fixed clustering against them
}
#: each metric's row header tooltip, in the words of the README's metric list
QUALITY_TIPS = dict(
    zip(
        QUALITY_COLUMNS,
        (
            "Median over genes of the Pearson r between predicted and measured counts at the held-out spots",
            "Per-gene r after removing the top 3 principal axes of the seen spots: each gene's own "
            "pattern (100 most spatially variable genes, Moran's I)",
            "r between the gene-gene correlations of the prediction and of the measured counts "
            "(same 100 genes): 1 keeps which genes go together",
            "Co-expression r against the measured counts' signal correlations (count splitting "
            "removes their Poisson noise)",
            "Median per-gene r on log-normalised values (depth removed)",
            "Share of the variance in the first principal component (same 100 genes); far above "
            "the measured slide's: the genes follow one shared map",
            "The measured slide's PC1 share without its Poisson noise (count splitting)",
            "exp(entropy) of the principal components' variance shares; far below the measured "
            "slide's without its Poisson noise (the row below): the genes follow a few shared patterns",
            "The measured slide's effective rank without its Poisson noise (count splitting): a "
            "method whose effective rank is under half of it follows fewer patterns than the slide",
            "Predicted over measured counts per gene at the held-out spots (median; 1 = the measured level)",
            "Adjusted Rand index of the fixed clustering (PCA + k-means) against the chosen annotation",
        ),
        strict=True,
    )
)


def _report_line(report: dict) -> str:
    """The Quality check's status line for a report: scored spots and genes, and the measured
    slide's own PC1 share, effective rank (also without its Poisson noise) and ARI, which the
    methods' columns are read against."""
    from ..core.patterns import with_signal

    truth = report["truth"]
    ari = truth.get("ari")
    signal = actions.without_noise(truth, "effective_rank")
    rank = with_signal(truth["effective_rank"], signal, ".1f")
    return (
        f"{report['n_heldout_spots']:,} held-out spots, {report['n_genes']} genes. Measured slide at "
        f"those spots: PC1 share {truth['pc1_share']:.2f}, effective rank {rank} "
        f"(over the {len(report['spatial_genes'])} most spatially variable genes)"
        + (
            f", ARI {ari:.3f} against the annotation ({truth['n_labelled']:,} labelled spots)"
            if ari is not None and np.isfinite(ari)
            else ""
        )
        + (
            "; a method whose effective rank is under half of the slide's without noise follows "
            "fewer patterns than the slide (its genes are not for co-expression)"
            if np.isfinite(signal)
            else "; a method whose effective rank is far below the slide's follows fewer patterns than the slide"
        )
    )


NO_ANNOTATION = "(none)"


class QualityWidget(_SlideWidget):
    """The honest held-out protocol on the current slide: stEnTrans against interpolation.

    Progress after each method, Stop (after the running method), a plain verdict, the fidelity
    metrics (gene-specific r, co-expression r, PC1 share) and a CSV export of the table.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._epochs = SpinBox(
            label="Epochs", min=1, max=200, value=5, tooltip="Epochs of the learned presets (quick check)"
        )
        self._genes = SpinBox(
            label="Genes", min=10, max=5000, value=200, tooltip="Most variable genes scored"
        )
        self._seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=0)
        self._learned = CheckBox(
            text="Learned presets too (minutes each)",
            value=False,
            tooltip="Also score the transformer and the published recipe",
        )
        self._labels = ComboBox(
            label="ARI vs",
            choices=self._label_choices,
            tooltip="A categorical annotation of the slide's spots (layers, regions): each method's "
            "prediction is clustered (PCA + k-means, fixed) and scored against it by the adjusted Rand "
            "index, beside the same clustering of the measured counts",
        )
        self._run = PushButton(text="Run held-out check")
        self._stop = PushButton(text="Stop", enabled=False)
        self._progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self._status = _status_label(value="")  # the equivalent command (_say_command)
        self._verdict = _status_label(value="")
        self._verdict.native.setStyleSheet("font-weight: bold;")
        self._table = Table(value={"data": [], "index": [], "columns": []})
        self._table.native.setMinimumHeight(140)
        from qtpy.QtWidgets import QStyledItemDelegate

        # cells as written (three decimals): magicgui's delegate shows 0.085 as 8.500e-02
        self._table.native.setItemDelegate(QStyledItemDelegate(self._table.native))
        self._csv_path = FileEdit(label="CSV", mode="w", filter="*.csv")
        self._csv = PushButton(text="Save CSV", tooltip="Save the table above as a CSV file")
        self._gene = ComboBox(
            label="Residual of", choices=self._shown, tooltip="Enhanced minus measured counts"
        )
        self._residual = PushButton(
            text="Add layer", tooltip="Add a layer of the enhanced minus the measured counts of this gene"
        )
        self.extend(
            [
                _row(self._epochs, self._genes, labels=True),
                self._seed,
                self._learned,
                self._labels,
                _row(self._run, self._stop),
                self._progress,
                self._status,
                self._verdict,
            ]
        )
        # the table, and the rows under it, span the panel's whole width: a magicgui form keeps
        # an empty label column beside each widget, which cost the table one of its ~5 columns
        layout = self.native.layout()
        layout.addWidget(self._table.native)
        for row in (
            _row(self._csv_path, self._csv, labels=True),
            _row(self._gene, self._residual, labels=True),
        ):
            layout.addWidget(row.native)
        self._run.changed.connect(self.run)
        self._stop.changed.connect(self.stop)
        self._csv.changed.connect(lambda _: self.save_csv(self._csv_path.value))
        self._residual.changed.connect(self.add_residual)
        viewer.layers.events.inserted.connect(lambda _e: self._gene.reset_choices())
        viewer.layers.events.inserted.connect(lambda _e: self._labels.reset_choices())
        self._slide.changed.connect(lambda _: self._labels.reset_choices())
        self._slide.changed.connect(lambda _: self._gene.reset_choices())  # "Residual of": its genes
        self.worker = None
        self.report = None
        self._report_slide: str | None = None  # the slide the table's report is of
        self._running_slide: str | None = None
        self._last_verdict = ""
        self._stop_flag = threading.Event()
        for widget in (self._epochs, self._genes, self._seed, self._learned, self._labels, self._slide):
            widget.changed.connect(self._say_command)
        self._say_command()

    def command(self) -> str:
        """The `stentrans evaluate` command that scores what a run here scores, with these settings.

        A bundled sample has no file: the command first writes it with ``sample_data/generate.py``
        (same generator and seed as File > Open Sample), run in the project's folder.
        """
        labels = self.labels()
        path, sample = self._source_path()
        return (
            (f"python sample_data/generate.py && stentrans evaluate sample_data/{sample}.h5ad" if sample
             else f"stentrans evaluate {path}")
            + f" --methods {','.join(self.methods())}"
            # epochs only matter to the learned presets (a user asked what --epochs did there)
            + (f" --epochs {self._epochs.value}" if self._learned.value else "")
            + f" --genes {self._genes.value} --seed {self._seed.value}"
            + (f" --labels {labels}" if labels else "")
        )  # fmt: skip

    def _source_path(self) -> tuple[str, str | None]:
        """The slide's file as the shell takes it (``PATH`` when it has none) and the bundled
        sample it is, if it is one (its ``uns["stentrans_sample"]``)."""
        import shlex

        from ..core.io import source_of
        from ..synthetic import SAMPLES

        try:
            adata = actions.slide(self._viewer, self.slide_id).adata
        except LookupError:
            return "PATH", None
        path = source_of(adata)
        if path and Path(path).exists():
            return shlex.quote(path), None
        sample = adata.uns.get("stentrans_sample")
        return "PATH", (str(sample) if sample in SAMPLES else None)

    def _label_choices(self, _widget=None) -> list[str]:
        try:
            return [NO_ANNOTATION, *actions.annotation_columns(self._viewer, self.slide_id)]
        except LookupError:
            return [NO_ANNOTATION]

    def labels(self) -> str | None:
        """The annotation column the ARI is scored against, or None."""
        value = self._labels.value
        return None if value in (None, NO_ANNOTATION) else str(value)

    def _say_command(self, _value=None) -> None:
        if self.worker is None:  # a run's progress holds the lines meanwhile
            self._status.value = self._status_text()
            if self.report is not None:
                self._verdict.value = self._verdict_text()
                # the bar is the table's run: full on its slide, empty on another one
                ours = self._report_slide == self.slide_id
                self._progress.value = self._progress.max if ours else 0

    def _verdict_text(self) -> str:
        """The table's verdict; with another slide chosen, prefixed by the table's slide (a user
        who opened a second slide read the first one's "On this slide ..." as the second's)."""
        verdict = actions.quality_verdict(self.report)
        if self._report_slide == self.slide_id:
            return verdict
        return f"The table's slide ({self._slide_name(self._report_slide)}): {verdict}"

    def _status_text(self) -> str:
        """The status line: the equivalent command, or the report's summary while its slide is chosen.

        With a report of another slide in the table, the line says whose it is (a new user opened a
        second slide and read the first one's table as the new one's).
        """
        if self.report is None:
            return f"same engine and settings as: {self.command()}"
        if self._report_slide == self.slide_id:
            return _report_line(self.report)
        return (
            f"the table is of {self._slide_name(self._report_slide)}; for this slide, "
            f"same engine and settings as: {self.command()}"
        )

    def _slide_name(self, slide_id: str | None) -> str:
        try:
            return actions.slide(self._viewer, slide_id).name
        except LookupError:
            return "a slide no longer open"

    def _shown(self, _widget=None) -> list[str]:
        try:
            return actions.shown_genes(self._viewer, self.slide_id)
        except LookupError:
            return []

    def methods(self) -> tuple[str, ...]:
        """The methods a run scores (user-runnable enhancement and the interpolations)."""
        return actions.QUICK_METHODS + (actions.LEARNED_METHODS if self._learned.value else ())

    def run(self, _value=None, methods: tuple[str, ...] | None = None):
        from napari.qt.threading import create_worker

        if self.worker is not None:
            return self.worker
        try:
            info = actions.slide(self._viewer, self.slide_id)
        except LookupError as exc:
            _notify_error(exc)
            return None
        methods = tuple(methods or self.methods())
        self._stop_flag = threading.Event()
        self._progress.max, self._progress.value = len(methods), 0
        self._status.value = f"running the held-out protocol: {len(methods)} methods..."
        self._running_slide = self.slide_id
        self._last_verdict, self._verdict.value = self._verdict.value, ""  # back if stopped
        worker = create_worker(
            actions.quality_events,
            info.adata.copy(),
            self._epochs.value,
            self._genes.value,
            self._seed.value,
            methods,
            self._stop_flag,
            self.labels(),
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_report)
        worker.errored.connect(_notify_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._run.enabled, self._stop.enabled = False, True
        worker.start()
        return worker

    def stop(self, _value=None) -> None:
        """Stop after the running method; the table keeps the previous report."""
        self._stop_flag.set()
        self._status.value = "stopping after the running method..."

    def _on_progress(self, progress: tuple) -> None:
        done, total, name = progress
        self._progress.value = done
        if name is not None:
            self._status.value = f"{done}/{total} methods scored (last: {actions.method_label(name)})"

    def _on_report(self, report: dict | None) -> None:
        if report is None:
            self._status.value = "quality check stopped: nothing changed"
            # the table's report, still shown (named by its slide if another one is chosen now)
            self._verdict.value = self._verdict_text() if self.report is not None else self._last_verdict
            return
        self.show_report(report)

    def _on_finished(self) -> None:
        self.worker = None
        self._run.enabled, self._stop.enabled = True, False

    def show_report(self, report: dict) -> None:
        self.report = report
        self._report_slide = self._running_slide
        table = actions.quality_table(report, QUALITY_COLUMNS)
        # one column per method (its `--methods` name; the full label as its tooltip) and one of
        # the measured slide, one row per metric: a docked panel is ~400 px wide, which showed
        # about 3 of 9 metrics side by side but fits 4-6 method columns; three decimals as text
        ids = table["method id"]
        # 13.2 as the status line says it: a column stays narrow
        digits = {"effective rank": 1, "eff. rank signal": 1}
        cells = [
            ["" if v is None else f"{v:.{digits.get(metric, 3)}f}" for v in table[metric]]
            for metric in QUALITY_COLUMNS
        ]
        self._table.value = {"data": cells, "index": list(QUALITY_COLUMNS), "columns": ids}
        native = self._table.native
        for column, label in enumerate(table["method"]):
            native.horizontalHeaderItem(column).setToolTip(str(label))
        for row, tip in enumerate(QUALITY_TIPS.values()):
            native.verticalHeaderItem(row).setToolTip(tip)
        # columns as wide as their text and a little more: Qt's padding made five columns too
        # wide for the ~370 px the docked panel leaves the table
        text = native.horizontalHeader().fontMetrics().horizontalAdvance
        widths = [
            max(text(t) for t in [name, *(row[column] for row in cells)]) + 10
            for column, name in enumerate(ids)
        ]
        for column, width in enumerate(widths):
            native.setColumnWidth(column, width)
        header = max(text(t) for t in QUALITY_COLUMNS) + 12
        native.verticalHeader().setFixedWidth(header)
        native.verticalHeader().setDefaultSectionSize(native.fontMetrics().height() + 8)
        for row, values in enumerate(cells):  # e.g. the ARI without an annotation chosen
            native.setRowHidden(row, not any(values))
        # every metric in view (the tab scrolls as a whole): no vertical scroll bar of its own, also
        # when the learned presets' columns need the horizontal one, which takes height
        rows = sum(native.rowHeight(i) for i in range(native.rowCount()) if not native.isRowHidden(i))
        wide = header + sum(widths) + 2 * native.frameWidth() > native.width()
        below = native.horizontalScrollBar().sizeHint().height() if wide else 0
        native.setMinimumHeight(native.horizontalHeader().height() + rows + below + 2 * native.frameWidth())
        # the summary and the verdict, or whose they are if another slide is chosen meanwhile
        self._verdict.value = self._verdict_text()
        self._status.value = self._status_text()

    def save_csv(self, path):
        if self.report is None:
            _notify_error(RuntimeError("run the quality check first"))
            return None
        if not path or str(path) in (".", ""):
            _notify_error(ValueError("choose a .csv file to save the table to"))
            return None
        written = actions.write_quality_csv(self.report, path, QUALITY_COLUMNS)
        self._status.value = f"saved the table to {written.name}"
        return written

    def add_residual(self, _value=None):
        try:
            return actions.residual_layer(self._viewer, self._gene.value, self.slide_id)
        except (LookupError, RuntimeError, KeyError) as exc:
            _notify_error(exc)
            return None


class WorkspaceWidget(Container):
    """One dock with every panel as a tab: Genes, Lost regions, Train, Export, Quality.

    Its minimum size fits a 1280x800 screen (the separate docks stacked grew the window past the
    screen and squeezed the loss plot to a strip).
    """

    TABS = ("Genes", "Lost regions", "Train", "Export", "Quality")

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from qtpy.QtCore import QSize
        from qtpy.QtWidgets import QTabWidget

        class _Tabs(QTabWidget):
            def sizeHint(self) -> QSize:  # as narrow as it can be: the width goes to the image
                return QSize(self.minimumSizeHint().width(), super().sizeHint().height())

        super().__init__(labels=False)
        self.genes = GenesWidget(viewer)
        self.lost = LostRegionsWidget(viewer)
        self.train = TrainWidget(viewer)
        self.export = ExportWidget(viewer)
        self.quality = QualityWidget(viewer)
        self.train.busy = lambda: not self.genes.idle  # a read first, then the imports
        self.tabs = _Tabs()
        for title, widget in zip(
            self.TABS, (self.genes, self.lost, self.train, self.export, self.quality), strict=True
        ):
            # every tab scrolls rather than squeezing its lines into each other or cutting them:
            # the Quality tab's verdict and table need more than a 800 px screen leaves, and in
            # a smaller window (napari's first one, about 1090x630) the Train tab's verdict and
            # loss plot were cut
            self.tabs.addTab(_scrolling(widget.native), title)
        self.tabs.setCurrentIndex(2)
        self.native.layout().addWidget(self.tabs)
