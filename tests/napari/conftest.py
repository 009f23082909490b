"""napari tests need napari, a Qt binding and a display (Xvfb on headless machines)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers in tests/conftest.py

_missing = [m for m in ("napari", "qtpy", "magicgui", "pytestqt") if importlib.util.find_spec(m) is None]
_no_display = (
    sys.platform.startswith("linux")
    and not os.environ.get("DISPLAY")
    and not os.environ.get("WAYLAND_DISPLAY")
)

if _missing or _no_display:
    reason = f"missing {_missing}" if _missing else "no display (run under xvfb-run)"
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set but the napari tests cannot run: {reason}")
    collect_ignore_glob = ["test_*.py"]
    print(f"napari tests skipped: {reason}", file=sys.stderr)


if not (_missing or _no_display):
    import pytest

    @pytest.fixture
    def st_viewer(make_napari_viewer):
        """A viewer with the synthetic legacy-ST sample open."""
        viewer = make_napari_viewer()
        viewer.open_sample("napari-stentrans", "synthetic_st")
        return viewer
