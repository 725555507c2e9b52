"""Running a list of jobs with a command's options: the one place where jobs leave an experiment."""
from __future__ import annotations

import torch

from bench.data.synapse import Dataset
from bench.engine.numerics import check_precision
from bench.engine.runner import Outcome, RunSpec, run_jobs
from bench.experiments.options import RunOptions
from bench.protocol import Protocol


def execute_jobs(jobs: list[tuple[RunSpec, Protocol]], ds: Dataset, device: torch.device,
                 opts: RunOptions) -> list[Outcome]:
    """Every job's outcome, in order: trained, reused, or recorded as failed.

    A precision the device cannot run stops everything before the first run (exit 2), not run by run.
    """
    for precision in dict.fromkeys(proto.precision for _, proto in jobs):
        check_precision(precision, device)
    return run_jobs(jobs, ds, opts.results, device, force=opts.force, progress=opts.progress,
                    keep_weights=opts.keep_weights, track=tuple(opts.track))


def say_failures(outcomes: list[Outcome], say) -> int:
    """One line per run that did not complete; the exit status (1 if any, else 0)."""
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        say(f"[red]{o.status}[/]: {o.run.model} seed {o.run.seed}: {o.message}")
    return 1 if bad else 0
