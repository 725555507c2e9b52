"""Case names: every source (list files, splits.json, image folders, ``--case-id``) follows the
one name rule of ``bench.names``.

A case name becomes a file name (``predictions/<case>.npz``, ``test_vol_h5/<case>.npy.h5``), so it
must not be able to point anywhere else. A list line that breaks the rule is named by file and line.
"""
from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from bench.names import check_name


def check_case_name(name: str, where: str) -> str:
    """``name`` if it follows the name rule (``bench.names``); else a BenchError naming ``where`` it came from."""
    return check_name(name, where, "case name")


def read_names(path: Path) -> list[str]:
    """The names listed in a text file, one a line (blank lines skipped), each checked by the rule."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchError(f"{path}: case list not found") from None
    except UnicodeDecodeError as e:
        raise BenchError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise BenchError(f"{path}: cannot read the case list ({e.strerror})") from None
    names = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            names.append(check_case_name(line.strip(), f"{path}, line {number}"))
    if not names:
        raise BenchError(f"{path}: case list is empty")
    return names
