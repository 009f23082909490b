"""Fixtures shared by all tests (helpers live in helpers.py, importable from subfolders too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import shared_data_or_skip


@pytest.fixture
def shared_data() -> Path:
    return shared_data_or_skip()
