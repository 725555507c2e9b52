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
from urllib.parse import quote, unquote

import optuna

from bench.errors import BenchError
from bench.protocol import Protocol

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


# query parameters whose values are secrets (libpq's password and sslpassword, tokens)
SECRET_PARAMETERS = {"password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token", "api_key",
                     "apikey"}


def _split_secrets(url: str) -> tuple[str, str | None, str, str, str]:
    """(scheme://user, password or None, @host/path, '?' or '', query) of a storage URL.

    The password runs from the user's ':' to the *last* '@': a password may hold '@', '/' or '?'
    that were not percent-encoded, and every character of it must stay hidden (an '@' in a query
    value hides more than needed, never less).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, None, "", "", ""
    at = rest.rfind("@")
    user, colon, password = rest[:at].partition(":") if at >= 0 else ("", "", "")
    head, tail = (f"{scheme}://{user}", rest[at:]) if colon else (f"{scheme}://", rest)
    tail, q, query = tail.partition("?")
    return head, password if colon else None, tail, q, query


def display_url(url: str) -> str:
    """The storage URL with its secrets hidden (the password of its user info, and password-like
    query parameters), for messages and logs."""
    head, password, tail, q, query = _split_secrets(url)
    if q:
        query = "&".join(f"{k}=***" if k.lower() in SECRET_PARAMETERS else k + eq + v
                         for k, eq, v in (p.partition("=") for p in query.split("&")))
    return head + (":***" if password is not None else "") + tail + q + query


def redact(text: str, url: str) -> str:
    """``text`` (an error message that may quote the URL) with every secret of ``url`` hidden."""
    if not url:
        return text
    _, password, _, _, query = _split_secrets(url)
    secrets = [password] if password else []
    secrets += [v for k, _, v in (p.partition("=") for p in query.split("&")) if k.lower() in SECRET_PARAMETERS and v]
    text = text.replace(url, display_url(url))
    for secret in sorted(secrets, key=len, reverse=True):
        for form in {secret, unquote(secret), quote(secret, safe="")}:
            text = text.replace(form, "***")
    return text


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
        raise BenchError(f"--storage expects a URL (sqlite:///FILE, postgresql://..., journal:FILE), got '{url}'")
    kwargs: dict = {}
    if url.startswith("sqlite:"):
        path = Path(url.split(":///", 1)[-1]).expanduser()
        if not create and not path.is_file():
            raise BenchError(f"no tuning storage at {path} (run `bench tune` first, or pass --storage)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BenchError(f"--storage {url}: cannot create the folder {path.parent} ({e.strerror})") from None
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

            return _retrying(f"storage {display_url(url)}", lambda: optuna.storages.RDBStorage(
                url, heartbeat_interval=int(HEARTBEAT_SECONDS), grace_period=int(GRACE_SECONDS),
                **{STALE_CALLBACK_ARG: retry_callback()}, **kwargs), url=url)
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
    if study.user_attrs.get("protocol_hash", protocol.hash()) != protocol.hash():
        say(f"[yellow]note[/]: study '{name}' was tuned under protocol {study.user_attrs.get('protocol')} "
            f"({study.user_attrs.get('protocol_hash')}), this run uses {protocol.name} ({protocol.hash()})")
    other = {k: v for k, v in best.params.items() if k != "lr"}
    if other:
        say(f"[yellow]note[/]: study '{name}' also tuned {other}; only its learning rate is applied")
    return float(best.params["lr"]), f"study {name} trial {best.number}"


