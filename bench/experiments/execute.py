"""Running a list of jobs with a command's options: the one place where jobs leave an experiment.

``opts.executor`` decides where: in this process (``local``), as a Slurm array
(``bench.experiments.executors.slurm``) or as Ray tasks (``...executors.ray``). The runs are the
same everywhere: each goes through ``bench.engine.runner.execute`` with the same spec and the
command's ``RunSettings`` (``opts.run``), as they are.
"""
from __future__ import annotations

import torch
from rich.text import Text

from bench.data.synapse import Dataset
from bench.engine.numerics import check_precision
from bench.engine.runner import Outcome, run_jobs
from bench.engine.runs import RunSpec
from bench.engine.train import Interrupted
from bench.env import parse_device, pick_device
from bench.experiments.executors import resources
from bench.experiments.executors.common import Submitted
from bench.experiments.options import RunOptions
from bench.protocol import Protocol

__all__ = ["Submitted", "execute_jobs", "run_device", "say_failures", "stopped", "where_runs"]


def run_device(opts: RunOptions) -> torch.device | None:
    """This machine's device for local runs, checked now; ``None`` on a cluster, whose nodes pick
    and check ``--device`` themselves (a login node needs no GPU to submit GPU runs)."""
    if opts.executor.name == "local":
        return pick_device(opts.run.device)
    if opts.run.device != "auto":
        parse_device(opts.run.device)
    return None


def where_runs(device: torch.device | None, opts: RunOptions) -> str:
    """The device of the header line: this machine's, or ``--device`` on the cluster's nodes."""
    return str(device) if opts.executor.name == "local" else f"{opts.run.device} on the {opts.executor.name} nodes"


def execute_jobs(jobs: list[tuple[RunSpec, Protocol]], ds: Dataset, device: torch.device | None,
                 opts: RunOptions) -> list[Outcome]:
    """Every job's outcome, in order: trained, reused, or recorded as failed.

    A precision the device cannot run stops everything before the first run (exit 2), not run by run
    (on a cluster's nodes, where the device is only known there, the run fails on its node instead).
    Raises ``Submitted`` when the jobs went to Slurm without ``--wait`` (the command's work is
    then done: it prints where they went and returns).
    """
    checked = device if device is not None else torch.device("cpu") if opts.run.device == "cpu" else None
    if checked is not None:
        for precision in dict.fromkeys(proto.precision for _, proto in jobs):
            check_precision(precision, checked)
    resources.check(opts.executor)
    if opts.executor.name != "local":  # --cpus-per-run below a protocol's threads: refused before anything
        for proto in {proto.name: proto for _, proto in jobs}.values():
            resources.cpus_per_run(opts.executor, proto)
    if opts.executor.name == "slurm":
        from bench.experiments.executors.slurm import execute_slurm

        return execute_slurm(jobs, ds, opts)
    if opts.executor.name == "ray":
        from bench.experiments.executors.ray import execute_ray

        return execute_ray(jobs, ds, opts)
    assert device is not None  # local runs: run_device picked it
    return run_jobs(jobs, ds, opts.run, device, opts.progress())


def stopped(e: Interrupted, say) -> int:
    """What an interrupted command says (what was kept is in ``e``), and its exit status (130)."""
    say(Text.assemble(("interrupted", "yellow"), f": {e}; run the same command again to resume"))
    return 130


def say_failures(outcomes: list[Outcome], say) -> int:
    """One line per run that did not complete; the exit status (1 if any, else 0)."""
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        say(Text.assemble((o.status, "red"), f": {o.run.model} seed {o.run.seed}: {o.message}"))
    return 1 if bad else 0
