"""Progress of long steps (training, evaluation, validation, tuning trials, predict): one display, two forms.

On a terminal a step is a bar with its count, a free text (loss and LR, the case), the elapsed time
and the ETA. Without one (CI logs, ``nohup``, a pipe, a cluster worker) a bar is invisible, so the
same step prints a plain line every tenth of the way and at its end instead.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_display(console: Console) -> Progress:
    """The progress display of every long step: label, bar, done / total, its text, elapsed time and ETA."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        disable=not console.is_terminal,  # nothing to draw on a pipe (the steps print lines there)
    )


class Steps:
    """One long step of ``total`` units: a task of ``progress`` on a terminal, else a line every tenth.

    ``say`` prints the lines (default: the progress display's console; with neither, the step is
    silent). ``start`` units were done before (a resumed run): the ETA counts this process's pace.
    """

    def __init__(self, progress: Progress | None, label: str, total: int, unit: str = "",
                 say: Callable[..., object] | None = None, start: int = 0, info: str = "") -> None:
        self.progress, self.label, self.total, self.unit = progress, label, total, unit
        self.say = say if say is not None else (progress.console.print if progress is not None else None)
        self.done = self.start = start
        self.every = max(1, total // 10)
        self.interactive = progress is not None and progress.console.is_terminal
        self.task: TaskID | None = None
        if progress is not None:
            self.task = progress.add_task(label, total=total, completed=start, info=info)
        self.t0 = time.perf_counter()

    def advance(self, info: str = "", n: int = 1) -> None:
        """``n`` more units done; ``info`` is the text shown beside the bar (and on the line)."""
        self.done += n
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=n, info=info)
        if self.interactive or self.say is None:
            return
        if self.done % self.every == 0 or self.done == self.total:
            self.say(self.line(info))

    def line(self, info: str = "") -> str:
        """The plain form: ``label: unit done/total  info  S s elapsed, eta S s``."""
        spent = time.perf_counter() - self.t0
        pace = spent / max(self.done - self.start, 1)
        count = f"{self.unit} {self.done}/{self.total}" if self.unit else f"{self.done}/{self.total}"
        text = f"  {info}" if info else ""
        return f"{self.label}: {count}{text}  {spent:.0f} s elapsed, eta {pace * (self.total - self.done):.0f} s"

    def close(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
