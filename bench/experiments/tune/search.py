"""``bench tune``: an Optuna search over the base learning rate, one study per (dataset, model, protocol).

Each trial is a full training run under the protocol on most training cases, scored by the mean
foreground DSC on held-out *training* cases (``bench.engine.validation.held_out_view``, the cases
``bench run`` validates on too); test cases are never read. Scores at the protocol's validation
interval feed a pruner. A trial that diverges or raises is recorded as failed and the study goes
on (a failure is a row, not a crash).

Studies live in an Optuna storage: SQLite under the results folder by default, or any URL
(PostgreSQL, ``journal:FILE``), so a second call, or a process on another machine, adds trials
to the same study. ``--trials N`` always means N more trials from this process.
"""
from __future__ import annotations

import logging
import shutil
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.samplers import BaseSampler, TPESampler

from bench.data.resolve import resolve_dataset
from bench.data.synapse import Dataset
from bench.engine.evaluation import evaluate_model
from bench.engine.numerics import check_precision
from bench.engine.results import CHECKPOINT, FINAL_WEIGHTS
from bench.engine.runner import RunSpec
from bench.engine.tracking import Tracking
from bench.engine.train import Diverged, Interrupted, Preempted, seed_everything, train
from bench.engine.validation import held_out_view, mean_foreground
from bench.env import pick_device
from bench.errors import BenchError
from bench.experiments.options import RunOptions
from bench.experiments.preflight import check_models
from bench.experiments.tune import liveness
from bench.experiments.tune.studies import (
    default_storage_url,
    display_url,
    load_or_create_study,
    open_storage,
    study_dir,
    study_name,
)
from bench.files import write_json
from bench.protocol import Protocol
from models import create_model, is_model, list_models

SEARCHABLE = ("lr", "weight_decay", "batch_size")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a preemption warning (SIGUSR1); a scheduler runs it again


class TrialSeededTPE(BaseSampler):
    """TPE whose random draws depend on (seed, trial number) only.

    A plain seeded TPESampler restarts the same random stream in every process, so a resumed
    study or a second worker would propose the very learning rates already tried. Trial numbers
    are unique across processes: seeding per trial keeps a search reproducible without repeats.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._by_trial: dict[int, TPESampler] = {}

    def _tpe(self, trial) -> TPESampler:
        if trial.number not in self._by_trial:
            seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
            self._by_trial[trial.number] = TPESampler(seed=seed)
        return self._by_trial[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._tpe(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._tpe(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)


def make_pruner(protocol: Protocol) -> optuna.pruners.BasePruner:
    if protocol.tuning.pruner == "median":
        return optuna.pruners.MedianPruner()
    return optuna.pruners.NopPruner()


@dataclass
class Search:
    """What one ``bench tune`` process does to one study."""

    model: str
    study: str
    view: Dataset
    protocol: Protocol
    folder: Path
    params: tuple[str, ...] = ("lr",)
    device: torch.device = torch.device("cpu")
    added: int = 0  # trials this process finished (other workers may add more meanwhile)
    interrupted: bool = False
    track: tuple[str, ...] = ()  # live trackers (--track), one tracked run per trial
    results: Path = Path("results")
    dataset: str = ""
    preempted: bool = False  # the interruption was a scheduler's warning (SIGUSR1)


class _Scorer:
    """The ``on_iteration`` callback: validate at the interval and at the end, report, prune."""

    def __init__(self, trial: optuna.Trial, model: torch.nn.Module, s: Search, protocol: Protocol,
                 tracker: Tracking | None = None) -> None:
        self.trial, self.model, self.s, self.protocol, self.tracker = trial, model, s, protocol, tracker
        self.max_iter = protocol.max_iterations(len(s.view.train_slices))
        self.interval = protocol.validation.interval or self.max_iter
        self.score: float | None = None

    def __call__(self, done: int) -> None:
        if done % self.interval and done != self.max_iter:
            return
        metrics = evaluate_model(self.model, self.s.view, self.protocol.input_size, self.protocol.evaluation,
                                 self.s.device)
        score = mean_foreground(metrics, "dice")
        if not np.isfinite(score):
            raise RuntimeError(f"validation DSC is {score} at iteration {done} (no organ in the validation cases?)")
        self.score = score
        if self.tracker is not None:
            self.tracker.log({"val/dice": score}, done)
        self.trial.report(score, done)
        if done < self.max_iter and self.trial.should_prune():
            raise optuna.TrialPruned(f"validation DSC {score:.4f} at iteration {done}")


def _suggest(trial: optuna.Trial, s: Search) -> tuple[float, Protocol]:
    t, p = s.protocol.tuning, s.protocol
    lr = trial.suggest_float("lr", t.lr_min, t.lr_max, log=True)
    changes: dict = {}
    if "weight_decay" in s.params:
        wd = trial.suggest_float("weight_decay", t.weight_decay_min, t.weight_decay_max, log=True)
        changes["optimizer"] = p.optimizer.model_dump() | {"weight_decay": wd}
    if "batch_size" in s.params:
        choices = t.batch_sizes or sorted({max(1, p.batch_size // 2), p.batch_size, 2 * p.batch_size})
        changes["batch_size"] = trial.suggest_categorical("batch_size", choices)
    return lr, p.override(**changes)


def _objective(s: Search, study: optuna.Study, progress, say):
    seed = s.protocol.seeds[0]  # every trial starts from the same weights and sees the same batches

    def objective(trial: optuna.Trial) -> float:
        run_dir = s.folder / f"trial{trial.number}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a checkpoint must never carry over between trials
        run_dir.mkdir(parents=True)
        trial.set_user_attr("host", socket.gethostname())
        if liveness.worker_id():
            trial.set_user_attr("worker", liveness.worker_id())
        liveness.touch(study, trial)  # before the inherited attributes of a retry can look stale
        if trial.user_attrs.get("interrupted"):  # a retry inherits the failed trial's attributes
            trial.set_user_attr("interrupted", False)
            trial.set_user_attr("error", None)
        record = {"study": s.study, "number": trial.number, "model": s.model, "seed": seed,
                  "protocol_hash": s.protocol.hash(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        t0 = time.perf_counter()
        tracker = Tracking(s.track, results=s.results, run_dir=run_dir, experiment=f"segbench/{s.dataset}",
                           name=f"tune/{s.study}/trial{trial.number}", say=say,
                           params={"study": s.study, "trial": trial.number, "model": s.model, "seed": seed,
                                   "protocol": s.protocol.name, "protocol_hash": s.protocol.hash(),
                                   "precision": s.protocol.precision})
        try:
            lr, protocol = _suggest(trial, s)
            record["params"] = dict(trial.params)
            tracker.params |= {f"trial.{k}": v for k, v in trial.params.items()}
            seed_everything(seed)
            model = create_model(s.model, num_classes=s.view.num_classes, in_channels=s.view.channels,
                                 img_size=protocol.input_size)
            scorer = _Scorer(trial, model, s, protocol, tracker)
            label = f"{s.model} trial {trial.number} (lr {lr:.2e})"
            with liveness.heartbeat(study, trial):
                train(model, s.view, protocol, seed, run_dir, lr, s.device, progress, label, say, on_iteration=scorer,
                      tracker=tracker)
            record.update(state="COMPLETE", value=scorer.score)
            return scorer.score
        except optuna.TrialPruned as e:
            record.update(state="PRUNED", error=str(e))
            raise
        except Interrupted as e:
            s.interrupted, s.preempted = True, isinstance(e, Preempted)
            study.stop()  # the trial can't be resumed: it fails, and no further trial starts
            record.update(state="FAIL", error=f"interrupted: {e}")
            trial.set_user_attr("error", record["error"])
            trial.set_user_attr("interrupted", True)
            raise
        except Diverged as e:
            record.update(state="FAIL", error=f"diverged: {e}")
            trial.set_user_attr("error", record["error"])
            raise
        except Exception as e:  # one trial's failure must not end the study
            record.update(state="FAIL", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8))
            trial.set_user_attr("error", record["error"])
            raise
        finally:
            tracker.close({"COMPLETE": "complete", "PRUNED": "pruned"}.get(record.get("state"), "failed"))
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            for name in (CHECKPOINT, CHECKPOINT + ".prev", FINAL_WEIGHTS):
                (run_dir / name).unlink(missing_ok=True)  # keep the training log, not the weights
            write_json(run_dir / "trial.json", record | {"seconds": round(time.perf_counter() - t0, 2)})

    return objective


def _attrs(s: Search, ds: Dataset) -> dict:
    return {"model": s.model, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "protocol": s.protocol.name, "protocol_hash": s.protocol.hash(),
            "validation_cases": sorted(s.view.test_cases), "seed": s.protocol.seeds[0]}


@contextmanager
def _quiet_optuna():
    """Optuna logs each failed trial with a traceback; the search prints its own one-line outcome."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def describe(trial: optuna.trial.FrozenTrial) -> str:
    params = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial.params.items())
    state = trial.state.name.lower()
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return f"trial {trial.number}: {params}  validation DSC {trial.value:.4f}"
    if trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        return f"trial {trial.number}: {params}  pruned at iteration {step} (validation DSC " \
               f"{trial.intermediate_values[step]:.4f})"
    return f"trial {trial.number}: {params}  {state} ({trial.user_attrs.get('error', '')})".replace(" ()", "")


def search(study: optuna.Study, s: Search, n_trials: int, timeout: float | None, progress=None,
           say=print) -> None:
    """Add up to ``n_trials`` trials (fewer if ``timeout`` seconds pass) to ``study``."""
    def done(_study, trial) -> None:
        s.added += 1
        say(f"{s.model} {describe(trial)}")
        if trial.user_attrs.get("interrupted") and liveness.worker_id():
            liveness.retry(study, trial)  # a scheduled worker's trial is tried again, by any worker
        liveness.fail_stale(study, say)

    s.folder.mkdir(parents=True, exist_ok=True)
    liveness.fail_stale(study, say)
    n_trials = liveness.owed(study, n_trials)  # a requeued worker adds only what it still owes
    if n_trials:
        study.optimize(_objective(s, study, progress, say), n_trials=n_trials, timeout=timeout,
                       catch=(Exception,), gc_after_trial=True, callbacks=[done])


def parse_search(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [n for n in names if n not in SEARCHABLE]
    if bad or "lr" not in names:
        raise BenchError(f"--search expects a comma-separated subset of {', '.join(SEARCHABLE)} that "
                         f"includes lr, got '{value}'")
    return names


def _summary(s: Search, study: optuna.Study) -> str:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    line = (f"{s.model}: study [bold]{s.study}[/]: {s.added} trials added, {len(study.trials)} in the study "
            f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})")
    best = _best(study)
    if best is None:
        return line + "; no completed trial yet"
    return line + f"; best: trial {best.number}, lr {best.params['lr']:.4g}, validation DSC {best.value:.4f}"


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def tune(models: list[str], opts: RunOptions, *, n_trials: int = 10, timeout: float | None = None,
         search_space: str = "lr", lr_min: float | None = None, lr_max: float | None = None,
         storage: str | None = None, studies: list[str] | None = None) -> int:
    """Add ``n_trials`` trials to each model's study; returns the exit status.

    Every model gets the same protocol, validation split and trial count (equal budgets).
    Status 0 when every study has a completed trial, 1 otherwise, 130 when interrupted.
    """
    if not models:
        raise BenchError("give --model NAME or --models a,b,c; valid models: " + ", ".join(list_models()))
    for m in models:
        if not is_model(m):
            raise BenchError(f"unknown model '{m}'; valid models: {', '.join(list_models())}")
    if len(set(models)) != len(models):
        raise BenchError(f"a model is listed twice in '{','.join(models)}'")
    if n_trials < 1:
        raise BenchError(f"--trials must be at least 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise BenchError(f"--timeout must be positive, got {timeout:g}")
    if studies and len(studies) != len(models):
        raise BenchError(f"--study names one study per model: {len(studies)} names for {len(models)} models")
    params = parse_search(search_space)
    console, progress, results = opts.console, opts.progress, opts.results
    proto = opts.load_protocol()
    ranges = {k: v for k, v in (("lr_min", lr_min), ("lr_max", lr_max)) if v is not None}
    proto = proto.override(iterations=opts.iterations, tuning=proto.tuning.model_dump() | ranges if ranges else None)
    ds = resolve_dataset(opts.dataset or "synthetic", say=console.print, data_root=opts.data_root, fold=opts.fold)
    view = held_out_view(ds, proto)  # the cases bench run validates on, too
    url = storage or default_storage_url(results)
    dev = pick_device(opts.device)
    check_precision(proto.precision, dev)
    check_models([(RunSpec(m, 0, proto.base_lr, "tuning"), proto) for m in models], ds)
    t = proto.tuning
    console.print(f"protocol [bold]{proto.name}[/] ({proto.hash()}), dataset [bold]{ds.name}[/]: training on "
                  f"{len(view.train_slices)} slices, validating on {', '.join(view.test_cases)} (held-out "
                  f"training cases; test cases untouched); lr {t.lr_min:g}..{t.lr_max:g} log-uniform, "
                  f"{n_trials} more trials per model; storage {display_url(url)}; device {dev}")
    from bench.experiments.tune.outputs import write_outputs

    code = 0
    with _quiet_optuna():
        store = open_storage(url)
        for i, model in enumerate(models):
            name = studies[i] if studies else study_name(ds.name, model, proto)
            s = Search(model, name, view, proto, study_dir(results, name), params, dev, track=tuple(opts.track),
                       results=results, dataset=ds.name)
            study = load_or_create_study(store, s.study, _attrs(s, ds), TrialSeededTPE(t.sampler_seed),
                                         make_pruner(proto))
            try:
                with progress:
                    search(study, s, n_trials, timeout, progress, progress.console.print)
            except KeyboardInterrupt:
                s.interrupted = True
            finally:
                outputs = write_outputs(study, s.folder, display_url(url))
            console.print(_summary(s, study))
            console.print(f"  trials table and plots: {', '.join(str(p) for p in outputs)}")
            if s.interrupted:
                console.print("[yellow]interrupted[/]: the running trial is recorded as failed; run the same "
                              "command again to add trials")
                return EXIT_PREEMPTED if s.preempted else 130
            if _best(study) is None:
                code = 1
    return code
