"""What every executor shares: the job a worker receives, what is left to run, and reading outcomes.

A worker receives a ``RunJob`` (everything ``runner.execute`` needs, picklable, with absolute
paths) and calls ``run_here``; the submitting process decides beforehand what is left to run
(``plan``) and reads each run's outcome from its manifest afterwards (``outcome_from_folder``).
A run handed to a scheduler gets a ``job.json`` in its folder naming the job, for ``bench status``
and for the next command (which then does not submit it twice).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.data.synapse import Dataset
from bench.engine.results import MANIFEST, RunLocked, read_manifest, run_lock
from bench.engine.runner import Outcome, execute, reset_run
from bench.engine.runs import JOB_MARKER, RunId, RunSpec, RunState, config_key, run_config, run_id, run_state, same_run
from bench.engine.settings import RunSettings
from bench.env import pick_device
from bench.errors import BenchError
from bench.experiments.options import RunOptions
from bench.files import write_json
from bench.protocol import Protocol

FINISHED = ("complete", "failed", "diverged")


class Submitted(Exception):  # noqa: N818 (a state, not an error)
    """The runs were handed to a scheduler and the command returns before they end."""


@dataclass(frozen=True)
class RunJob:
    """One run as it travels to a worker: the engine's arguments, picklable, with absolute paths."""

    spec: RunSpec
    protocol: Protocol
    ds: Dataset
    settings: RunSettings  # the command's, as they are (the device is resolved on the worker's node)

    @property
    def run(self) -> RunId:
        return run_id(self.spec, self.protocol, self.ds)

    @property
    def path(self) -> Path:
        return self.run.path(self.settings.results)

    @property
    def key(self) -> str:
        return config_key(run_config(self.spec, self.protocol, self.ds))

    @property
    def name(self) -> str:
        return f"{self.spec.label} seed {self.spec.seed}"


def plan(jobs: list[tuple[RunSpec, Protocol]], ds: Dataset, opts: RunOptions) -> list[RunJob | Outcome]:
    """Per job, in order: the ``RunJob`` to execute, or the ``Outcome`` of a run already complete.

    Completed runs are never handed to a worker. With ``--force`` the runs are reset here, once,
    so that a worker that is requeued later resumes instead of starting over (its settings say
    no more --force).
    """
    ds = replace(ds, root=Path(ds.root).resolve())  # workers may start in another folder
    settings = replace(opts.for_workers().run, force=False)
    out: list[RunJob | Outcome] = []
    for spec, proto in jobs:
        job = RunJob(spec, proto, ds, settings)
        if not opts.run.force and run_state(job.path, job.key) is RunState.COMPLETE:
            out.append(Outcome(job.run, job.path, "skipped", "already complete"))
            continue
        if opts.run.force:
            try:
                reset_run(job.path)
            except RunLocked as e:
                raise BenchError(f"--force: {e}; wait for it or stop it first") from None
        out.append(job)
    return out


def outcome_from_folder(job: RunJob, why: str) -> Outcome:
    """A finished run's outcome from its manifest; otherwise failed, with ``why`` (the job state, the log)."""
    m = read_manifest(job.path) or {}
    if same_run(m, job.key) and m.get("status") in FINISHED:
        return Outcome(job.run, job.path, m["status"], m.get("error") or "")
    state = m.get("status", "not started")
    return Outcome(job.run, job.path, "failed", f"run {state}: {why}")


def write_marker(run_dir: Path, info: dict) -> None:
    write_json(Path(run_dir) / JOB_MARKER, info | {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_marker(run_dir: Path) -> dict | None:
    """The ``job.json`` of a run folder; None if there is none or it is not a JSON object (torn, foreign)."""
    try:
        marker = json.loads((Path(run_dir) / JOB_MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def set_threads(cpus: int | None, workers: int = 0) -> None:
    """The worker process's torch threads: the CPUs the scheduler granted less the data-loader workers',
    unless OMP_NUM_THREADS says otherwise (without a cgroup, torch would start one thread per core of
    the node and runs sharing a node would thrash). A run on a CPU then uses its protocol's count
    (``numerics.threads``); this is what the rest of the process (and a run on a GPU) uses."""
    if cpus and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, cpus - workers))


def say(text: str) -> None:
    print(text, flush=True)  # worker logs are files: every line at once


def run_here(job: RunJob, where: dict) -> Outcome:
    """Execute one run in this process (a worker): the engine's ``execute``, waiting for the lock."""
    try:
        device = pick_device(job.settings.device)  # this node's: a GPU the submitting machine may not have
    except BenchError as e:
        say(f"{job.name}: {e}")
        return mark_failed(job, f"{e} (on {where.get('node', 'this node')})")
    return execute(job.spec, job.protocol, job.ds, job.settings, device, progress=None, say=say, wait=True,
                   where=where)


def mark_failed(job: RunJob, message: str) -> Outcome:
    """Record a run whose worker is gone for good as failed (its manifest, if it started), and its outcome."""
    try:
        with run_lock(job.path):
            m = read_manifest(job.path)
            if m and same_run(m, job.key) and m.get("status") not in FINISHED:
                write_json(job.path / MANIFEST, m | {"status": "failed", "error": message})
    except RunLocked:
        pass  # someone is running it again: their manifest is the truth
    return Outcome(job.run, job.path, "failed", message)
