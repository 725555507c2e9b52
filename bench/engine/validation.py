"""Validation during training: held-out *training* cases scored every ``validation.interval`` iterations.

``bench tune`` scores trials this way; ``bench run`` does when the protocol says
``validation.during_run: true``, and then trains on the other training cases. Test cases are
never read: the held-out cases come from the training list (``bench.data.splits.validation_view``)
and a view touching a test case is refused. Scores go to ``validation_log.csv`` in the run folder
(kept across a resume), to the trackers and to the report's learning curves.
"""
from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from bench.data.splits import validation_view
from bench.data.synapse import Dataset, case_of
from bench.engine.evaluation import evaluate_model
from bench.errors import BenchError
from bench.files import atomic_write
from bench.protocol import Protocol

VALIDATION_LOG = "validation_log.csv"
FIELDS = ["iteration", "dice", "hd95", "seconds"]
SPLIT_SEED = 0  # the validation cases depend on the dataset and the fraction only


def held_out_view(ds: Dataset, protocol: Protocol) -> Dataset:
    """Train on most training cases, validate on the rest; refuses anything touching a test case."""
    view = validation_view(ds, protocol.validation.fraction, SPLIT_SEED)
    touched = set(view.test_cases) | {case_of(s) for s in view.train_slices}
    if ds.eval_split == "test" and touched & set(ds.test_cases):
        raise BenchError(f"{ds.root}: the validation split shares cases with the test list: "
                         f"{', '.join(sorted(touched & set(ds.test_cases)))}")
    return view


def mean_foreground(metrics: pd.DataFrame, metric: str = "dice") -> float:
    """Mean over organs of the per-organ mean over cases (NaN cases skipped)."""
    rows = metrics[(metrics["metric"] == metric) & (metrics["label"] != 0)]
    return float(rows.groupby("label")["value"].mean().mean())


def read_validation_log(run_dir: Path, before: int | None = None) -> list[dict]:
    """The rows of ``validation_log.csv`` (those of iterations < ``before``), torn rows skipped."""
    path = Path(run_dir) / VALIDATION_LOG
    if not path.exists():
        return []
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if all(r.get(k) not in (None, "") for k in FIELDS)]
    return [r for r in rows if before is None or int(r["iteration"]) < before]


class Validator:
    """The ``on_iteration`` callback of ``train``: score the held-out cases at the interval and at the end.

    Each score goes to ``validation_log.csv``, the tracker and ``say``, then to ``on_score(done,
    dice)`` (``bench tune`` reports it to its trial and prunes there). ``score`` is the last one.
    """

    def __init__(self, model: torch.nn.Module, view: Dataset, protocol: Protocol, device: torch.device,
                 run_dir: Path, tracker=None, say: Callable[..., object] = print,
                 on_score: Callable[[int, float], None] | None = None, progress: Progress | None = None) -> None:
        self.model, self.view, self.protocol, self.device = model, view, protocol, device
        self.run_dir, self.tracker, self.say, self.on_score = Path(run_dir), tracker, say, on_score
        self.progress = progress  # a bar over the held-out cases (lines on the display's console without a terminal)
        self.max_iter = protocol.max_iterations(len(view.train_slices))
        self.interval = protocol.validation.interval or self.max_iter
        self.rows: list[dict] = []
        self.resumed = False
        self.score: float | None = None
        self.t0 = time.perf_counter()

    def _write(self) -> None:
        def write(p: Path) -> None:
            with open(p, "w", newline="") as f:
                w = csv.DictWriter(f, FIELDS)
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.run_dir / VALIDATION_LOG, write)

    def __call__(self, done: int) -> None:
        if not self.resumed:  # first call of this process: scores from after the checkpoint are redone
            self.rows, self.resumed = read_validation_log(self.run_dir, before=done), True
            self._write()
        if done % self.interval and done != self.max_iter:
            return
        metrics = evaluate_model(self.model, self.view, self.protocol.input_size, self.protocol.evaluation,
                                 self.device, progress=self.progress, label=f"validation at iteration {done}")
        dice, hd95 = mean_foreground(metrics, "dice"), mean_foreground(metrics, "hd95")
        self.score = dice
        self.rows.append({"iteration": done, "dice": f"{dice:.6f}", "hd95": f"{hd95:.6f}",
                          "seconds": f"{time.perf_counter() - self.t0:.3f}"})
        self._write()
        if self.tracker is not None:
            per_organ = metrics[(metrics["metric"] == "dice") & (metrics["label"] != 0)].groupby("organ")["value"]
            self.tracker.log({"val/dice": dice, "val/hd95": hd95,
                              **{f"val/dice/{o}": v for o, v in per_organ.mean().items() if np.isfinite(v)}}, done)
        self.say(f"validation at iteration {done}: DSC {dice:.4f}, HD95 {hd95:.2f} "
                 f"({', '.join(self.view.test_cases)})")
        if self.on_score is not None:
            self.on_score(done, dice)
