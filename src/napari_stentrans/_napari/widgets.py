"""The dock widgets: "Genes", "Lost regions", "Train & enhance", "Quality check".

magicgui containers wired to the plain functions of :mod:`.actions`; qtpy only for the loss-plot
canvas (magicgui has no plot widget). Long work runs in napari thread workers that only yield
core events and return results; layers change on the main thread only.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
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


def _status_label(value: str = "") -> Label:
    """A label that wraps long text instead of widening the dock (which squeezed the canvas to 0 px)."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=value)
    label.native.setWordWrap(True)
    # a wrapped label still asks for the width of its longest line; ignore it horizontally
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def _notify_error(exc: Exception) -> None:
    from napari.utils.notifications import show_error

    show_error(f"stEnTrans: {exc}")


class _SlideWidget(Container):
    """A container with a slide chooser that follows the viewer's layers."""

    def __init__(self, viewer: napari.viewer.Viewer, **kwargs) -> None:
        self._viewer = viewer
        self._slide = ComboBox(
            label="Slide",
            choices=self._slide_choices,
            tooltip="The slide this widget works on (opened slides and samples)",
        )
        super().__init__(**kwargs)
        self.append(self._slide)
        viewer.layers.events.inserted.connect(self._refresh_slides)
        viewer.layers.events.removed.connect(self._refresh_slides)

    def _slide_choices(self, _widget=None) -> list[tuple[str, str]]:
        return [
            (f"{info.name} ({sid.split('#')[1]})", sid) for sid, info in actions.slides(self._viewer).items()
        ]

    def _refresh_slides(self, _event=None) -> None:
        self._slide.reset_choices()

    @property
    def slide_id(self) -> str | None:
        return self._slide.value


class GenesWidget(_SlideWidget):
    """Search all genes of a slide and add the selected ones as image layers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._query = LineEdit(label="Search", tooltip="Part of a gene name (case-insensitive)")
        self._genes = Select(
            label="Genes", choices=self._gene_choices, tooltip="Hold Ctrl/Shift to pick several"
        )
        self._add = PushButton(text="Add selected as layers")
        self._status = _status_label(value="")
        self.extend([self._query, self._genes, self._add, self._status])
        self._query.changed.connect(lambda _: self._genes.reset_choices())
        self._slide.changed.connect(lambda _: self._genes.reset_choices())
        self._add.changed.connect(self.add_selected)

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
    """A Labels layer aligned with the slide to paint lost regions; hole proposal; counts."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._create = PushButton(
            text="Paint lost regions",
            tooltip="Create (or select) the slide's lost-regions layer and start painting",
        )
        self._holes = PushButton(
            text="Propose in-tissue holes",
            tooltip="Mark unmeasured sites enclosed by tissue as lost (undo with Ctrl+Z)",
        )
        self._summary = _status_label(value="no lost regions")
        self.extend([self._create, self._holes, self._summary])
        self._connected: set[int] = set()
        self._create.changed.connect(self.create_layer)
        self._holes.changed.connect(self.propose)

    def create_layer(self, _value=None):
        layer = actions.lost_layer(self._viewer, self.slide_id)
        if id(layer) not in self._connected:
            layer.events.paint.connect(self.update_summary)
            layer.events.data.connect(self.update_summary)
            self._connected.add(id(layer))
        self._viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.update_summary()
        return layer

    def propose(self, _value=None) -> int:
        self.create_layer()
        n = actions.propose_holes(self._viewer, self.slide_id)
        self.update_summary()
        return n

    def update_summary(self, _event=None) -> dict:
        summary = actions.lost_summary(self._viewer, self.slide_id)
        self._summary.value = (
            f"lost: {summary['measured']} measured spot(s), "
            f"{summary['empty_in_tissue']} empty in-tissue site(s)"
        )
        return summary


class _LossPlot:
    """Train/validation loss per epoch (matplotlib canvas; magicgui has no plot widget)."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.0), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(111)
        self.clear()

    def clear(self) -> None:
        self.epochs, self.train, self.val = [], [], []
        self._draw()

    def add(self, epoch: int, train: float | None, val: float | None) -> None:
        self.epochs.append(epoch)
        self.train.append(np.nan if train is None else train)
        self.val.append(np.nan if val is None else val)
        self._draw()

    def _draw(self) -> None:
        ax = self.axes
        ax.clear()
        if self.epochs:
            ax.plot(self.epochs, self.train, "o-", ms=3, label="train")
            ax.plot(self.epochs, self.val, "s-", ms=3, label="validation")
            ax.legend(fontsize=7)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        self.canvas.draw_idle()


def _cuda_devices() -> list[str]:
    try:
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # torch without CUDA support
        return []


class TrainWidget(_SlideWidget):
    """Train on the slide in the background, stop, enhance, save/load models, export."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        from ..core.config import PRESETS, preset

        defaults = preset("default", "square").flat()
        self._preset = ComboBox(
            label="Preset",
            choices=list(PRESETS),
            value="default",
            tooltip="default: low-rank reconstruction + linear or kernel smoothing chosen on the slide, "
            "the best method on the honest benchmark (no training, seconds); transformer: a ViT correction learned on top; "
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
            label="Training genes",
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
            label="Seed", min=0, max=2**31 - 1, value=0, tooltip="Same seed, same result on the CPU"
        )
        self._device = ComboBox(
            label="Device",
            choices=["auto", "cpu", *_cuda_devices(), "mps"],
            value="auto",
            tooltip="auto picks CUDA, then MPS, then the CPU",
        )
        self._device_label = _status_label(value=self._device_hint())
        self._start = PushButton(text="Start")
        self._stop = PushButton(text="Stop", enabled=False)
        self._progress = ProgressBar(label="Progress", min=0, max=1, value=0)
        self._status = _status_label(value="idle")
        self._grid = PushButton(text="Side by side (grid)")
        self._model_path = FileEdit(label="Model file", mode="w", filter="*.safetensors")
        self._save = PushButton(text="Save model")
        self._load = PushButton(text="Load model")
        self._export_path = FileEdit(label="Export to", mode="w", filter="*.h5ad")
        self._export = PushButton(text="Export enhanced .h5ad")
        self.extend(
            [
                self._preset,
                self._epochs,
                self._genes,
                self._patch,
                self._depth,
                self._heads,
                self._lr,
                self._batch,
                self._seed,
                self._device,
                self._device_label,
                self._start,
                self._stop,
                self._progress,
                self._status,
            ]
        )
        self._plot = _LossPlot()
        self.native.layout().addWidget(self._plot.canvas)  # right under the progress bar
        # magicgui rows added later would go above the foreign canvas: a sub-container follows it
        self._files = Container(
            widgets=[self._grid, self._model_path, self._save, self._load, self._export_path, self._export]
        )
        self.native.layout().addWidget(self._files.native)
        self._preset.changed.connect(self._apply_preset)
        self._start.changed.connect(self.start)
        self._stop.changed.connect(self.stop)
        self._grid.changed.connect(
            lambda _: actions.side_by_side(self._viewer, not self._viewer.grid.enabled)
        )
        self._save.changed.connect(lambda _: self.save_model(self._model_path.value))
        self._load.changed.connect(lambda _: self.load_model(self._model_path.value))
        self._export.changed.connect(lambda _: self.export(self._export_path.value))
        self.worker = None
        self._pending: list = []
        self._stop_flag = threading.Event()
        self.last_event = None

    def _device_hint(self) -> str:
        from ..core.device import resolve_device

        try:
            import torch

            cuda = torch.cuda.is_available()
        except Exception:
            cuda = False
        device = resolve_device("auto")
        hint = "" if cuda else " (CUDA not available: install a CUDA build of PyTorch to use a GPU)"
        return f"auto uses: {device}{hint}"

    def _apply_preset(self, name: str) -> None:
        from ..core.config import preset

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
            job = actions.prepare_job(self._viewer, self.config(), self.slide_id, device=self._device.value)
        except (LookupError, ValueError, RuntimeError) as exc:
            _notify_error(exc)
            return None
        self._stop_flag = threading.Event()
        self._plot.clear()
        self._status.value = "preparing..."
        self._progress.value = 0
        worker = create_worker(actions.run_job, job, self._stop_flag, _start_thread=False)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(
            lambda result, sid=job.slide_id, genes=job.genes: self._on_result(sid, genes, result)
        )
        worker.errored.connect(_notify_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._start.enabled, self._stop.enabled = False, True
        worker.start()
        return worker

    def stop(self, _value=None) -> None:
        """Ask the run to stop; it ends within one batch and changes nothing."""
        self._stop_flag.set()
        self._status.value = "stopping..."

    def _on_event(self, event) -> None:
        self.last_event = event
        if event.kind == "prepared":
            self._progress.max = max(1, event.n_steps * event.n_epochs)
            self._device_label.value = f"training on: {event.device}"
            self._plot.add(0, None, event.val_loss)
            self._status.value = event.message
        elif event.kind == "step":
            self._progress.value = min(self._progress.max, (event.epoch - 1) * event.n_steps + event.step)
            eta = "" if event.eta is None else f", ETA {event.eta:.0f} s"
            self._status.value = f"epoch {event.epoch}/{event.n_epochs}, loss {event.train_loss:.4f}{eta}"
        elif event.kind == "epoch":
            self._plot.add(event.epoch, event.train_loss, event.val_loss)
        elif event.kind in ("finished", "stopped"):
            if event.kind == "finished":  # early stopping ends before the last planned step
                self._progress.value = self._progress.max
            self._status.value = f"training {event.kind} ({event.message})"

    def _on_result(self, slide_id: str, genes: list[str], result) -> None:
        if result is None:
            self._status.value = "stopped: nothing changed"
            return
        model, enhanced, layer_tuples = result
        if slide_id not in actions.slides(self._viewer):
            self._status.value = "the slide was closed during training: result discarded"
            return
        run = actions.record_result(self._viewer, slide_id, model, enhanced)
        self._pending = [(t, run) for t in layer_tuples]
        warning = enhanced.uns["stentrans"].get("patterns", {}).get("warning")
        self._status.value = f"enhanced {enhanced.n_obs} sites x {enhanced.n_vars} genes" + (
            f". Note: {warning}" if warning else ""
        )
        self._add_next_layer()

    def _add_next_layer(self) -> None:
        """Add one pending layer per event-loop turn: the viewer stays responsive meanwhile."""
        from qtpy.QtCore import QTimer

        if not self._pending:
            return
        layer_tuple, run = self._pending.pop(0)
        actions.add_enhanced_layer(self._viewer, layer_tuple, run)
        if self._pending:
            QTimer.singleShot(0, self._add_next_layer)

    @property
    def idle(self) -> bool:
        """No run in progress and no result layers waiting to be added."""
        return self.worker is None and not self._pending

    def _on_finished(self) -> None:
        self.worker = None
        self._start.enabled, self._stop.enabled = True, False

    def save_model(self, path) -> None:
        from ..core.checkpoint import save_model

        info = actions.slide(self._viewer, self.slide_id)
        if info.model is None:
            _notify_error(RuntimeError("no trained model to save"))
            return
        save_model(info.model, path)
        self._status.value = f"saved {path}"

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
            _notify_error(exc)
            return
        info.model = model
        actions.refresh_imputation(self._viewer, info.slide_id)
        info.runs += 1
        provenance = info.enhanced.uns["stentrans"] if info.enhanced is not None else {}
        choice = provenance.get("classical_choice")
        self._status.value = f"loaded {path}" + (f"; classical estimate {choice}" if choice else "")

    def export(self, path) -> None:
        from ..core.files import write_h5ad

        info = actions.slide(self._viewer, self.slide_id)
        if info.enhanced is None:
            _notify_error(RuntimeError("nothing to export: train or load a model first"))
            return
        source = info.enhanced.uns.get("stentrans", {}).get("source")
        try:
            write_h5ad(info.enhanced, path, inputs=[source] if source else [])
        except (ValueError, OSError) as exc:  # OSError: a WriteError (full disk, read-only folder)
            _notify_error(exc)
            return
        self._status.value = f"exported {path}"


# table column -> report key (see core.evaluate and core.fidelity)
QUALITY_COLUMNS = {
    "median r": "median_pcc",
    "median r (norm)": "median_pcc_norm",
    "gene-specific r": "gene_specific_r",
    "co-expression r": "coexpression_r",
    "PC1 share": "pc1_share",
    "effective rank": "effective_rank",
}


class QualityWidget(_SlideWidget):
    """The honest held-out protocol on the current slide, against interpolation and classical baselines."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._epochs = SpinBox(
            label="Epochs", min=1, max=200, value=5, tooltip="Fast setting for a quick check"
        )
        self._genes = SpinBox(
            label="Genes", min=10, max=5000, value=200, tooltip="Most variable genes scored"
        )
        self._seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=0)
        self._run = PushButton(text="Run held-out check")
        self._table = Table(value={column: [] for column in ("method", *QUALITY_COLUMNS)})
        self._status = _status_label(
            value="same engine and settings as: stentrans evaluate PATH --epochs 5 --genes 200"
        )
        self._gene = ComboBox(
            label="Residual of", choices=self._shown, tooltip="Enhanced minus measured counts"
        )
        self._residual = PushButton(text="Add residual layer")
        self.extend(
            [
                self._epochs,
                self._genes,
                self._seed,
                self._run,
                self._status,
                self._table,
                self._gene,
                self._residual,
            ]
        )
        self._run.changed.connect(self.run)
        self._residual.changed.connect(
            lambda _: actions.residual_layer(self._viewer, self._gene.value, self.slide_id)
        )
        viewer.layers.events.inserted.connect(lambda _e: self._gene.reset_choices())
        self.worker = None
        self.report = None

    def _shown(self, _widget=None) -> list[str]:
        try:
            return actions.shown_genes(self._viewer, self.slide_id)
        except LookupError:
            return []

    def run(self, _value=None):
        from napari.qt.threading import create_worker

        info = actions.slide(self._viewer, self.slide_id)
        adata = info.adata.copy()
        epochs, genes, seed = self._epochs.value, self._genes.value, self._seed.value
        self._status.value = "running the held-out protocol..."
        worker = create_worker(actions.quality_check, adata, epochs, genes, seed, _start_thread=False)
        worker.returned.connect(self.show_report)
        worker.errored.connect(_notify_error)
        worker.finished.connect(lambda: setattr(self, "worker", None))
        self.worker = worker
        worker.start()
        return worker

    def show_report(self, report: dict) -> None:
        self.report = report
        names = list(report["methods"])
        self._table.value = {
            "method": names,
            **{
                column: [round(float(report["methods"][m][key]), 3) for m in names]
                for column, key in QUALITY_COLUMNS.items()
            },
        }
        best = max(names, key=lambda m: report["methods"][m]["median_pcc"])
        truth = report["truth"]
        self._status.value = (
            f"{report['n_heldout_spots']} held-out spots, {report['n_genes']} genes; best median r: {best}. "
            f"Measured slide at those spots: PC1 share {truth['pc1_share']:.2f}, effective rank "
            f"{truth['effective_rank']:.1f} (over the {len(report['spatial_genes'])} most spatially variable genes)"
        )
