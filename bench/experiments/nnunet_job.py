"""``bench nnunet``: nnU-Net v2 trained with its own recipe on our split, recorded as an external run.

One ``NnunetJob`` is one nnU-Net run: ``run_nnunet`` (bench.experiments.nnunet_run: export, plan, our split,
train, predict our test cases) in its workspace ``<results>/nnunet/<dataset>/<name>/``, then
``evaluate_external`` of the predictions into the external run ``external_id(dataset, name)`` with nnU-Net's
provenance, so ``bench report`` puts it beside the trained runs of the dataset. The workspace sits outside the
run folder: a re-score of the external run never touches nnU-Net's checkpoints or the predictions it reads.

The job runs here, as one Slurm array task or as one Ray task (``execute_nnunet``). A task requeued or retried
after a kill finds the same workspace (it comes from the run's identity) and resumes: finished steps are
skipped and training continues from nnU-Net's checkpoint (``--c``).

What decides the predictions (the dataset, the protocol's split, nnU-Net's configuration, plans, trainer and
budget) has one key, ``train_key``; with the protocol's evaluation it is the external run's ``key``. A
complete run of that key is reused; a workspace or a run of other settings is refused unless ``--force``,
which starts the workspace over once, in the submitting process (a requeued task resumes, never restarts).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from bench.data.synapse import Dataset
from bench.engine.external import check_name, evaluate_external
from bench.engine.results import METRICS, RunLocked, read_manifest, run_lock
from bench.engine.runner import Outcome
from bench.engine.runs import RunId, RunState, external_id, run_state
from bench.engine.train import Interrupted
from bench.env import pick_device
from bench.errors import BenchError
from bench.experiments.executors import resources
from bench.experiments.executors.common import Submitted, read_marker, set_threads, write_marker
from bench.experiments.executors.common import say as worker_say
from bench.experiments.nnunet import NnunetOptions, check_options, check_trainer, nnunet_version, training_fold
from bench.experiments.nnunet_run import run_nnunet
from bench.experiments.options import RunOptions
from bench.files import write_json
from bench.protocol import Protocol

WORKSPACES = "nnunet"  # under the results folder: <results>/nnunet/<dataset>/<name>/
SETTINGS = "segbench.json"  # in the workspace: the settings (and their key) it was made for
FAILED = "failed.json"  # in the workspace: why the last attempt stopped (a worker's BenchError)


def default_name(opts: NnunetOptions) -> str:
    return f"nnunet-{opts.configuration.replace('_', '-')}"


def workspace_dir(results: Path, run: RunId) -> Path:
    """nnU-Net's folders for the external run ``run`` (its raw, preprocessed and results folders, logs)."""
    return Path(results) / WORKSPACES / run.dataset / run.model


def _key(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class NnunetJob:
    """One nnU-Net run as it travels to a worker: picklable, with absolute paths."""

    ds: Dataset
    protocol: Protocol
    opts: NnunetOptions
    name: str
    results: Path
    device: str  # resolved on the worker's node
    force: bool = False  # replace an external run of other settings (the workspace was reset by the submitter)

    @property
    def run(self) -> RunId:
        return external_id(self.ds.name, self.name)

    @property
    def path(self) -> Path:
        return self.run.path(self.results)

    @property
    def work(self) -> Path:
        return workspace_dir(self.results, self.run)

    @property
    def settings(self) -> dict:
        """What decides nnU-Net's predictions (the device and the process counts do not)."""
        nn = {k: v for k, v in asdict(self.opts).items() if k not in ("processes", "augmentation_processes")}
        return {"data": self.ds.fingerprint(), "fold": training_fold(self.protocol),
                "split": {k: getattr(self.protocol.validation, k) for k in ("fraction", "during_run")}, "nnunet": nn}

    @property
    def train_key(self) -> str:
        return _key(self.settings)

    @property
    def key(self) -> str:
        return _key({"train": self.train_key, "evaluation": self.protocol.evaluation.model_dump()})

    def state(self) -> RunState:
        return run_state(self.path, self.key)

    def workspace_problem(self) -> str | None:
        """Why the workspace cannot be resumed for these settings (it was made for others), or None."""
        try:
            had = json.loads((self.work / SETTINGS).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return f"{self.work / SETTINGS} is unreadable"
        if had.get("key") == self.train_key:
            return None
        old, new = flat(had.get("settings", {})), flat(self.settings)
        differ = [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
        return f"{self.work} holds an nnU-Net run of other settings ({'; '.join(differ) or 'unknown'})"

    def run_here(self, say=print) -> Path:
        """Train (or resume) and predict in the workspace, then score into the external run; its folder."""
        device = pick_device(self.device)  # this node's
        if self.state() is RunState.COMPLETE and not self.force:  # a retried task whose run got recorded
            return self.path
        try:
            with run_lock(self.work):
                (self.work / FAILED).unlink(missing_ok=True)
                problem = self.workspace_problem()
                if problem:
                    raise BenchError(f"{problem}; use --force to start it over or --name for another run")
                write_json(self.work / SETTINGS, {"key": self.train_key, "settings": self.settings})
                result = run_nnunet(self.ds, self.protocol, self.work, self.opts, device, say)
                prov = result.provenance | {"train_key": self.train_key}
                evaluate_external(result.predictions, self.ds, self.name, self.results, self.protocol.evaluation,
                                  force=True, say=say, provenance=prov, key=self.key)
        except RunLocked as e:
            raise BenchError(f"nnU-Net: {e}") from None
        return self.path


def flat(settings: dict, prefix: str = "") -> dict[str, object]:
    """Every leaf of a nested dict under its dotted key (to name the settings that differ)."""
    out: dict[str, object] = {}
    for k, v in settings.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def prepare(job: NnunetJob, force: bool, say=print) -> NnunetJob | None:
    """The job to hand to a worker, checked before anything is written or submitted (``run_nnunet`` checks the
    trainer again where it runs), or None when its external run is complete and reused. ``force`` resets the
    workspace here, once."""
    nnunet_version()
    check_options(job.opts)
    check_name(job.name)
    state = job.state()
    if state is RunState.COMPLETE and not force:
        say(f"{job.name}: already complete, reused -> {job.path} (--force trains it again)")
        return None
    if state is RunState.CONFLICT and not force:
        raise BenchError(f"{job.path} holds the external run '{job.name}' of other settings; use --force to "
                         "train it again or --name for another run")
    problem = None if force else job.workspace_problem()
    if problem:
        raise BenchError(f"{problem}; use --force to start it over or --name for another run")
    check_trainer(job.opts.trainer, dict(os.environ))
    try:
        with run_lock(job.work):
            if force:
                for child in job.work.iterdir():  # the lock file stays: it is held
                    if child.name not in (".lock", ".lock.owner"):
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            # a queued job's settings, so that a command of other settings is refused before it starts
            write_json(job.work / SETTINGS, {"key": job.train_key, "settings": job.settings})
    except RunLocked as e:
        raise BenchError(f"nnU-Net: {e}; wait for it or stop it first") from None
    return replace(job, force=True) if force else job


def read_rows(job: NnunetJob) -> pd.DataFrame:
    """The external run's metric rows of the protocol's convention."""
    rows = pd.read_parquet(job.path / METRICS)
    return rows[rows["convention"] == job.protocol.evaluation.convention]


def record_failure(job: NnunetJob, message: str) -> None:
    """A worker's one-line failure, for the submitting command to print."""
    write_json(job.work / FAILED, {"error": message})


def failure(job: NnunetJob) -> str | None:
    try:
        return str(json.loads((job.work / FAILED).read_text())["error"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


# ----- where the job runs ------------------------------------------------------------------------

def execute_nnunet(job: NnunetJob, opts: RunOptions) -> Outcome:
    """The job's outcome, run where ``opts.executor`` says: here, as one Slurm array task or as one Ray task.

    Raises ``Submitted`` when it went to Slurm without ``--wait``.
    """
    ex = opts.executor.name
    resources.check(opts.executor)
    queued = _queued(job) if ex == "slurm" else None
    if queued and opts.run.force:
        raise BenchError(f"--force: Slurm job {queued[0]} still has '{job.name}' queued; scancel it first")
    todo = prepare(job, opts.run.force, say=opts.say)
    if todo is None:
        return Outcome(job.run, job.path, "skipped", "already complete")
    if ex == "local":
        return Outcome(job.run, todo.run_here(opts.say), "complete")
    before = read_manifest(job.path)  # with --force, a complete run of these settings stays until replaced
    why = _on_slurm(todo, queued, opts) if ex == "slurm" else _on_ray(todo, opts)
    if job.state() is RunState.COMPLETE and not (opts.run.force and read_manifest(job.path) == before):
        return Outcome(job.run, job.path, "complete")
    return Outcome(job.run, job.path, "failed", failure(job) or why)


def _queued(job: NnunetJob) -> tuple[str, str] | None:
    """(task, log) of a Slurm task an earlier command submitted for this run and that is still in the queue."""
    from bench.experiments.executors.slurm import queue

    marker = read_marker(job.work) or {}
    task = marker.get("job_id") if marker.get("executor") == "slurm" else None
    return (task, str(marker.get("log", ""))) if task and task in (queue([task]) or {}) else None


def _on_slurm(job: NnunetJob, queued: tuple[str, str] | None, opts: RunOptions) -> str:
    from bench.experiments.executors import slurm

    if queued:
        task, log = queued
        opts.say(f"{job.name}: already queued as Slurm job {task}; not submitted again")
    else:
        ids, described = slurm.submit(slurm_nnunet, [job], opts, job.protocol, "segbench-nnunet")
        task, log = ids[0][0], str(ids[0][1])
        write_marker(job.work, {"executor": "slurm", "job_id": task, "log": log})
        opts.say(f"submitted nnU-Net '{job.name}' as Slurm job {task} ({described}); log: {log}")
    if not opts.executor.wait:
        opts.say("run the same command again (or with --wait) for the table once it is done; nnU-Net's own log: "
                 f"{job.work / 'logs' / 'train.log'}")
        raise Submitted()
    try:
        states = slurm.wait({task: f"nnU-Net {job.name}"}, opts.say)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting; Slurm job {task} goes on") from None
    return f"Slurm task {task} ended ({states.get(task, 'state unknown')}); log: {log}"


def _on_ray(job: NnunetJob, opts: RunOptions) -> str:
    from bench.experiments.executors.ray import capacity, ray_session, remote

    ex = opts.executor
    gpus, cpus = resources.gpus_per_run(ex, opts.run.device, job.protocol), resources.cpus_per_run(ex, job.protocol)
    with ray_session(opts) as ray:
        opts.say(f"Ray ({capacity(ray, gpus, cpus)}): nnU-Net '{job.name}' as one task with {gpus} GPU(s) and "
                 f"{cpus} CPU(s)")
        try:
            ray.get(remote(ray, ray_nnunet, gpus, cpus).remote(job))
        except KeyboardInterrupt:
            raise Interrupted("the Ray task was stopped with the command") from None
        except Exception as e:  # the worker died RETRIES + 1 times, or the task raised
            return f"Ray task failed ({type(e).__name__}): {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return "the Ray task ended without recording the run"


def in_task(job: NnunetJob, cpus: int) -> None:
    """A worker's job: one nnU-Net run with the CPUs it was granted (nnU-Net would otherwise start
    min(12, the node's cores) augmentation processes), its failure written where the submitter reads it."""
    set_threads(cpus)
    if job.opts.augmentation_processes is None and cpus:
        job = replace(job, opts=replace(job.opts, augmentation_processes=max(cpus - 1, 0)))
    worker_say(f"nnU-Net '{job.name}': workspace {job.work} -> {job.path}")
    try:
        job.run_here(worker_say)
    except BenchError as e:
        worker_say(f"error: {e}")
        record_failure(job, str(e))
        raise
    worker_say(f"nnU-Net '{job.name}': complete -> {job.path}")


def slurm_nnunet(job: NnunetJob) -> None:
    """A Slurm array task: requeued on the warning signal (nnU-Net is stopped; the requeued task resumes with --c)."""
    from bench.experiments.executors.slurm import requeue_on_signal

    requeue_on_signal()
    in_task(job, int(os.environ.get("SLURM_CPUS_PER_TASK") or 0))


def ray_nnunet(job: NnunetJob) -> None:
    """A Ray task (a retry after its worker died resumes in the same workspace)."""
    import ray

    in_task(job, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
