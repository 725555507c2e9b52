"""The options every training command shares, as one object.

``bench run``, ``bench ablate``, ``bench paper`` and ``bench tune`` build one ``RunOptions`` in
``cli.py`` and pass it down, instead of threading a dozen parameters through every layer. A
field left at ``None`` means "the command's default" (the protocol's seeds, an ablation spec's
dataset, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.engine.tracking import parse_track
from bench.protocol import Protocol, resolve_protocol


def training_progress(console: Console) -> Progress:
    """The progress bar of training and evaluation: iteration, loss, LR, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
    )


EXECUTORS = ("local", "slurm", "ray")


@dataclass
class ExecutorOptions:
    """Where the runs of a command execute: this process (``local``), one Slurm array task per
    run (``slurm``), or one Ray task per run (``ray``). Only the place changes, never the run.

    ``None`` means the default that ``bench.experiments.executors.resources`` works out
    (GPUs from the device and protocol, CPUs from the protocol's data-loader workers) or the
    cluster's own default (partition, memory, time limit).
    """

    name: str = "local"
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    partition: str | None = None  # Slurm
    mem: str | None = None  # Slurm --mem, e.g. 32G
    time: str | None = None  # Slurm --time, e.g. 8:00:00 or 2-00:00:00
    max_parallel: int | None = None  # Slurm: the array's %K
    slurm_args: dict[str, str] = field(default_factory=dict)  # any other sbatch option
    wait: bool = False  # Slurm: block until every task ends (Ray always does)
    ray_address: str | None = None  # Ray: a cluster to join (default: $RAY_ADDRESS, else a local Ray)
    workers: int = 1  # bench tune: processes sharing each study


@dataclass
class RunOptions:
    """Where runs come from and go to, and how they are executed."""

    protocol: str | None = None  # a shipped name or a YAML file
    sets: list[str] = field(default_factory=list)  # --set KEY=VALUE overrides of the protocol
    dataset: str | None = None  # see ``bench.data.resolve.resolve_dataset``
    data_root: Path | None = None
    fold: int | None = None
    seeds: list[int] = field(default_factory=list)  # empty: the protocol's (or an ablation spec's)
    results: Path = Path("results")
    reports: Path = Path("reports")
    iterations: int | None = None  # overrides the protocol's budget
    checkpoint_every: int | None = None
    device: str = "auto"
    force: bool = False  # redo completed runs
    keep_weights: bool = True  # keep model.pt of completed runs
    track: list[str] = field(default_factory=list)  # live trackers: tensorboard, mlflow
    report: bool = True  # bench run: write the full report after the runs
    console: Console = field(default_factory=Console)
    progress: Progress | None = None  # default: ``training_progress(console)``
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)

    def __post_init__(self) -> None:
        if self.progress is None:
            self.progress = training_progress(self.console)
        self.results, self.reports = Path(self.results), Path(self.reports)
        self.track = parse_track(self.track)

    def load_protocol(self, default: str = "cpu", **overrides) -> Protocol:
        """The command's protocol: ``--protocol`` (or ``default``), its ``--set`` overrides, then
        ``overrides`` from the command's own flags (``iterations=...``; None values ignored)."""
        return resolve_protocol(self.protocol or default, self.sets).override(**overrides)

    @property
    def say(self):
        return self.console.print
