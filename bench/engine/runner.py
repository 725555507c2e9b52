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
from bench.data.synapse import Dataset
from bench.engine.evaluation import PRED_DIR, evaluate_model
from bench.engine.results import (
    CHECKPOINT,
    FINAL_WEIGHTS,
    MANIFEST,
    METRICS,
    TRAIN_LOG,
    RunId,
    RunLocked,
    read_manifest,
    run_lock,
    run_path,
    write_metrics,
)
from bench.engine.train import Diverged, Interrupted, seed_everything, train
from bench.files import write_json
from bench.protocol import Protocol
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
    return {
        "model": spec.model, "knobs": spec.knobs, "weights": spec.weights, "seed": spec.seed,
        "lr": spec.lr, "lr_source": spec.lr_source,
        "protocol": protocol.model_dump(), "protocol_name": protocol.name, "protocol_hash": protocol.hash(),
        "dataset": {"name": ds.name, "root": str(Path(ds.root).resolve()), "fingerprint": ds.fingerprint(),
                    "num_classes": ds.num_classes, "organs": ds.organs},
        "convention": protocol.evaluation.convention,
    }


def config_key(config: dict) -> str:
    """Hash of what decides the numbers (the data's location may move without changing them,
    and the protocol's validation / tuning sections are read by the LR search only)."""
    protocol = {k: v for k, v in config["protocol"].items() if k not in ("validation", "tuning")}
    data = {k: v for k, v in config.items() if k != "dataset"} | {"data": config["dataset"]["fingerprint"],
                                                                 "protocol": protocol}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_conflict(run_dir: Path, key: str) -> str | None:
    """A message if a *completed* run with other settings sits in this folder."""
    m = read_manifest(run_dir)
    if m and m.get("status") == "complete" and m.get("key") != key:
        return (f"{run_dir} holds a completed run with different settings "
                f"(protocol {m.get('protocol_hash')}, lr {m.get('lr')}); use --force to replace it "
                f"or --results to write elsewhere")
    return None


def reset_run(run_dir: Path) -> None:
    """Delete a run's results (``--force`` on an executor that runs it elsewhere, before submitting)."""
    with run_lock(run_dir):
        _clear(run_dir)


def _clear(run_dir: Path) -> None:
    for name in (MANIFEST, METRICS, CHECKPOINT, CHECKPOINT + ".prev", FINAL_WEIGHTS, TRAIN_LOG):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / PRED_DIR, ignore_errors=True)


def execute(
    spec: RunSpec, protocol: Protocol, ds: Dataset, results: Path, device: torch.device,
    force: bool = False, progress: Progress | None = None, say=print, wait: bool = False,
    keep_weights: bool = True, where: dict | None = None,
) -> Outcome:
    """Train and evaluate one run inside its lock; never raises except on interruption.

    A completed run keeps its trained weights in ``model.pt`` unless ``keep_weights`` is off.
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
        if old and old.get("status") == "complete" and old.get("key") == key and (not force or wait):
            return Outcome(run, run_dir, "skipped", "already complete")
        if force or (old and old.get("key") != key):
            _clear(run_dir)  # other settings: a checkpoint from them must not be resumed
        out = _train_and_score(spec, protocol, ds, run, run_dir, config, key, device, progress, say, old or {},
                               where or {"name": "local"})
        if out.status == "complete" and not keep_weights:
            (run_dir / FINAL_WEIGHTS).unlink(missing_ok=True)
        return out
    finally:
        lock.__exit__(None, None, None)


def _train_and_score(spec, protocol, ds, run, run_dir, config, key, device, progress, say, before: dict,
                     where: dict) -> Outcome:
    manifest = {
        "status": "running", "key": key, "run": run.__dict__, **config, "executor": where,
        "protocol_hash": protocol.hash(), "git": env.git_revision(), "packages": env.package_versions(),
        **env.device_info(device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / MANIFEST, manifest)
    t0 = time.perf_counter()
    label = f"{spec.label} seed {spec.seed}"
    try:
        seed_everything(spec.seed)  # identical initial weights for the same seed
        model = create_model(spec.model, num_classes=ds.num_classes, in_channels=1,
                             img_size=protocol.input_size, weights=spec.weights, **spec.knobs)
        manifest["parameters"] = sum(p.numel() for p in model.parameters())
        manifest["gflops"] = gflops(model, protocol.input_size)
        manifest["pretrained"] = spec.weights is not None
        result = train(model, ds, protocol, spec.seed, run_dir, spec.lr, device, progress, label, say)
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
        status, message = "complete", ""
    except Interrupted as e:
        manifest.update(status="interrupted", error=str(e))
        write_json(run_dir / MANIFEST, manifest)
        raise
    except Diverged as e:
        status, message = "diverged", str(e)
    except Exception as e:  # one model's failure must not end the sweep
        status, message = "failed", f"{type(e).__name__}: {e}"
        manifest["traceback"] = traceback.format_exc(limit=8)
    manifest.update(status=status, error=message or None, wall_seconds=round(time.perf_counter() - t0, 2),
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    (run_dir / (CHECKPOINT + ".prev")).unlink(missing_ok=True)
    write_json(run_dir / MANIFEST, manifest)  # last: only now does the run count as complete
    return Outcome(run, run_dir, status, message)


def run_jobs(
    jobs: list[tuple[RunSpec, Protocol]], ds: Dataset, results: Path, device: torch.device, *,
    force: bool, progress: Progress, keep_weights: bool = True,
) -> list[Outcome]:
    """Execute runs in order; runs another process holds are done last, after waiting for it."""
    say = progress.console.print
    outcomes = []
    with progress:
        for spec, proto in jobs:
            outcomes.append(execute(spec, proto, ds, results, device, force, progress, say=say,
                                   keep_weights=keep_weights))
            _say_outcome(say, outcomes[-1])
        for i, (spec, proto) in enumerate(jobs):
            if outcomes[i].status == "locked":
                say(f"waiting for another process: {outcomes[i].message}")
                outcomes[i] = execute(spec, proto, ds, results, device, force, progress, say=say, wait=True,
                                      keep_weights=keep_weights)
                _say_outcome(say, outcomes[i])
    return outcomes


def _say_outcome(say, out: Outcome) -> None:
    note = f" ({out.message})" if out.message else ""
    say(f"{out.run.model} seed {out.run.seed}: {out.status}{note} -> {out.path}")
