"""The ``bench`` command line. Bad input: one clear line on stderr, exit status 2.

One module per group of commands, registered on ``bench.cli.app.app`` in the order ``bench --help``
lists them; options that several commands share are declared once in ``bench.cli.options``.
"""
from __future__ import annotations

import sys

from rich.text import Text

# isort: off
# the command modules register their commands in this order (the order of `bench --help`)
from bench.cli import runs, nnunet, models, scoring, reports, data, papers, benchmarks, protocols  # noqa: F401
# isort: on
from bench.cli.app import app
from bench.cli.options import err_console
from bench.errors import BenchError

__all__ = ["app", "main"]


def _user_error(e: BaseException) -> bool:
    """The project's own errors: ``BenchError``, and the model registry's unknown-name error
    (looked up only if the registry was imported, so that `bench --help` does not load torch)."""
    registry = sys.modules.get("models.registry")
    return isinstance(e, BenchError) or (registry is not None and isinstance(e, registry.UnknownModelError))


def _error_line(message: str) -> Text:
    """``error: MESSAGE``, the message as it is (a path or a file's text is never read as markup)."""
    return Text.assemble(("error:", "red"), " ", message)


def main() -> None:
    """The ``bench`` entry point: usage errors as click prints them (exit 2); the project's own
    errors and OS errors on a named file as one line (exit 2); anything else is a bug and keeps
    its traceback."""
    try:
        app()  # standalone: click prints usage errors with their hint and exits 2
    except Exception as e:
        if _user_error(e):
            err_console.print(_error_line(str(e)), highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(e, OSError) and e.filename is not None:
            # A file the user named or a folder the user pointed at (read-only, missing, full disk):
            # one line naming it. An OSError without a file name is not about user input: a bug.
            err_console.print(_error_line(f"{e.filename}: {e.strerror or e}"), highlight=False, soft_wrap=True)
            sys.exit(2)
        raise
