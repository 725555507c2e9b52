"""Case names: one rule for every source (list files, splits.json, image folders, ``--case-id``).

A case name becomes a file name (``predictions/<case>.npz``, ``test_vol_h5/<case>.npy.h5``), so it
must not be able to point anywhere else: no path separators, no '..', no leading dot, nothing
unprintable. A list line that breaks the rule is named by file and line.
"""
from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError

MAX_LENGTH = 200
RULE = "case names may not contain '/', '\\\\' or '..', start with '.' or hold unprintable characters"


def name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a case (or slice) name, or None."""
    if not name:
        return "is empty"
    if len(name) > MAX_LENGTH:
        return f"is longer than {MAX_LENGTH} characters"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.'"
    if not name.isprintable():
        return "contains an unprintable character"
    if name != name.strip():
        return "starts or ends with a space"
    return None


def check_case_name(name: str, where: str) -> str:
    """``name`` if it follows the rule; else a BenchError naming ``where`` it came from."""
    problem = name_problem(name)
    if problem is not None:
        raise BenchError(f"{where}: case name {name!r} {problem} ({RULE})")
    return name


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
