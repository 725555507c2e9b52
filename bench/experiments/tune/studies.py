"""The study store of the learning-rate search: names, Optuna storages, and the hand-off to runs.

A study is named after what must never be mixed in it (dataset, model, protocol name and
hash) and remembers those as user attributes; ``bench run --lr tuned`` reads its best trial.
Storages: ``sqlite:///FILE`` (the default, under ``<results>/tune/``), any SQLAlchemy URL such
as ``postgresql://user:pass@host/db`` for several machines, or ``journal:FILE`` (Optuna's
journal file, for a shared file system).
"""
from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from bench.errors import BenchError
from bench.protocol import Protocol
from bench.urls import display_url, redact

TUNE_DIR = "tune"
DEFAULT_DB = "optuna.db"


def study_name(dataset: str, model: str, protocol: Protocol) -> str:
    """The default study name; it encodes everything that must not be mixed within one study."""
    return f"{dataset}-{model}-{protocol.name}-{protocol.hash()}"


def study_dir(results: Path, name: str) -> Path:
    """Where a study's trial folders and report files go (outside the run tree)."""
    return Path(results) / TUNE_DIR / re.sub(r"[^A-Za-z0-9._-]", "_", name)


def default_storage_url(results: Path) -> str:
    return f"sqlite:///{(Path(results) / TUNE_DIR / DEFAULT_DB).resolve()}"


def _retrying(what: str, fn, attempts: int = 6, url: str = ""):
    """Call ``fn``; retry briefly on storage races (two workers creating the tables or study at once).
    Errors are one line, with the secrets of the storage ``url`` hidden."""
    import sqlalchemy.exc

    for i in range(attempts):
        try:
            return fn()
        except sqlalchemy.exc.ArgumentError as e:
            raise BenchError(redact(f"{what}: {e}", url)) from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            if i == attempts - 1:
                raise BenchError(redact(f"{what}: {type(e).__name__}: {str(e).splitlines()[0]}", url)) from None
            time.sleep(0.5 * (i + 1))


def open_storage(url: str, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage: ``sqlite:///FILE``, ``postgresql://...`` (any SQLAlchemy URL) or ``journal:FILE``.

    RDB storages get a heartbeat, so a trial whose process died is marked failed by the next
    worker instead of staying RUNNING for ever, and queued again with the same parameters (a
    journal file gets the same from ``liveness``).
    """
    if url.startswith("journal:"):
        raw = re.sub(r"^journal:(//)?", "", url)
        if not raw:
            raise BenchError("--storage journal: needs a file, e.g. journal:/shared/segbench/tune.log")
        path = Path(raw).expanduser()
        if not create and not path.is_file():
            raise BenchError(f"no tuning storage at {path}")
        from optuna.storages.journal import JournalFileBackend

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise BenchError(f"--storage {url}: cannot write the journal file {path} ({e.strerror})") from None
    if "://" not in url:
        raise BenchError("--storage expects a URL (sqlite:///FILE, postgresql://..., journal:FILE), got "
                         f"'{display_url(url)}'")
    kwargs: dict = {}
    if url.startswith("sqlite:"):
        path = Path(url.split(":///", 1)[-1]).expanduser()
        if not create and not path.is_file():
            raise BenchError(f"no tuning storage at {path} (run `bench tune` first, or pass --storage)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BenchError(f"--storage {display_url(url)}: cannot create the folder {path.parent} "
                             f"({e.strerror})") from None
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # wait for the other workers' writes
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            from bench.experiments.tune.liveness import (
                GRACE_SECONDS,
                HEARTBEAT_SECONDS,
                STALE_CALLBACK_ARG,
                retry_callback,
            )

            options: dict[str, Any] = {STALE_CALLBACK_ARG: retry_callback(), **kwargs}
            return _retrying(f"storage {display_url(url)}", lambda: optuna.storages.RDBStorage(
                url, heartbeat_interval=int(HEARTBEAT_SECONDS), grace_period=int(GRACE_SECONDS), **options), url=url)
    except ImportError as e:
        raise BenchError(f"storage {display_url(url)} needs a database driver: {redact(str(e), url)} "
                         "(for PostgreSQL: pip install psycopg2-binary)") from None


def load_or_create_study(storage, name: str, attrs: dict, sampler=None, pruner=None) -> optuna.Study:
    """The study (created on first use); refuses one made for another model, protocol or split.

    ``attrs`` (model, dataset fingerprint, protocol hash, validation cases...) are stored with a
    new study and compared with an existing one.
    """
    study = _retrying(f"study {name}", lambda: optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=True,
        sampler=sampler, pruner=pruner))
    want, have = attrs, study.user_attrs
    if not have:
        for key, value in want.items():
            study.set_user_attr(key, value)
        return study
    for key in ("model", "dataset_fingerprint", "protocol_hash", "validation_cases"):
        if key in have and have[key] != want[key]:
            raise BenchError(f"study '{name}' was made with {key} {have[key]}, this search has "
                             f"{want[key]}; trials of different searches are never mixed: choose another --study")
    return study


def tuned_lr(storage_url: str, name: str, model: str, protocol: Protocol, say=print) -> tuple[float, str]:
    """The best trial's learning rate for ``bench run --lr tuned``, and where it came from."""
    storage = open_storage(storage_url, create=False)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = optuna.study.get_all_study_names(storage)
        hint = f"; studies there: {', '.join(known[:6])}" if known else ""
        raise BenchError(f"--lr tuned: no study '{name}' in {display_url(storage_url)} (tune it with "
                         f"`bench tune --model {model}` or name it with --study){hint}") from None
    owner = study.user_attrs.get("model")
    if owner is not None and owner != model:
        raise BenchError(f"--lr tuned: study '{name}' tuned model {owner}, not {model}")
    try:
        best = study.best_trial
    except ValueError:
        raise BenchError(f"--lr tuned: study '{name}' has no completed trial yet") from None
    reason = no_signal(study, best)
    if reason:
        raise BenchError(f"--lr tuned: study '{name}' has no signal: {reason}; no LR in it trained anything "
                         "(give the trials more --iterations or another LR range, then tune again)")
    weak = weak_signal(study, best)
    if weak:
        say(f"note: study '{name}': {weak}")
    if study.user_attrs.get("protocol_hash", protocol.hash()) != protocol.hash():
        say(f"note: study '{name}' was tuned under protocol {study.user_attrs.get('protocol')} "
            f"({study.user_attrs.get('protocol_hash')}), this run uses {protocol.name} ({protocol.hash()})")
    other = {k: v for k, v in best.params.items() if k != "lr"}
    if other:
        say(f"note: study '{name}' also tuned {other}; only its learning rate is applied")
    return float(best.params["lr"]), f"study {name} trial {best.number}"


# A study's user attribute: the validation DSC of the model every trial starts from (seeded, before any
# training), measured once per study by ``bench tune``. A trial that scores no more than it learned nothing.
UNTRAINED = "untrained_dsc"
# Below this gain over the untrained model (one DSC point) a study's ranking of LRs is mostly noise.
WEAK_GAIN = 0.01


def _floor(study: optuna.Study) -> tuple[float, str]:
    """The score a trial must beat, and its name (0 for a study made before the untrained model was measured)."""
    floor = study.user_attrs.get(UNTRAINED)
    if floor is None:
        return 0.0, "0 (an empty prediction)"
    return float(floor), f"the untrained model's {float(floor):.4f}"


def no_signal(study: optuna.Study, best: optuna.trial.FrozenTrial) -> str | None:
    """Why the study's best trial shows no signal (its validation DSC is no better than the untrained
    model's on the same cases, or 0), or None when it does."""
    floor, what = _floor(study)
    assert best.value is not None  # a completed trial
    if best.value > floor and best.value > 0:
        return None
    return (f"its best trial ({best.number}, lr {best.params['lr']:.4g}) scored validation DSC {best.value:.4f}, "
            f"no better than {what}")


def weak_signal(study: optuna.Study, best: optuna.trial.FrozenTrial) -> str | None:
    """A note when the best trial beats the untrained model by less than ``WEAK_GAIN``."""
    floor, what = _floor(study)
    assert best.value is not None
    if best.value - floor >= WEAK_GAIN or no_signal(study, best):
        return None
    return (f"weak signal: its best trial beats {what} by only {best.value - floor:.4f} validation DSC; "
            "the LRs it tried are ranked mostly by noise")


def signal(study: optuna.Study) -> str | None:
    """``none``, ``weak`` or ``ok`` for a study with a completed trial (None without one)."""
    best = best_trial(study)
    if best is None:
        return None
    return "none" if no_signal(study, best) else "weak" if weak_signal(study, best) else "ok"


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the highest score, or None before any trial completed."""
    try:
        return study.best_trial
    except ValueError:
        return None


def summary(study: optuna.Study, model: str, added: int | None = None) -> str:
    """One line on a study: its trials by state (``added`` of them by this process) and the best one."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    total = sum(counts.values())
    trials = (f"{added} trial{'s' if added != 1 else ''} added, {total} in the study" if added is not None
              else f"{total} trial{'s' if total != 1 else ''}")
    line = (f"{model}: study {study.study_name}: {trials} "
            f"({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))})")
    best = best_trial(study)
    if best is None:
        return line + "; no completed trial yet"
    reason = no_signal(study, best)
    if reason:
        return line + f"; no signal: {reason} (`bench run --lr tuned` refuses this study)"
    line += f"; best: trial {best.number}, lr {best.params['lr']:.4g}, validation DSC {best.value:.4f}"
    weak = weak_signal(study, best)
    if weak:
        return line + f" ({weak})"
    if UNTRAINED in study.user_attrs:
        return line + f" (untrained model: {float(study.user_attrs[UNTRAINED]):.4f})"
    return line
