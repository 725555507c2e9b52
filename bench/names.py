"""The one rule for names that become file or folder names: case ids, protocol names, study names,
external run names (``bench evaluate --pred --name``), output stems.

A name may hold any printable characters (letters, digits, spaces inside, ``@ = , [ ] _ - .``...)
up to ``MAX_LENGTH``, but nothing that can point elsewhere or hide: no ``/`` or ``\\``, no ``..``,
no leading ``.``, no leading or trailing space, nothing unprintable (newlines, tabs, control
characters). ``external`` is reserved: it is the "protocol" folder of external runs.
"""
from __future__ import annotations

from bench.errors import BenchError

MAX_LENGTH = 200
EXTERNAL = "external"  # <results>/<dataset>/external/<name>/: the folder of external runs, never a protocol's
RULE = ("names may not contain '/', '\\' or '..', start with '.', start or end with a space, "
        f"hold unprintable characters or be longer than {MAX_LENGTH} characters")


def name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a file or folder name, or None."""
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


def protocol_name_problem(name: str) -> str | None:
    """``name_problem``, and ``external`` (in any case: a case-insensitive file system mixes them) refused."""
    if name.lower() == EXTERNAL:
        return f"is reserved: external runs live in <results>/<dataset>/{EXTERNAL}/<name>/"
    return name_problem(name)


def check_name(name: str, where: str, what: str = "name") -> str:
    """``name`` if it follows the rule; else a BenchError naming ``where`` it came from."""
    problem = name_problem(name)
    if problem is not None:
        raise BenchError(f"{where}: {what} {name!r} {problem} ({RULE})")
    return name
