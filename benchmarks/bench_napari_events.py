"""Longest event-loop gap of the napari plugin while reading, training and adding layers.

A 10 ms QTimer records when the Qt event loop gets to run; a gap is the time between two of its
ticks (what a user feels as a frozen viewer: no redraw, no click). Run under a display or Xvfb::

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python benchmarks/bench_napari_events.py \
        [--slide PATH] [--preset default|transformer] [--epochs N] [--repeats 3]

Phases (one row each; the longest gap whose end falls in the phase, and the 99th percentile):

``read: napari File > Open``
    ``viewer.open(path, plugin="napari-stentrans")``: napari runs readers on the main thread,
    so the whole read is one gap (the reader is napari's to call, not the plugin's).
``read: workspace Open``
    the Genes tab's "Open slide in the background": the core reader in a worker, then the
    layers added one per event-loop turn.
``training``
    from Start to the worker's ``finished`` event (the worker fits; the main thread only
    updates the progress bar, the status and the loss plot).
``enhancing``
    the worker enhances the genes on screen.
``adding result layers``
    the ``GENE x2`` layers, one per event-loop turn, until the widget is idle.

Prints a Markdown table, with the load average, for docs/benchmarks.md. Not a test: gaps
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


class Ticks:
    """A 10 ms QTimer whose ticks (ms since start) show when the event loop ran."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QElapsedTimer, QTimer

        self.clock = QElapsedTimer()
        self.clock.start()
        self.ticks: list[int] = []
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(self.clock.elapsed()))
        self.timer.start(interval_ms)

    def now(self) -> int:
        return self.clock.elapsed()

    def gaps(self, start: int, end: int) -> np.ndarray:
        """Gaps (ms) between consecutive ticks whose later tick falls in ``(start, end]``,
        counting the tick just after ``end`` (a block that straddles the end belongs here)."""
        t = np.asarray(self.ticks, dtype=float)
        if len(t) < 2:
            return np.zeros(0)
        later = t[1:]
        first_after = later[later > end][:1]
        stop = first_after[0] if len(first_after) else end
        keep = (later > start) & (later <= stop)
        return (t[1:] - t[:-1])[keep]


def wait(predicate, timeout_s: float = 600.0) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + timeout_s
    while not predicate():
        QApplication.processEvents()
        time.sleep(0.001)
        if time.perf_counter() > deadline:
            raise TimeoutError("timed out")


def settle(ms: int = 300) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.002)


def run_once(slide: Path | None, preset: str, epochs: int) -> dict[str, np.ndarray]:
    import napari
    from napari_stentrans._napari import actions

    viewer = napari.Viewer(show=True, title="bench")
    viewer.window._qt_window.resize(1280, 800)
    _, ws = viewer.window.add_plugin_dock_widget("napari-stentrans", "Workspace (all panels)")
    settle()
    ticks = Ticks()
    settle(200)
    out: dict[str, np.ndarray] = {}
    if slide is not None:
        start = ticks.now()
        viewer.open(str(slide), plugin="napari-stentrans")
        end = ticks.now()
        settle(200)
        out["read: napari File > Open"] = ticks.gaps(start, end)
        viewer.layers.clear()
        settle(200)
        start = ticks.now()
        ws.genes.open_slide(slide)
        wait(lambda: ws.genes.idle)
        out["read: workspace Open"] = ticks.gaps(start, ticks.now())
    else:
        start = ticks.now()
        viewer.open_sample("napari-stentrans", "synthetic_visium")
        end = ticks.now()
        settle(200)
        out["read: sample (synthetic Visium), napari's synchronous call"] = ticks.gaps(start, end)
    settle(200)
    train = ws.train
    train._preset.value = preset
    train._epochs.value = epochs
    train._device.value = "cpu"
    marks: dict[str, int] = {}
    on_result = train._on_result

    def marked(*args):
        marks["result"] = ticks.now()
        on_result(*args)

    train._on_result = marked
    marks["start"] = ticks.now()
    worker = train.start()
    worker.yielded.connect(lambda event: marks.setdefault(event.kind, ticks.now()))
    wait(lambda: train.idle and "result" in marks)
    marks["idle"] = ticks.now()
    settle(200)
    end_training = marks.get("finished", marks["result"])
    out[f"training ({preset}, {epochs} epochs)"] = ticks.gaps(marks["start"], end_training)
    out["enhancing (worker)"] = ticks.gaps(end_training, marks["result"])
    n_layers = len([layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "enhanced"])
    out[f"adding result layers ({n_layers})"] = ticks.gaps(marks["result"], marks["idle"])
    out["info"] = np.array([len(actions.slide(viewer).adata), marks["idle"] - marks["start"]])
    viewer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="a slide to open (default: the synthetic Visium sample)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--epochs", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = [run_once(args.slide, args.preset, args.epochs) for _ in range(args.repeats)]
    load = os.getloadavg()
    print(
        f"\nslide: {args.slide or 'synthetic Visium sample'} ({int(runs[0]['info'][0]):,} spots); "
        f"{args.repeats} runs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| phase | longest gap, ms (per run) | 99th percentile, ms (worst run) |")
    print("|---|---:|---:|")
    for phase in runs[0]:
        if phase == "info":
            continue
        longest = [float(r[phase].max()) if len(r[phase]) else 0.0 for r in runs]
        p99 = max(float(np.percentile(r[phase], 99)) if len(r[phase]) else 0.0 for r in runs)
        print(f"| {phase} | {', '.join(f'{v:.0f}' for v in longest)} | {p99:.0f} |")


if __name__ == "__main__":
    main()
