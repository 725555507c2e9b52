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
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.samplers import BaseSampler, TPESampler
from rich.text import Text

from bench.data.resolve import resolve_dataset
from bench.data.synapse import Dataset
from bench.engine.evaluation import evaluate_model
from bench.engine.header import describe_dataset, header
from bench.engine.numerics import check_precision, threads
from bench.engine.progress import Steps
from bench.engine.results import CHECKPOINT, FINAL_WEIGHTS
from bench.engine.runs import RunSpec
from bench.engine.tracking import Tracking
from bench.engine.train import Diverged, Interrupted, Preempted, seed_everything, train
from bench.engine.validation import Validator, held_out_view, mean_foreground
from bench.env import pick_device
from bench.errors import BenchError
from bench.experiments.options import RunOptions
from bench.experiments.preflight import check_models
from bench.experiments.tune import liveness
from bench.experiments.tune.studies import (
    UNTRAINED,
    best_trial,
    default_storage_url,
    load_or_create_study,
    open_storage,
    study_dir,
    study_name,
    summary,
)
from bench.files import write_json
from bench.names import check_name
from bench.protocol import Protocol
from bench.urls import display_url
from models import create_model, list_models, require_models

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


def _reporter(trial: optuna.Trial, max_iter: int) -> Callable[[int, float], None]:
    """The Validator's ``on_score`` in a trial: a non-finite score fails it; report; prune before the end."""
    def report(done: int, score: float) -> None:
        if not np.isfinite(score):
            raise RuntimeError(f"validation DSC is {score} at iteration {done} (no organ in the validation cases?)")
        trial.report(score, done)
        if done < max_iter and trial.should_prune():
            raise optuna.TrialPruned(f"validation DSC {score:.4f} at iteration {done}")

    return report


def batch_choices(p: Protocol) -> list[int]:
    """The batch sizes ``--search batch_size`` tries: the protocol's ``tuning.batch_sizes``, else half,
    the same as and double the protocol's."""
    return p.tuning.batch_sizes or sorted({max(1, p.batch_size // 2), p.batch_size, 2 * p.batch_size})


def space_text(p: Protocol, params: tuple[str, ...]) -> str:
    """What a search tries, for its header: the LR range and every other searched parameter's values."""
    t = p.tuning
    parts = [f"lr {t.lr_min:g}..{t.lr_max:g} log-uniform"]
    if "weight_decay" in params:
        parts.append(f"weight decay {t.weight_decay_min:g}..{t.weight_decay_max:g} log-uniform")
    if "batch_size" in params:
        parts.append(f"batch size {', '.join(map(str, batch_choices(p)))} (a trial's LR is not scaled by its batch)")
    return ", ".join(parts)


def _suggest(trial: optuna.Trial, s: Search) -> tuple[float, Protocol]:
    t, p = s.protocol.tuning, s.protocol
    lr = trial.suggest_float("lr", t.lr_min, t.lr_max, log=True)
    changes: dict = {}
    if "weight_decay" in s.params:
        wd = trial.suggest_float("weight_decay", t.weight_decay_min, t.weight_decay_max, log=True)
        changes["optimizer.weight_decay"] = wd
    if "batch_size" in s.params:
        changes["batch_size"] = trial.suggest_categorical("batch_size", batch_choices(p))
    return lr, p.derive(changes)


def untrained_score(s: Search) -> float:
    """The validation DSC of the model every trial starts from (seeded, before any training): the floor
    a trial must beat to show that its LR trained anything (``studies.no_signal``)."""
    seed_everything(s.protocol.seeds[0])
    model = create_model(s.model, num_classes=s.view.num_classes, in_channels=s.view.channels,
                         img_size=s.protocol.input_size).to(s.device)
    metrics = evaluate_model(model, s.view, s.protocol.input_size, s.protocol.evaluation, s.device)
    return mean_foreground(metrics, "dice")


def _measure_floor(study: optuna.Study, s: Search, say) -> None:
    """Once per study (a study made before this existed gets it on its next call)."""
    if UNTRAINED in study.user_attrs:
        return
    score = untrained_score(s)
    study.set_user_attr(UNTRAINED, score)
    say(f"{s.model} untrained (seed {s.protocol.seeds[0]}): validation DSC {score:.4f}, the score a trial must beat")


def _start_trial(s: Search, study: optuna.Study, trial: optuna.Trial) -> Path:
    """A fresh trial folder, and the trial's host, worker and liveness attributes."""
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
    return run_dir


def _objective(s: Search, study: optuna.Study, progress, say):
    seed = s.protocol.seeds[0]  # every trial starts from the same weights and sees the same batches

    def objective(trial: optuna.Trial) -> float:
        run_dir = _start_trial(s, study, trial)
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
            # scores go to the trial folder's validation_log.csv and to the trial; the outcome line says the rest
            validate = Validator(model, s.view, protocol, s.device, run_dir, tracker, say=lambda *_: None,
                                 on_score=_reporter(trial, protocol.max_iterations(len(s.view.train_slices))),
                                 progress=progress)
            label = f"{s.model} trial {trial.number} (lr {lr:.2e})"
            with liveness.heartbeat(study, trial):
                train(model, s.view, protocol, seed, run_dir, lr, s.device, progress, label, say,
                      on_iteration=validate, tracker=tracker)
            assert validate.score is not None  # the Validator scores at the last iteration
            record.update(state="COMPLETE", value=validate.score)
            return validate.score
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
            tracker.close({"COMPLETE": "complete", "PRUNED": "pruned"}.get(str(record.get("state")), "failed"))
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
    """Add up to ``n_trials`` trials (fewer if ``timeout`` seconds pass) to ``study``; a bar over the trials."""
    def done(_study, trial) -> None:
        s.added += 1
        say(f"{s.model} {describe(trial)}")
        trials.advance(f"trial {trial.number} {trial.state.name.lower()}")
        if trial.user_attrs.get("interrupted") and liveness.worker_id():
            liveness.retry(study, trial)  # a scheduled worker's trial is tried again, by any worker
        liveness.fail_stale(study, say)

    s.folder.mkdir(parents=True, exist_ok=True)
    liveness.fail_stale(study, say)
    n_trials = liveness.owed(study, n_trials)  # a requeued worker adds only what it still owes
    if not n_trials:
        return
    with Steps(progress, f"{s.model} trials", n_trials, "trial", say) as trials:
        study.optimize(_objective(s, study, progress, say), n_trials=n_trials, timeout=timeout,
                       catch=(Exception,), gc_after_trial=True, callbacks=[done])


def parse_search(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    bad = [n for n in names if n not in SEARCHABLE]
    if bad or "lr" not in names:
        raise BenchError(f"--search expects a comma-separated subset of {', '.join(SEARCHABLE)} that "
                         f"includes lr, got '{value}'")
    return names


def check_request(models: list[str], n_trials: int, timeout: float | None = None,
                  studies: list[str] | None = None) -> None:
    """The counts of a ``bench tune`` command; the model names are the registry's to check."""
    if not models:
        raise BenchError("give --model NAME or --models a,b,c; valid models: " + ", ".join(list_models()))
    require_models(models)  # the registry's UnknownModelError, before any data is generated
    if len(set(models)) != len(models):
        raise BenchError(f"a model is listed twice in '{','.join(models)}'")
    if n_trials < 1:
        raise BenchError(f"--trials must be at least 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise BenchError(f"--timeout must be positive, got {timeout:g}")
    if studies and len(studies) != len(models):
        raise BenchError(f"--study names one study per model: {len(studies)} names for {len(models)} models")
    for name in studies or []:
        check_name(name, "--study", "study name")  # it names the study's folder under <results>/tune/


def check_buildable(models: list[str], proto: Protocol, ds: Dataset) -> None:
    """Every model exists (the registry's UnknownModelError) and builds for ``ds`` under ``proto``."""
    check_models([(RunSpec(m, 0, proto.base_lr, "tuning"), proto) for m in models], ds)


def tune(models: list[str], opts: RunOptions, *, n_trials: int = 10, timeout: float | None = None,
         search_space: str = "lr", storage: str | None = None, studies: list[str] | None = None) -> int:
    """Add ``n_trials`` trials to each model's study; returns the exit status.

    Every model gets the same protocol, validation split and trial count (equal budgets).
    Status 0 when every study has a completed trial, 1 otherwise, 130 when interrupted.
    """
    check_request(models, n_trials, timeout, studies)
    params = parse_search(search_space)
    console, progress, results = opts.out, opts.progress(), opts.run.results
    proto = opts.load_protocol()  # --lr-min / --lr-max arrive as --set tuning.lr_min=...
    ds = resolve_dataset(opts.dataset or "synthetic", say=console.print, data_root=opts.data_root, fold=opts.fold)
    view = held_out_view(ds, proto)  # the cases bench run validates on, too
    url = storage or default_storage_url(results)
    dev = pick_device(opts.run.device)
    check_precision(proto.precision, dev)
    check_buildable(models, proto, ds)
    t, subset = proto.tuning, proto.evaluation.subset()
    scored = f"; scored: {subset.replace('test case', 'validation case')}" if subset else ""
    console.print(header(proto, describe_dataset(ds), dev, f"{t.lr_min:g}..{t.lr_max:g} log-uniform (searched)",
                         f"training on {len(view.train_slices)} slices, validating on {', '.join(view.test_cases)} "
                         f"(held-out training cases; test cases untouched{scored}), {n_trials} more "
                         f"trial{'s' if n_trials != 1 else ''} per model, storage {display_url(url)}"))
    from bench.experiments.tune.outputs import write_outputs

    code = 0
    with _quiet_optuna():
        store = open_storage(url)
        for i, model in enumerate(models):
            name = studies[i] if studies else study_name(ds.name, model, proto)
            s = Search(model, name, view, proto, study_dir(results, name), params, dev, track=opts.run.track,
                       results=results, dataset=ds.name)
            study = load_or_create_study(store, s.study, _attrs(s, ds), TrialSeededTPE(t.sampler_seed),
                                         make_pruner(proto))
            try:
                with progress, threads(proto, dev):  # on a CPU, the protocol's thread count, as a run
                    _measure_floor(study, s, progress.console.print)
                    search(study, s, n_trials, timeout, progress, progress.console.print)
            except KeyboardInterrupt:
                s.interrupted = True
            finally:
                outputs = write_outputs(study, s.folder, display_url(url))
            console.print(summary(study, s.model, s.added))
            console.print(f"  trials table and plots: {', '.join(str(p) for p in outputs)}")
            if s.interrupted:
                console.print(Text.assemble(("interrupted", "yellow"), ": the running trial is recorded as failed; "
                                            "run the same command again to add trials"))
                return EXIT_PREEMPTED if s.preempted else 130
            if best_trial(study) is None:
                code = 1
    return code
