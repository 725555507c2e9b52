"""Progress of long steps: a bar on a terminal, a plain line every tenth (and at the end) without one."""
from __future__ import annotations

import io

from rich.console import Console

from bench.engine.progress import Steps, progress_display


def _run(console: Console, total: int) -> str:
    with progress_display(console) as progress, Steps(progress, "unet eval", total, "case") as steps:
        for i in range(total):
            steps.advance(f"case{i:04d}")
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_piped_output_gets_a_line_every_tenth_and_at_the_end():
    text = _run(Console(file=io.StringIO(), width=120), 25)
    lines = [line for line in text.splitlines() if line.strip()]
    assert [line.split()[3] for line in lines] == ["2/25", "4/25", "6/25", "8/25", "10/25", "12/25", "14/25",
                                                  "16/25", "18/25", "20/25", "22/25", "24/25", "25/25"]
    assert lines[0].startswith("unet eval: case 2/25  case0001  ") and "elapsed, eta" in lines[0]
    assert lines[-1].endswith("eta 0 s")


def test_a_terminal_gets_the_bar_and_no_lines():
    text = _run(Console(file=io.StringIO(), width=120, force_terminal=True), 3)
    assert "unet eval: case" not in text and "unet eval" in text and "━" in text  # a bar, not lines


def test_without_a_display_lines_go_to_say_and_a_resumed_step_counts_from_its_start():
    said: list[str] = []
    steps = Steps(None, "train", 20, "iteration", say=said.append, start=15)
    for _ in range(5):
        steps.advance("loss 0.5")
    assert [s.split()[2] for s in said] == ["16/20", "18/20", "20/20"]
    assert Steps(None, "quiet", 3).say is None  # no display and no say: silent
