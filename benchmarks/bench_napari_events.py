"""Longest event-loop gap of the napari plugin while reading, training and adding layers.

A 10 ms QTimer records when the Qt event loop gets to run; a gap is the time between two of its
ticks (what a user feels as a frozen viewer: no redraw, no click). Run under a display or Xvfb::

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python benchmarks/bench_napari_events.py \
        [--slide PATH] [--preset default|transformer] [--epochs N] [--repeats 3] [--first-read]

Phases (one row each; the longest gap whose end falls in the phase, and the 99th percentile):

``opening the panel``
    ``add_plugin_dock_widget``: napari builds the workspace on the main thread; then, once it
    is built, the Train tab imports the readers and torch in a thread.
``choosing a learned preset``
    the thread imports ``torch._dynamo`` (torch's optimisers import it on first use).
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

``--first-read`` (with ``--slide``): a fresh viewer whose first action is File > IO Utilities >
"Open a slide in the background" (:func:`first_read`); one line per process.

Prints a Markdown table, with the load average, for docs/benchmarks.md. Not a test: gaps
depend on the machine and its load.

``--probe``: no viewer; the Train tab's worker body (``actions.run_job``) runs in a thread
while the main thread sleeps 5 ms at a time and records how late it wakes (what the event loop
would feel: the worker's BLAS threads or a held GIL), with the worker's thread limit
(:func:`~napari_stentrans._napari.actions.leave_a_core_to_the_viewer`) on and off in turn; it
names where the worker was after each wake-up later than 60 ms.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


class Ticks:
    """A 10 ms QTimer whose ticks (ms since start) show when the event loop ran.

    Also records CPython's full (generation 2) collections, as (start, end) in the same clock:
    a collection holds the GIL on whichever thread allocates, so it stalls the event loop too.
    """

    def __init__(self, interval_ms: int = 10) -> None:
        import gc

        from qtpy.QtCore import QElapsedTimer, QTimer

        self.clock = QElapsedTimer()
        self.clock.start()
        self.ticks: list[int] = []
        self.collections: list[tuple[int, int]] = []
        self._collecting: int | None = None
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(self.clock.elapsed()))
        self.timer.start(interval_ms)
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._collecting = self.clock.elapsed()
        elif self._collecting is not None:
            self.collections.append((self._collecting, self.clock.elapsed()))
            self._collecting = None

    def close(self) -> None:
        import gc

        self.timer.stop()
        gc.callbacks.remove(self._on_gc)

    def longest_collection(self, start: int, end: int) -> int:
        """The longest full collection (ms) that ended in ``(start, end]``; 0 when none."""
        inside = [b - a for a, b in self.collections if start < b <= end]
        return max(inside, default=0)

    def now(self) -> int:
        return self.clock.elapsed()

    def after(self, t: int) -> int:
        """The first tick after ``t`` (``t`` itself when none came yet)."""
        later = [tick for tick in self.ticks if tick > t]
        return later[0] if later else t

    def within(self, start: int, end: int) -> np.ndarray:
        """Gaps (ms) between consecutive ticks both in ``[start, end)``."""
        t = np.asarray([tick for tick in self.ticks if start <= tick < end], dtype=float)
        return np.diff(t)

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


def run_once(slide: Path | None, preset: str, epochs: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    import napari
    from napari_stentrans._napari import actions

    viewer = napari.Viewer(show=True, title="bench")
    viewer.window._qt_window.resize(1280, 800)
    settle()
    ticks = Ticks()
    settle(200)
    out: dict[str, np.ndarray] = {}
    collections: dict[str, int] = {}

    def record(phase: str, start: int, end: int) -> None:
        out[phase] = ticks.gaps(start, end)
        collections[phase] = ticks.longest_collection(start, ticks.after(end))

    start = ticks.now()
    _, ws = viewer.window.add_plugin_dock_widget("napari-stentrans", "Workspace (all panels)")
    end = ticks.now()
    wait(lambda: ws.train.warmed_up)
    record("opening the panel (napari's synchronous call)", start, end)
    # from the first tick after the call: the call's own block belongs to the row above
    record("importing the readers and torch (thread, after the panel opens)", ticks.after(end), ticks.now())
    settle(200)
    if slide is not None:
        start = ticks.now()
        viewer.open(str(slide), plugin="napari-stentrans")
        end = ticks.now()
        settle(200)
        record("read: napari File > Open", start, end)
        viewer.layers.clear()
        settle(200)
        start = ticks.now()
        ws.genes.open_slide(slide)
        wait(lambda: ws.genes.idle)
        record("read: workspace Open", start, ticks.now())
    else:
        start = ticks.now()
        viewer.open_sample("napari-stentrans", "synthetic_visium")
        end = ticks.now()
        settle(200)
        record("read: sample (synthetic Visium), napari's synchronous call", start, end)
    settle(200)
    train = ws.train
    start = ticks.now()
    train._preset.value = preset
    wait(lambda: train.warmed_up)
    if preset != "default":
        record("choosing a learned preset (thread imports torch._dynamo)", start, ticks.now())
        settle(200)
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
    record(f"training ({preset}, {epochs} epochs)", marks["start"], end_training)
    record("enhancing (worker)", end_training, marks["result"])
    n_layers = len([layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "enhanced"])
    record(f"adding result layers ({n_layers})", marks["result"], marks["idle"])
    out["info"] = np.array([len(actions.slide(viewer).adata), marks["idle"] - marks["start"]])
    ticks.close()
    viewer.close()
    return out, collections


def first_read(slide: Path) -> dict[str, float]:
    """A fresh viewer whose first action is File > IO Utilities > "Open a slide in the
    background" (the menu command docks the Workspace, whose warm-up imports follow the read).

    Returns the longest gaps (ms) of the menu command itself (it docks the Workspace), while the
    worker reads (until the first layer) and while the layers are added, the longest full
    collection until then, when the first and the last layer arrived (s after the command), and
    the longest gap of the warm-up imports that follow.
    """
    import napari
    from napari_stentrans._napari.menus import open_in_background

    viewer = napari.Viewer(show=True, title="bench")
    viewer.window._qt_window.resize(1280, 800)
    settle()
    ticks = Ticks()
    settle(200)
    first: list[int] = []
    viewer.layers.events.inserted.connect(lambda _e: first.append(ticks.now()))
    start = ticks.now()
    open_in_background(viewer, path=str(slide))
    called = ticks.now()  # the command docks the Workspace (napari's synchronous call), then returns
    _, ws = viewer.window.add_plugin_dock_widget("napari-stentrans", "Workspace (all panels)")
    wait(lambda: ws.genes.idle)
    end = ticks.now()
    wait(lambda: ws.train.warmed_up)

    def longest(gaps: np.ndarray) -> float:
        return float(np.max(gaps, initial=0.0))

    out = {
        "the menu command (docks the Workspace), ms": longest(ticks.gaps(start, called)),
        # gaps that ended before the first layer came (the one straddling it is the first add's)
        "longest gap while reading, ms": longest(ticks.within(ticks.after(called), first[0])),
        "longest gap while adding the layers, ms": longest(ticks.gaps(first[0] - 1, end)),
        "longest full collection, ms": float(ticks.longest_collection(start, ticks.after(end))),
        "first layer, s": (first[0] - start) / 1000,
        "all layers, s": (end - start) / 1000,
        "imports after, longest gap, ms": longest(ticks.gaps(ticks.after(end), ticks.now())),
    }
    ticks.close()
    viewer.close()
    return out


def probe(preset: str, epochs: int, limited: bool) -> tuple[np.ndarray, dict[str, float]]:
    """Main-thread wake-up delays (ms) while the worker body runs; where the worker was on late ones."""
    import contextlib
    import sys
    import threading

    from napari_stentrans._napari import actions
    from napari_stentrans.core.config import preset as make_preset
    from napari_stentrans.core.display import DisplayFrame
    from napari_stentrans.core.estimators.base import run_fit
    from napari_stentrans.synthetic import synthetic_slide

    adata = synthetic_slide("hex", n_genes=300, seed=0)
    config = make_preset(preset, "hex", **({"epochs": epochs} if preset != "default" else {}))
    job = actions.TrainingJob(
        "s", adata, np.zeros((0, 2), int), list(adata.var_names[:4]), config, DisplayFrame.of(adata), "cpu"
    )
    real = actions.leave_a_core_to_the_viewer
    if not limited:
        actions.leave_a_core_to_the_viewer = lambda uses_torch: contextlib.nullcontext(1)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (run_fit(actions.run_job(job), None), done.set()))
    delays, where = [], {}
    try:
        worker.start()
        while not done.is_set():
            t = time.perf_counter()
            time.sleep(0.005)
            delay = (time.perf_counter() - t) * 1000 - 5
            delays.append(delay)
            frame = sys._current_frames().get(worker.ident) if delay > 60 else None
            if frame is not None:
                key = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"
                where[key] = where.get(key, 0.0) + delay
        worker.join()
    finally:
        actions.leave_a_core_to_the_viewer = real
    return np.asarray(delays), where


def main_probe(args) -> None:
    import napari  # noqa: F401  (the viewer's imports, as in a session: numba, vispy)

    probe(args.preset, args.epochs, True)  # first-time imports (torch, its optimiser) not counted
    rows = []
    for _ in range(args.repeats):
        for limited in (False, True):
            load = os.getloadavg()[0]
            delays, where = probe(args.preset, args.epochs, limited)
            top = max(where, key=where.get) if where else "-"
            rows.append((limited, load, delays.max(), np.percentile(delays, 99), top))
    print(f"\nworker body alone ({args.preset}), main thread sleeping 5 ms; {os.cpu_count()} CPUs\n")
    print("| worker threads | load | longest wake-up delay, ms | 99th percentile, ms | worker then at |")
    print("|---|---:|---:|---:|---|")
    for limited, load, longest, p99, top in rows:
        label = "cpu_count-1 (this branch)" if limited else "all (as before)"
        print(f"| {label} | {load:.1f} | {longest:.0f} | {p99:.0f} | {top} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, help="a slide to open (default: the synthetic Visium sample)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--epochs", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", action="store_true", help="worker thread limit on/off, no viewer")
    parser.add_argument(
        "--first-read",
        action="store_true",
        help="a fresh viewer's first action: open --slide in the background",
    )
    args = parser.parse_args()
    if args.probe:
        main_probe(args)
        return
    if args.first_read:  # one per process: only the first read of a session is the first
        result = first_read(args.slide)
        print(" | ".join(f"{k} {v:.2f}" if k.endswith(", s") else f"{k} {v:.0f}" for k, v in result.items()))
        return
    results = [run_once(args.slide, args.preset, args.epochs) for _ in range(args.repeats)]
    runs = [gaps for gaps, _ in results]
    load = os.getloadavg()
    print(
        f"\nslide: {args.slide or 'synthetic Visium sample'} ({int(runs[0]['info'][0]):,} spots); "
        f"{args.repeats} runs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        "| phase | longest gap, ms (per run) | 99th percentile, ms (worst run) "
        "| longest full collection, ms (per run) |"
    )
    print("|---|---:|---:|---:|")
    for phase in runs[0]:
        if phase == "info":
            continue
        longest = [float(r[phase].max()) if len(r[phase]) else 0.0 for r in runs]
        p99 = max(float(np.percentile(r[phase], 99)) if len(r[phase]) else 0.0 for r in runs)
        collected = ", ".join(str(c[phase]) for _, c in results)
        print(f"| {phase} | {', '.join(f'{v:.0f}' for v in longest)} | {p99:.0f} | {collected} |")


if __name__ == "__main__":
    main()
