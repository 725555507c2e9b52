"""Trials of workers that die are retried, once each; a requeued worker adds only what it still owes.

RDB storages (SQLite, PostgreSQL) have Optuna's heartbeat: a trial whose worker stopped beating
is failed by the next worker and retried by ``RetryCallback`` (see ``studies.py``).
A journal file has no heartbeat in Optuna, so a trial's worker records one as a user attribute
while it trains (``heartbeat``); ``fail_stale`` then fails trials whose heartbeat stopped and
retries them through the same callback, under the journal's own (NFS-safe) lock so that two
workers never retry one trial twice.

A worker started by ``--executor slurm`` or ``ray`` has an id (``SEGBENCH_WORKER``: the Slurm
array task, the Ray task) that its trials record. A worker requeued after a preemption adds
only the trials it still owes (``owed``); the trial the preemption interrupted is retried.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import optuna
from optuna.storages import JournalStorage

try:  # Optuna >= 4.9 renamed the callback and the storage argument that takes it
    from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryCallback

    STALE_CALLBACK_ARG = "heartbeat_stale_trial_callback"
except ImportError:  # Optuna 4.0 - 4.8
    from optuna.storages import RetryFailedTrialCallback as RetryCallback

    STALE_CALLBACK_ARG = "failed_trial_callback"
from optuna.trial import FrozenTrial, TrialState

WORKER_ENV = "SEGBENCH_WORKER"
RETRIES = 2  # a trial is tried at most 1 + RETRIES times
HEARTBEAT_SECONDS = 60.0
GRACE_SECONDS = 300.0  # as the RDB storages' grace period


def worker_id() -> str | None:
    return os.environ.get(WORKER_ENV) or None


def retry_callback() -> RetryCallback:
    return RetryCallback(max_retry=RETRIES)


def owed(study: optuna.Study, n_trials: int) -> int:
    """Trials this worker still has to add: ``n_trials`` minus those an earlier run of it finished
    (interrupted ones do not count: they are retried)."""
    wid = worker_id()
    if wid is None:
        return n_trials
    done = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == wid
               and t.state.is_finished() and not t.user_attrs.get("interrupted"))
    return max(0, n_trials - done)


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed trial again with the same parameters (at most ``RETRIES`` times)."""
    with warnings_quiet():
        retry_callback()(study, trial)


@contextmanager
def warnings_quiet():
    import warnings

    with warnings.catch_warnings():  # RetryFailedTrialCallback is "experimental" / renamed upstream
        warnings.simplefilter("ignore")
        yield


def _journal(study: optuna.Study) -> JournalStorage | None:
    storage = study._storage
    if isinstance(storage, JournalStorage):
        return storage
    backend = getattr(storage, "_backend", None)  # Optuna may wrap a storage in a cache
    return backend if isinstance(backend, JournalStorage) else None


def touch(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record a heartbeat now (journal files only)."""
    if _journal(study) is not None:
        trial.set_user_attr("heartbeat", time.time())


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """While a trial runs on a journal file, refresh its ``heartbeat`` user attribute."""
    if _journal(study) is None:
        yield
        return
    stop = threading.Event()
    touch(study, trial)

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            trial.set_user_attr("heartbeat", time.time())

    thread = threading.Thread(target=beat, daemon=True, name="trial-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def _journal_lock(storage: JournalStorage):
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    backend = storage._backend
    if not isinstance(backend, JournalFileBackend):
        yield
        return
    lock = JournalFileSymlinkLock(backend._file_path + ".retry")
    lock.acquire()  # blocks; a lock left by a dead process is broken after its grace period
    try:
        yield
    finally:
        lock.release()


def fail_stale(study: optuna.Study, say=print) -> int:
    """Fail and retry the RUNNING trials of a journal file whose heartbeat stopped; how many."""
    journal = _journal(study)
    if journal is None:
        return 0  # RDB storages: Optuna's own heartbeat does this in study.optimize
    n = 0
    with _journal_lock(journal):
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.user_attrs.get("heartbeat")
            if last is None or now - last <= GRACE_SECONDS:
                continue  # still beating (a trial without a heartbeat was not started by a worker that beats)
            journal.set_trial_state_values(t._trial_id, TrialState.FAIL)
            t = journal.get_trial(t._trial_id)
            say(f"trial {t.number}: its worker stopped {now - last:.0f} s ago; failed and queued again")
            retry(study, t)
            n += 1
    return n
