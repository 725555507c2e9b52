"""Per-run locks that name their holder, on local disks and on cluster file systems.

The lock is ``flock`` on ``<run>/.lock``: the kernel releases it when the holder dies, however
it dies. Some shared file systems refuse ``flock`` (Lustre mounted without ``-o flock``: ENOSYS;
NFS without a lock daemon: ENOLCK). There the lock is an exclusive-create file,
``<run>/.lock.owner``, that names its holder and whose modification time a thread refreshes
(the heartbeat). A lock file whose heartbeat stopped longer ago than ``STALE_SECONDS`` belongs
to a dead process and is taken over. Either way the holder record names the Slurm job, so a
requeued Slurm task takes over the lock file of its own previous incarnation at once instead
of waiting on itself (flock needs no such care: the requeue killed the holder).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"
LOCK_FILE = ".lock.owner"  # the fallback where flock is not supported
HEARTBEAT_SECONDS = 20.0
STALE_SECONDS = 120.0
NO_FLOCK = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)

_said: set[int] = set()  # devices whose missing flock was reported (once per file system)


class RunLocked(Exception):
    """Another live process holds the run's lock."""


def holder() -> dict:
    """Who takes a lock: host, pid and, inside a Slurm job, the job (stable across requeues)."""
    rec = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
    if os.environ.get("SLURM_JOB_ID"):
        rec["slurm_job"] = os.environ["SLURM_JOB_ID"]
        rec["slurm_restart"] = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            rec["slurm_array_task"] = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return rec


def describe(rec: dict | None) -> str:
    if not rec:
        return "another process"
    text = f"host {rec.get('host')} pid {rec.get('pid')}"
    job = rec.get("slurm_array_task") or rec.get("slurm_job")
    return text + (f" (Slurm job {job})" if job else "")


def _parse(text: str) -> dict | None:
    text = text.strip()
    if not text:
        return None
    try:
        rec = json.loads(text)
        return rec if isinstance(rec, dict) else None
    except json.JSONDecodeError:  # the plain "host H pid P" of earlier versions
        parts = text.split()
        return {"host": parts[1], "pid": parts[3]} if len(parts) >= 4 else None


@contextmanager
def run_lock(run_dir: Path, wait: bool = False, say=print, poll: float = 1.0):
    """Exclusive lock on one run folder. Without ``wait``, ``RunLocked`` names the live holder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        f.seek(0)
        text = f.read()
        f.close()
        raise RunLocked(f"{run_dir} is being run by {describe(_parse(text))}") from None
    except OSError as e:
        f.close()
        if e.errno not in NO_FLOCK:
            raise
        _say_once(run_dir, e, say)
        with _file_lock(run_dir, wait, poll):
            yield
        return
    try:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(holder()))
        f.flush()
        yield
    finally:
        f.seek(0)
        f.truncate()
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _say_once(run_dir: Path, e: OSError, say) -> None:
    dev = os.stat(run_dir).st_dev
    if dev not in _said:
        _said.add(dev)
        code = errno.errorcode.get(e.errno or 0, e.errno)
        say(f"note: the file system of {run_dir} does not support flock ({code}); "
            f"runs are locked with lock files and a heartbeat instead (a dead holder's lock is taken over "
            f"after {STALE_SECONDS:.0f} s)")


def lock_holder(run_dir: Path) -> dict | None:
    """The live holder of a run's lock, or None when nobody holds it (for ``bench status``)."""
    run_dir = Path(run_dir)
    owner = run_dir / LOCK_FILE
    if owner.exists():
        rec = _read_owner(owner)
        if rec is not None and time.time() - rec["_mtime"] <= STALE_SECONDS:
            return rec
    if not (run_dir / LOCK).exists():
        return None
    with open(run_dir / LOCK, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return _parse(f.read()) or {}
        except OSError as e:
            if e.errno in NO_FLOCK:
                return None
            raise
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def _read_owner(path: Path) -> dict | None:
    """The record of a lock file with its modification time as ``_mtime``; None if it is gone."""
    try:
        text, mtime = path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    return (_parse(text) or {}) | {"_mtime": mtime}


def _stale(rec: dict, me: dict) -> str | None:
    """Why a lock file's holder is gone, or None if it may be alive."""
    # A requeued job keeps its id and counts its restarts (two processes of one interactive
    # allocation share the id and the count: neither may take the other's lock).
    if (me.get("slurm_job") and rec.get("slurm_job") == me["slurm_job"]
            and int(rec.get("slurm_restart", 0)) < me["slurm_restart"]):
        return f"held by an earlier run of this Slurm job ({describe(rec)})"
    age = time.time() - rec["_mtime"]
    if age > STALE_SECONDS:
        return f"held by {describe(rec)}, whose heartbeat stopped {age:.0f} s ago"
    return None


@contextmanager
def _file_lock(run_dir: Path, wait: bool, poll: float):
    """The exclusive-create lock file with a heartbeat thread."""
    path = run_dir / LOCK_FILE
    me = holder()
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            rec = _read_owner(path)
            if rec is None:
                continue  # released meanwhile
            if _stale(rec, me):
                _take_over(path, rec)
                continue
            if not wait:
                raise RunLocked(f"{run_dir} is being run by {describe(rec)}") from None
            time.sleep(poll)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        break
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name="run-lock-heartbeat")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        rec = _read_owner(path)
        if rec is not None and rec.get("token") == me["token"]:
            path.unlink(missing_ok=True)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            os.utime(path)
        except FileNotFoundError:  # taken over (this process was taken for dead): nothing to refresh
            return


def _take_over(path: Path, rec: dict) -> None:
    """Remove a dead holder's lock file, unless another process replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read_owner(aside)
    if moved is not None and moved.get("token") != rec.get("token"):
        try:  # a live holder's file moved aside by this race: put it back if the name is still free
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)
