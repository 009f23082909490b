"""Screenshots of the real napari viewer for the README (run under a display or Xvfb).

Usage::

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python docs/make_screenshots.py

Opens the synthetic Visium sample in a 1280x800 window with the "Workspace (all panels)" dock,
paints a lost region (the proposed in-tissue holes and one extra disk of measured spots), trains
the transformer preset briefly (4 epochs, 64 training genes: a loss curve and the verdict) in
the Train tab, and writes ``docs/images/napari_enhanced.png`` (original | enhanced, over the H&E
with the lost regions) and ``docs/images/napari_window.png`` (the whole window, Train tab open
with its advanced settings expanded), then runs the Quality tab's held-out check and writes
``docs/images/napari_quality.png`` (the docked panel: verdict and table).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"


def main() -> None:
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_stentrans._napari import actions

    viewer = napari.Viewer(show=True, title="napari-stentrans")
    viewer.window._qt_window.resize(1280, 800)
    viewer.open_sample("napari-stentrans", "synthetic_visium")
    workspace = viewer.window.add_plugin_dock_widget("napari-stentrans", "Workspace (all panels)")[1]
    lost_widget = workspace.lost
    lost_widget.propose()
    info = actions.slide(viewer)
    xy = info.frame.world(info.adata.obs["array_row"], info.adata.obs["array_col"])
    target = np.array([np.percentile(xy[:, 0], 60), np.percentile(xy[:, 1], 35)])
    centre = xy[np.argmin(np.linalg.norm(xy - target, axis=1))]
    near = np.linalg.norm(xy - centre, axis=1) < 350.0  # micrometres
    layer = actions.lost_layer(viewer)
    painted = layer.metadata["stentrans"]["raster"].pixels_of_sites(
        info.adata.obs["array_row"].to_numpy()[near], info.adata.obs["array_col"].to_numpy()[near]
    )
    layer.data_setitem(np.nonzero(painted), actions.LOST_LABEL)
    lost_widget.update_summary()

    train = workspace.train
    train._preset.value = "transformer"
    train._epochs.value, train._genes.value = 4, 64
    train._advanced.button.setChecked(True)
    worker = train.start()
    while worker is not None and not train.idle:
        QApplication.processEvents()
    gene = actions.shown_genes(viewer)[-1]
    he = next(layer for layer in viewer.layers if layer.metadata["stentrans"]["role"] == "he")
    panels = []
    for shown in (gene, f"{gene} x2"):
        for layer_ in viewer.layers:
            layer_.visible = layer_.name in (shown, he.name, layer.name)
        layer.opacity = 0.45
        viewer.reset_view()
        QApplication.processEvents()
        panels.append(viewer.screenshot(canvas_only=True, flash=False))
    _side_by_side(
        panels,
        [f"{gene}: measured (lost region in cyan)", f"{gene} x2: stEnTrans"],
        OUT / "napari_enhanced.png",
    )
    viewer.layers.selection.active = viewer.layers[f"{gene} x2"]
    workspace.tabs.setCurrentIndex(workspace.TABS.index("Train"))
    for _ in range(20):
        QApplication.processEvents()
    window = viewer.screenshot(canvas_only=False, flash=False)
    import matplotlib.pyplot as plt

    plt.imsave(OUT / "napari_window.png", window[..., :3])
    _quality_shot(viewer, workspace, OUT / "napari_quality.png")
    print(
        f"wrote {OUT / 'napari_enhanced.png'}, {OUT / 'napari_window.png'} and {OUT / 'napari_quality.png'}"
    )
    viewer.close()


def _quality_shot(viewer, workspace, path: Path) -> None:
    """The docked panel's Quality tab after a held-out check of the quick methods (200 genes)."""
    from qtpy.QtWidgets import QApplication

    quality = workspace.quality
    workspace.tabs.setCurrentIndex(workspace.TABS.index("Quality"))
    quality.run()
    while quality.worker is not None:
        QApplication.processEvents()
    for _ in range(20):
        QApplication.processEvents()
    # scrolled so the verdict and the whole table are in view, as a user reads them
    workspace.tabs.currentWidget().ensureWidgetVisible(quality._table.native)
    QApplication.processEvents()
    dock = workspace.native.parentWidget()
    while dock is not None and not dock.inherits("QDockWidget"):
        dock = dock.parentWidget()
    (dock or workspace.native).grab().save(str(path))


def _side_by_side(images: list[np.ndarray], titles: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(6 * len(images), 5))
    for ax, img, title in zip(axes, images, titles, strict=True):
        ax.imshow(img[..., :3])
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
