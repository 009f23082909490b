"""Menu commands: File > IO Utilities > "Export the enhanced slide (.h5ad)...".

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

from napari.viewer import Viewer

WORKSPACE = "Workspace (all panels)"


def open_export(viewer: Viewer):
    """Show the Workspace dock at its Export tab (docking it first when it is not open).

    Returns the Workspace widget.
    """
    from .widgets import WorkspaceWidget

    dock, workspace = viewer.window.add_plugin_dock_widget("napari-stentrans", WORKSPACE)
    dock.show()  # docked earlier and closed: napari returns the hidden dock as it is
    dock.raise_()
    workspace.tabs.setCurrentIndex(WorkspaceWidget.TABS.index("Export"))
    return workspace
