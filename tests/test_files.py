"""Atomic writes: a failed write leaves the old file and no temporary behind."""
from pathlib import Path

import pytest

from bench.files import atomic_write


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "a.json"
    target.write_text("old")

    def boom(p: Path):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
