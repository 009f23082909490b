"""Every class of bad input gets one ReadError naming the file and the problem; nothing is written."""

from __future__ import annotations

import re

import pytest

from bad_inputs import CASES
from napari_stentrans.core.io import ReadError, read


def _files(folder):
    return sorted((p.relative_to(folder), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", list(CASES))
def test_core_reader_names_the_file_and_the_problem(case, tmp_path):
    make, pattern = CASES[case]
    path = make(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(ReadError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message.strip()
    assert path.name in message and re.search(pattern, message), message
    assert _files(tmp_path) == before
