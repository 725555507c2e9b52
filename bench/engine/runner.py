"""A sweep: every (model, seed) through the same protocol, one run folder each.

A failure is a row, not a crash of the sweep: a run that raises or diverges is recorded in
its manifest and the sweep goes on. Completed runs with the same settings are skipped.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import Progress

from bench import env
from bench.data.preprocessing import describe
from bench.data.synapse import Dataset
from bench.engine import numerics
from bench.engine.evaluation import PRED_DIR, evaluate_model
from bench.engine.memory import PeakMemory
from bench.engine.results import (
    CHECKPOINT,
    EXPORT_DIR,
    FINAL_WEIGHTS,
    MANIFEST,
    METRICS,
    TRAIN_LOG,
    RunId,
    RunLocked,
    metrics_problem,
    read_manifest,
    run_lock,
    run_path,
    write_metrics,
)
from bench.engine.tracking import Tracking
from bench.engine.train import Diverged, Interrupted, seed_everything, train
from bench.engine.validation import VALIDATION_LOG, Validator, held_out_view
from bench.errors import BenchError
from bench.files import write_json
from bench.protocol import Protocol, recipe
from models import create_model
from models.compute import gflops


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one run's numbers."""

    model: str
    seed: int
    lr: float
    lr_source: str
    weights: str | None = None
    knobs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The run's model folder name: the registry name, plus its knobs when set."""
        if not self.knobs:
            return self.model
        return self.model + "@" + ",".join(f"{k}={v}" for k, v in sorted(self.knobs.items()))


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


def run_config(spec: RunSpec, protocol: Protocol, ds: Dataset) -> dict:
    config = {
        "model": spec.model, "knobs": spec.knobs, "weights": spec.weights, "seed": spec.seed,
        "lr": spec.lr, "lr_source": spec.lr_source,
        "protocol": protocol.model_dump(), "protocol_name": protocol.name, "protocol_hash": protocol.hash(),
        "dataset": {"name": ds.name, "root": str(Path(ds.root).resolve()), "fingerprint": ds.fingerprint(),
                    "num_classes": ds.num_classes, "organs": ds.organs, "channels": ds.channels,
                    "preprocessing": describe(ds).to_dict()},
        "convention": protocol.evaluation.convention,
    }
    if protocol.validation.during_run:  # the model trains without these cases
        config["validation_cases"] = sorted(held_out_view(ds, protocol).test_cases)
    return config


def config_key(config: dict) -> str:
    """Hash of what decides the numbers (the data's location may move without changing them; the
    protocol counts through ``bench.protocol.recipe``, so keys added later at their neutral values
    leave the key of a run made before them unchanged)."""
    protocol = recipe(config["protocol"]) | {k: config["protocol"].get(k) for k in ("name", "description")}
    data = {k: v for k, v in config.items() if k != "dataset"} | {"data": config["dataset"]["fingerprint"],
                                                                 "protocol": protocol}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def same_run(manifest: dict | None, key: str) -> bool:
    """The manifest is of a run with these settings (``key``), trained at the precision they say."""
    return bool(manifest) and manifest.get("key") == key and not numerics.legacy_autocast(manifest)


def check_conflict(run_dir: Path, key: str) -> str | None:
    """A message if a *completed* run with other settings sits in this folder."""
    m = read_manifest(run_dir)
    if m and m.get("status") == "complete" and not same_run(m, key):
        return (f"{run_dir} holds a completed run with different settings "
                f"(protocol {m.get('protocol_hash')}, {numerics.precision_of(m)}, lr {m.get('lr')}); use --force "
                f"to replace it or --results to write elsewhere")
    return None


def reset_run(run_dir: Path) -> None:
    """Delete a run's results (``--force`` on an executor that runs it elsewhere, before submitting)."""
    with run_lock(run_dir):
        _clear(run_dir)


def _clear(run_dir: Path) -> None:
    for name in (MANIFEST, METRICS, CHECKPOINT, CHECKPOINT + ".prev", FINAL_WEIGHTS, TRAIN_LOG, VALIDATION_LOG):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / PRED_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)


def execute(
    spec: RunSpec, protocol: Protocol, ds: Dataset, results: Path, device: torch.device,
    force: bool = False, progress: Progress | None = None, say=print, wait: bool = False,
    keep_weights: bool = True, track: tuple[str, ...] = (), where: dict | None = None,
) -> Outcome:
    """Train and evaluate one run inside its lock; never raises except on interruption.

    A completed run keeps its trained weights in ``model.pt`` unless ``keep_weights`` is off.
    ``track`` names live trackers (``bench.engine.tracking``) that follow the run.
    ``where`` names the executor and the place the run executes (Slurm job, Ray task), for
    the manifest; every executor calls this same function with the same spec.

    Without ``wait`` a run locked by another process comes back as ``locked`` (the sweep
    returns to it later with ``wait=True`` and then reuses what the other process made).
    """
    run = RunId(ds.name, protocol.name, spec.label, spec.seed)
    run_dir = run_path(results, run)
    config = run_config(spec, protocol, ds)
    key = config_key(config)
    try:
        lock = run_lock(run_dir, wait=wait, say=say)
        lock.__enter__()
    except RunLocked as e:
        return Outcome(run, run_dir, "locked", str(e))
    try:
        old = read_manifest(run_dir)
        if old and old.get("status") == "complete" and same_run(old, key) and (not force or wait):
            problem = metrics_problem(run_dir)
            if problem is None:
                return Outcome(run, run_dir, "skipped", "already complete")
            # complete no more: evaluated again from model.pt (trained again only if it is gone)
            again = "evaluating it again" if (run_dir / FINAL_WEIGHTS).is_file() else "training it again"
            say(f"[yellow]{run_dir / METRICS} {problem}: {again}[/]")
        if force or (old and not same_run(old, key)):
            _clear(run_dir)  # other settings: a checkpoint from them must not be resumed
        tracker = Tracking(track, results=results, run_dir=run_dir, experiment=f"segbench/{run.dataset}",
                           name=f"{run.protocol}/{run.model}/seed{run.seed}", say=say,
                           params={"dataset": run.dataset, "dataset_fingerprint": ds.fingerprint(),
                                   "protocol": run.protocol, "protocol_hash": protocol.hash(), "model": spec.label,
                                   "seed": spec.seed, "lr": spec.lr, "precision": protocol.precision,
                                   "batch_size": protocol.batch_size, "input_size": protocol.input_size,
                                   "device": str(device)})
        out = _train_and_score(spec, protocol, ds, run, run_dir, config, key, device, progress, say, old or {},
                               tracker, where or {"name": "local"})
        if out.status == "complete" and not keep_weights:
            (run_dir / FINAL_WEIGHTS).unlink(missing_ok=True)
        return out
    finally:
        lock.__exit__(None, None, None)


def _train_and_score(spec, protocol, ds, run, run_dir, config, key, device, progress, say, before: dict,
                     tracker: Tracking, where: dict) -> Outcome:
    manifest = {
        "status": "running", "key": key, "run": run.__dict__, **config, "executor": where,
        "protocol_hash": protocol.hash(), "git": env.git_revision(), "packages": env.package_versions(),
        **env.device_info(device), **numerics.record(protocol, device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / MANIFEST, manifest)
    t0 = time.perf_counter()
    label = f"{spec.label} seed {spec.seed}"
    memory = PeakMemory(device).__enter__()
    try:
        seed_everything(spec.seed)  # identical initial weights for the same seed
        model = create_model(spec.model, num_classes=ds.num_classes, in_channels=ds.channels,
                             img_size=protocol.input_size, weights=spec.weights, **spec.knobs)
        manifest["in_channels"] = ds.channels
        manifest["parameters"] = sum(p.numel() for p in model.parameters())
        manifest["gflops"] = gflops(model, protocol.input_size, ds.channels)
        manifest["pretrained"] = spec.weights is not None
        train_ds, validate = ds, None
        if protocol.validation.during_run:  # train on the other training cases, score these as it goes
            train_ds = held_out_view(ds, protocol)
            validate = Validator(model, train_ds, protocol, device, run_dir, tracker, say)
            manifest["train_slices"] = len(train_ds.train_slices)
        result = train(model, train_ds, protocol, spec.seed, run_dir, spec.lr, device, progress, label, say,
                       on_iteration=validate, tracker=tracker)
        manifest.update(iterations=result.iterations, resumed_from=result.resumed_from,
                        train_seconds=round(result.seconds, 2),
                        train_images_per_second=round(result.images_per_second, 2))
        if result.resumed_from == result.iterations:  # only the evaluation was left: keep the training figures
            for k in ("train_seconds", "train_images_per_second"):
                manifest[k] = before.get(k) if before.get("key") == key else None
        write_json(run_dir / MANIFEST, manifest)  # the training figures survive a crash during evaluation
        t_eval = time.perf_counter()
        metrics = evaluate_model(model, ds, protocol.input_size, protocol.evaluation, device,
                                 run_dir, progress, f"{label} eval")
        for col, value in (("dataset", run.dataset), ("protocol", run.protocol), ("model", run.model),
                           ("seed", run.seed), ("protocol_hash", protocol.hash())):
            metrics.insert(0, col, value)
        write_metrics(run_dir / METRICS, metrics)
        manifest["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
        tracker.test_metrics(metrics)
        status, message = "complete", ""
    except Interrupted as e:
        memory.__exit__(None, None, None)
        manifest.update(status="interrupted", error=str(e), **memory.record())
        write_json(run_dir / MANIFEST, manifest)
        tracker.close("interrupted")
        raise
    except Diverged as e:
        status, message = "diverged", str(e)
    except Exception as e:  # one model's failure must not end the sweep
        status, message = "failed", str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
        manifest["traceback"] = traceback.format_exc(limit=8)
    memory.__exit__(None, None, None)
    manifest.update(status=status, error=message or None, wall_seconds=round(time.perf_counter() - t0, 2),
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **memory.record())
    tracker.log({"memory/peak_host_mb": manifest["peak_host_memory_mb"]}, tracker.step)
    tracker.close(status)
    (run_dir / (CHECKPOINT + ".prev")).unlink(missing_ok=True)
    write_json(run_dir / MANIFEST, manifest)  # last: only now does the run count as complete
    return Outcome(run, run_dir, status, message)


def run_jobs(
    jobs: list[tuple[RunSpec, Protocol]], ds: Dataset, results: Path, device: torch.device, *,
    force: bool, progress: Progress, keep_weights: bool = True, track: tuple[str, ...] = (),
) -> list[Outcome]:
    """Execute runs in order; runs another process holds are done last, after waiting for it."""
    say = progress.console.print
    outcomes = []
    with progress:
        for spec, proto in jobs:
            outcomes.append(execute(spec, proto, ds, results, device, force, progress, say=say,
                                   keep_weights=keep_weights, track=track))
            _say_outcome(say, outcomes[-1])
        for i, (spec, proto) in enumerate(jobs):
            if outcomes[i].status == "locked":
                say(f"waiting for another process: {outcomes[i].message}")
                outcomes[i] = execute(spec, proto, ds, results, device, force, progress, say=say, wait=True,
                                      keep_weights=keep_weights, track=track)
                _say_outcome(say, outcomes[i])
    return outcomes


def _say_outcome(say, out: Outcome) -> None:
    note = f" ({out.message})" if out.message else ""
    say(f"{out.run.model} seed {out.run.seed}: {out.status}{note} -> {out.path}")
