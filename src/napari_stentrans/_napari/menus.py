"""Menu commands under File > IO Utilities: open a slide in the background, export the enhanced one.

napari runs File > Open (and drag and drop) through the plugin's reader on the main thread,
then adds every layer it returns in the same call: the viewer is frozen for the read and the
adds (0.8-2.1 s on the slides of docs/benchmarks.md, more on large tables). The two
"Open ... in the background" entries read in the Workspace's worker instead and add the layers
one per event-loop turn (the longest stall 108-134 ms, docs/benchmarks.md).

Export:

napari 0.9.2's "Save Selected Layers..." dialog cannot default to this plugin's writer: its
filter list is every writer compatible with the selected layer types, sorted by how many layer
types a writer accepts (fewer first), then by the order plugins were discovered; the first
filter is the default. Our writer accepts images and lost-region labels (2 types), so napari's
own TIFF/PNG writer (1 type) comes first, and a name typed as ``slide.h5ad`` under that filter
is handed to the TIFF writer, which writes nothing (napari warns "did not return any written
paths"). No manifest field (priority, metadata filter) changes that order, and napari's
``plugins.extension2writer`` setting is not read by that dialog. This menu entry opens the
Workspace's Export tab instead, which writes every gene (docs/design.md, README "napari").
"""

from __future__ import annotations

from napari.viewer import Viewer

WORKSPACE = "Workspace (all panels)"
#: what the file dialog offers (the core reader's formats; anything else is refused with a reason)
SLIDE_FILES = (
    "Slides (*.h5ad *.h5 *.zarr *.tsv *.tsv.gz *.csv *.csv.gz *.txt *.txt.gz *.parquet);;All files (*)"
)


def _workspace(viewer: Viewer, tab: str):
    """The Workspace widget, docked and shown at ``tab``."""
    from .widgets import WorkspaceWidget

    dock, workspace = viewer.window.add_plugin_dock_widget("napari-stentrans", WORKSPACE)
    dock.show()  # docked earlier and closed: napari returns the hidden dock as it is
    dock.raise_()
    workspace.tabs.setCurrentIndex(WorkspaceWidget.TABS.index(tab))
    return workspace


def open_in_background(viewer: Viewer, path: str | None = None, folder: bool = False):
    """Ask for a slide (a file, or with ``folder`` a Space Ranger folder) and read it in the
    Workspace's worker (its Genes tab shows the progress); the viewer stays responsive.

    ``path`` skips the dialog. Returns the read's worker, or None when the dialog was cancelled.
    """
    if path is None:
        from qtpy.QtWidgets import QApplication, QFileDialog

        parent = QApplication.activeWindow()  # napari's window (its private handle is deprecated)
        if folder:
            path = QFileDialog.getExistingDirectory(parent, "Open a Space Ranger folder in the background")
        else:
            path, _ = QFileDialog.getOpenFileName(
                parent, "Open a slide in the background", filter=SLIDE_FILES
            )
        if not path:
            return None
    return _workspace(viewer, "Genes").genes.open_slide(path)


def open_folder_in_background(viewer: Viewer):
    """:func:`open_in_background` for a Space Ranger folder (a file dialog cannot pick both)."""
    return open_in_background(viewer, folder=True)


def open_export(viewer: Viewer):
    """Show the Workspace dock at its Export tab (docking it first when it is not open).

    Returns the Workspace widget.
    """
    return _workspace(viewer, "Export")
