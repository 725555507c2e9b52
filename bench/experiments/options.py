"""The options every training command shares, as one object.

``bench run``, ``bench ablate``, ``bench paper`` and ``bench tune`` build one frozen ``RunOptions``
in ``bench.cli`` (with ``bench.cli.options``) and pass it down, instead of threading a dozen parameters
through every layer; its ``run`` field (``bench.engine.settings.RunSettings``) goes on to the runner
and every executor as it is. A field left at ``None`` means "the command's default" (the
protocol's seeds, an ablation spec's dataset, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from bench.engine.progress import progress_display
from bench.engine.settings import RunSettings
from bench.protocol import Protocol, resolve_protocol

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
    slurm_args: dict[str, str] = field(default_factory=dict)  # any other sbatch option (checked by resources)
    slurm_overrides: tuple[str, ...] = ()  # --slurm-override: keys the harness sets that slurm_args replace
    wait: bool = False  # Slurm: block until every task ends (Ray always does)
    ray_address: str | None = None  # Ray: a cluster to join (default: $RAY_ADDRESS, else a local Ray)
    workers: int = 1  # bench tune: processes sharing each study


@cache
def plain_console() -> Console:
    """This process's console for options that came without one: text is printed as text, never markup."""
    return Console(soft_wrap=True, markup=False, emoji=False)


@dataclass(frozen=True)
class RunOptions:
    """A training command's options: the recipe and data it asks for, where reports go, and the
    ``RunSettings`` that reach the engine unchanged (``run``) with the executor that runs them."""

    protocol: str | None = None  # a shipped name or a YAML file; None: the command's default
    sets: tuple[str, ...] = ()  # --set KEY=VALUE overrides (and the shorthands --iterations, ...)
    dataset: str | None = None  # see ``bench.data.resolve.resolve_dataset``; None: the command's default
    data_root: Path | None = None
    fold: int | None = None
    seeds: tuple[int, ...] = ()  # empty: the protocol's (or an ablation spec's)
    reports: Path = Path("reports")
    report: bool = True  # bench run: write the full report after the runs
    run: RunSettings = RunSettings()
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    console: Console | None = field(default=None, compare=False)  # None: a plain console (cluster workers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reports", Path(self.reports))
        object.__setattr__(self, "sets", tuple(self.sets))
        object.__setattr__(self, "seeds", tuple(self.seeds))

    def load_protocol(self, default: str = "cpu", changes: dict | None = None) -> Protocol:
        """The command's protocol: ``--protocol`` (or ``default``) with its ``--set`` overrides, then
        ``changes`` (an ablation row's protocol knob), all through ``bench.protocol.derive``."""
        return resolve_protocol(self.protocol or default, self.sets, changes)

    def progress(self) -> Progress:
        """A fresh progress display of training, evaluation and trials on this command's console."""
        return progress_display(self.out)

    @property
    def out(self) -> Console:
        """The command's console, or a plain one (made where it is used: a console does not pickle, and
        the options travel to cluster workers)."""
        return self.console if self.console is not None else plain_console()

    @property
    def say(self):
        return self.out.print

    def for_workers(self) -> RunOptions:
        """These options as they travel to cluster workers: absolute results folder, no console."""
        return replace(self, run=replace(self.run, results=self.run.results.resolve()), console=None,
                       executor=ExecutorOptions())
