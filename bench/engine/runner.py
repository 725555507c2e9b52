"""A sweep: every (model, seed) through the same protocol, one run folder each.

A failure is a row, not a crash of the sweep: a run that raises or diverges is recorded in
its manifest and the sweep goes on. Completed runs with the same settings are skipped.
"""
from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress

from bench import env
from bench.data.synapse import Dataset
from bench.engine import numerics
from bench.engine.evaluation import PRED_DIR, evaluate_model
from bench.engine.inference import InferenceClock
from bench.engine.memory import PeakMemory
from bench.engine.results import (
    CHECKPOINT,
    EXPORT_DIR,
    FINAL_WEIGHTS,
    MANIFEST,
    METRICS,
    TRAIN_LOG,
    RunLocked,
    metrics_problem,
    read_manifest,
    run_lock,
    write_metrics,
)
from bench.engine.runs import (
    RunId,
    RunSpec,
    RunState,
    add_identity,
    config_key,
    conflict_message,
    run_config,
    run_id,
    run_state,
    same_run,
)
from bench.engine.settings import RunSettings
from bench.engine.tracking import Tracking
from bench.engine.train import Diverged, Interrupted, StopFlag, seed_everything, train
from bench.engine.validation import VALIDATION_LOG, Validator, held_out_view
from bench.errors import BenchError
from bench.files import write_json
from bench.protocol import Protocol
from models import create_model
from models.compute import gflops


@dataclass
class Outcome:
    run: RunId
    path: Path
    status: str  # complete | skipped | failed | diverged | interrupted | locked
    message: str = ""

    @property
    def ok(self) -> bool:
        """The run's metrics are there: trained now, or complete from before."""
        return self.status in ("complete", "skipped")


def reset_run(run_dir: Path) -> None:
    """Delete a run's results (``--force`` on an executor that runs it elsewhere, before submitting)."""
    with run_lock(run_dir):
        _clear(run_dir)


def _clear(run_dir: Path) -> None:
    for name in (MANIFEST, METRICS, CHECKPOINT, CHECKPOINT + ".prev", FINAL_WEIGHTS, TRAIN_LOG, VALIDATION_LOG):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / PRED_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)


def execute(spec: RunSpec, protocol: Protocol, ds: Dataset, settings: RunSettings, device: torch.device,
            progress: Progress | None = None, say=print, wait: bool = False, where: dict | None = None) -> Outcome:
    """Train and evaluate one run inside its lock; never raises except on interruption.

    ``settings`` are the command's (results folder, --force, weights kept, trackers); ``where``
    names the executor and the place the run executes (Slurm job, Ray task), for the manifest;
    every executor calls this same function with the same spec.

    Without ``wait`` a run locked by another process comes back as ``locked`` (the sweep
    returns to it later with ``wait=True`` and then reuses what the other process made).
    """
    run = run_id(spec, protocol, ds)
    run_dir = run.path(settings.results)
    config = run_config(spec, protocol, ds)
    key = config_key(config)
    try:
        lock = run_lock(run_dir, wait=wait, say=say)
        lock.__enter__()
    except RunLocked as e:
        return Outcome(run, run_dir, "locked", str(e))
    try:
        before = read_manifest(run_dir) or {}
        done = _prepare(run, run_dir, key, settings.force, wait, say)
        if done is not None:
            return done
        job = _Job(spec, protocol, ds, run, run_dir, device, progress, say,
                   _tracker(settings, run, run_dir, spec, protocol, ds, device, say))
        with numerics.threads(protocol, device):  # every executor: the protocol's count, for this run only
            manifest = _start_manifest(job, config, key, where or {"name": "local"})
            out = _train_and_score(job, manifest, before if same_run(before, key) else {})
        if out.status == "complete" and not settings.keep_weights:
            (run_dir / FINAL_WEIGHTS).unlink(missing_ok=True)
        return out
    finally:
        lock.__exit__(None, None, None)


def _prepare(run: RunId, run_dir: Path, key: str, force: bool, wait: bool, say) -> Outcome | None:
    """The outcome when the folder decides it (reused, or a conflict); else clears what must not be resumed."""
    state = run_state(run_dir, key)
    if state is RunState.COMPLETE and (not force or wait):
        return Outcome(run, run_dir, "skipped", "already complete")
    if state is RunState.CONFLICT and not force:
        return Outcome(run, run_dir, "failed", conflict_message(run_dir))
    if state is RunState.STALE and (read_manifest(run_dir) or {}).get("status") == "complete":
        # complete no more (its metrics are torn): evaluated again from model.pt, trained again if it is gone
        again = "evaluating it again" if (run_dir / FINAL_WEIGHTS).is_file() else "training it again"
        say(f"{run_dir / METRICS} {metrics_problem(run_dir)}: {again}")
    other_settings = state is RunState.CONFLICT or (state is RunState.ABSENT and read_manifest(run_dir) is not None)
    if force or other_settings:
        _clear(run_dir)  # a checkpoint of other settings must not be resumed (a torn manifest keeps its files)
    return None


@dataclass
class _Job:
    """One run being executed: what it is, where it goes, and who hears about it."""

    spec: RunSpec
    protocol: Protocol
    ds: Dataset
    run: RunId
    path: Path
    device: torch.device
    progress: Progress | None
    say: Callable[..., None]
    tracker: Tracking

    @property
    def label(self) -> str:
        return f"{self.spec.label} seed {self.spec.seed}"


def _tracker(settings: RunSettings, run: RunId, run_dir: Path, spec: RunSpec, protocol: Protocol, ds: Dataset,
             device: torch.device, say) -> Tracking:
    params = {"dataset": run.dataset, "dataset_fingerprint": ds.fingerprint(), "protocol": run.protocol,
              "protocol_hash": protocol.hash(), "model": spec.label, "seed": spec.seed, "lr": spec.lr,
              "precision": protocol.precision, "threads": protocol.threads, "batch_size": protocol.batch_size,
              "input_size": protocol.input_size, "device": str(device)}
    return Tracking(settings.track, results=settings.results, run_dir=run_dir, experiment=f"segbench/{run.dataset}",
                    name=f"{run.protocol}/{run.model}/seed{run.seed}", say=say, params=params)


def _start_manifest(job: _Job, config: dict, key: str, where: dict) -> dict:
    """The manifest of a run that starts: resolved config, versions, device, numerics; written at once."""
    manifest = {
        "status": "running", "key": key, "run": job.run.__dict__, **config, "executor": where,
        "protocol_hash": job.protocol.hash(), "git": env.git_revision(), "packages": env.package_versions(),
        **env.device_info(job.device), **numerics.record(job.protocol, job.device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(job.path / MANIFEST, manifest)
    return manifest


def _train_and_score(job: _Job, manifest: dict, before: dict) -> Outcome:
    """Build, train and evaluate; the manifest records the outcome (a failure is a row, not a crash)."""
    t0 = time.perf_counter()
    memory = PeakMemory(job.device).__enter__()
    try:
        model = _build(job, manifest)
        _train(job, model, manifest, before)
        _evaluate(job, model, manifest)
        status, message = "complete", ""
    except (Interrupted, KeyboardInterrupt) as e:  # KeyboardInterrupt: a second signal stops at once
        memory.__exit__(None, None, None)
        manifest.update(status="interrupted", error=str(e) or "stopped at once by a second signal",
                        **memory.record())
        write_json(job.path / MANIFEST, manifest)
        job.tracker.close("interrupted")
        raise
    except Diverged as e:
        status, message = "diverged", str(e)
    except Exception as e:  # one model's failure must not end the sweep
        status, message = "failed", str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        manifest["traceback"] = traceback.format_exc(limit=8)
    memory.__exit__(None, None, None)
    manifest.update(status=status, error=message or None, wall_seconds=round(time.perf_counter() - t0, 2),
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **memory.record())
    job.tracker.log({"memory/peak_host_mb": manifest["peak_host_memory_mb"]}, job.tracker.step)
    job.tracker.close(status)
    (job.path / (CHECKPOINT + ".prev")).unlink(missing_ok=True)
    write_json(job.path / MANIFEST, manifest)  # last: only now does the run count as complete
    return Outcome(job.run, job.path, status, message)


def _build(job: _Job, manifest: dict) -> torch.nn.Module:
    """The run's model, seeded: identical initial weights for the same seed."""
    seed_everything(job.spec.seed)
    ds, protocol = job.ds, job.protocol
    model = create_model(job.spec.model, num_classes=ds.num_classes, in_channels=ds.channels,
                         img_size=protocol.input_size, weights=job.spec.weights, **job.spec.knobs)
    manifest["in_channels"] = ds.channels
    manifest["parameters"] = sum(p.numel() for p in model.parameters())
    manifest["gflops"] = gflops(model, protocol.input_size, ds.channels)
    manifest["pretrained"] = job.spec.weights is not None
    return model


def _train(job: _Job, model: torch.nn.Module, manifest: dict, before: dict) -> None:
    """Train (or resume) the model; the training figures go into the manifest, written at once."""
    train_ds, validate = job.ds, None
    if job.protocol.validation.during_run:  # train on the other training cases, score these as it goes
        train_ds = held_out_view(job.ds, job.protocol)
        validate = Validator(model, train_ds, job.protocol, job.device, job.path, job.tracker, job.say,
                             progress=job.progress)
        manifest["train_slices"] = len(train_ds.train_slices)
    result = train(model, train_ds, job.protocol, job.spec.seed, job.path, job.spec.lr, job.device, job.progress,
                   job.label, job.say, on_iteration=validate, tracker=job.tracker)
    manifest.update(iterations=result.iterations, resumed_from=result.resumed_from,
                    train_seconds=round(result.seconds, 2),
                    train_images_per_second=round(result.images_per_second, 2))
    if result.resumed_from == result.iterations:  # only the evaluation was left: keep the training figures
        for k in ("train_seconds", "train_images_per_second"):
            manifest[k] = before.get(k)
    write_json(job.path / MANIFEST, manifest)  # the training figures survive a crash during evaluation


def _evaluate(job: _Job, model: torch.nn.Module, manifest: dict) -> None:
    """Score the test cases; metrics.parquet in the long format, with the run's identity columns.

    A signal stops it between cases: the trained weights stay in model.pt (the same command then
    evaluates them again, without training) and the manifest says ``interrupted``.
    """
    t_eval, clock, ev = time.perf_counter(), InferenceClock(), job.protocol.evaluation
    try:  # the evaluation's own passes are timed and its memory watched: test-time figures at no extra cost
        with StopFlag() as stop, PeakMemory(job.device) as memory:
            metrics = evaluate_model(model, job.ds, job.protocol.input_size, ev, job.device, job.path,
                                     job.progress, f"{job.label} eval", job.say, lambda: stop.signal, clock)
    except Interrupted as e:
        kept = f"{FINAL_WEIGHTS} kept: the same command evaluates it again without training"
        job.say(f"{job.label}: {e}; {kept}")
        raise type(e)(f"{e}; {kept}") from None
    add_identity(metrics, job.run, job.protocol.hash())
    write_metrics(job.path / METRICS, metrics)
    manifest["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
    manifest.update(**clock.record(ev.batch_size, job.protocol.input_size), **memory.record(prefix="eval_"))
    job.tracker.test_metrics(metrics)


def run_jobs(jobs: list[tuple[RunSpec, Protocol]], ds: Dataset, settings: RunSettings, device: torch.device,
             progress: Progress) -> list[Outcome]:
    """Execute runs in order; runs another process holds are done last, after waiting for it."""
    say = progress.console.print
    outcomes = []
    with progress:
        for spec, proto in jobs:
            outcomes.append(execute(spec, proto, ds, settings, device, progress, say=say))
            _say_outcome(say, outcomes[-1])
        for i, (spec, proto) in enumerate(jobs):
            if outcomes[i].status == "locked":
                say(f"waiting for another process: {outcomes[i].message}")
                outcomes[i] = execute(spec, proto, ds, settings, device, progress, say=say, wait=True)
                _say_outcome(say, outcomes[i])
    return outcomes


def _say_outcome(say, out: Outcome) -> None:
    note = f" ({out.message})" if out.message else ""
    say(f"{out.run.model} seed {out.run.seed}: {out.status}{note} -> {out.path}")
