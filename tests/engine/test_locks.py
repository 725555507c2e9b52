"""Run locks on cluster file systems: the holder names its Slurm job; without flock (ENOLCK /
ENOSYS, as on Lustre or NFS without a lock daemon) an exclusive-create lock file with a heartbeat
takes over, a dead holder's file is taken over once its heartbeat stops, and a requeued Slurm
task takes over its own earlier lock file at once."""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from bench.engine import locks
from bench.engine.locks import LOCK_FILE, RunLocked, lock_holder, run_lock

FORK = mp.get_context("fork")


def _hold(run_dir, ready, release, env=None):
    os.environ.update(env or {})
    with run_lock(Path(run_dir), say=lambda _: None):
        ready.set()
        release.wait(20)


def _holding(run_dir: Path, env: dict | None = None):
    ready, release = FORK.Event(), FORK.Event()
    p = FORK.Process(target=_hold, args=(str(run_dir), ready, release, env))
    p.start()
    assert ready.wait(20)
    return p, release


@pytest.fixture
def no_flock(monkeypatch):
    """flock fails as on Lustre mounted without -o flock; what the lock says goes to a list."""
    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", refuse)
    monkeypatch.setattr(locks, "_said", set())
    return refuse


def _slurm_env(monkeypatch, job: str, restarts: int) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))


def test_run_lock_excludes_a_second_process_and_dies_with_its_holder(tmp_path: Path):
    p, _ = _holding(tmp_path)
    with pytest.raises(RunLocked, match=f"pid {p.pid}"):
        with run_lock(tmp_path):
            pass
    p.kill()  # SIGKILL: no cleanup runs, the kernel still releases the lock
    p.join()
    with run_lock(tmp_path):
        pass


def test_the_flock_holder_names_its_slurm_job(tmp_path):
    p, release = _holding(tmp_path, {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"})
    try:
        with pytest.raises(RunLocked, match=rf"pid {p.pid} \(Slurm job 70_3\)"):
            with run_lock(tmp_path):
                pass
        assert lock_holder(tmp_path)["slurm_job"] == "77"
    finally:
        release.set()
        p.join()
    assert lock_holder(tmp_path) is None


def test_without_flock_a_lock_file_excludes_other_processes_and_it_says_so_once(tmp_path, no_flock):
    said = []
    p, release = _holding(tmp_path / "a")
    try:
        assert json.loads((tmp_path / "a" / LOCK_FILE).read_text())["pid"] == p.pid
        with pytest.raises(RunLocked, match=f"pid {p.pid}"):
            with run_lock(tmp_path / "a", say=said.append):
                pass
        assert lock_holder(tmp_path / "a")["pid"] == p.pid
        with run_lock(tmp_path / "b", say=said.append):  # another run on the same file system
            assert (tmp_path / "b" / LOCK_FILE).exists()
        assert not (tmp_path / "b" / LOCK_FILE).exists()
    finally:
        release.set()
        p.join()
    assert len(said) == 1 and "does not support flock (ENOLCK)" in said[0]
    assert not (tmp_path / "a" / LOCK_FILE).exists() and lock_holder(tmp_path / "a") is None
    with run_lock(tmp_path / "a", say=said.append):
        pass


def test_without_flock_wait_blocks_until_the_holder_releases(tmp_path, no_flock):
    p, release = _holding(tmp_path)
    t0 = time.time()
    FORK.Process(target=lambda: (time.sleep(1.0), release.set())).start()
    with run_lock(tmp_path, wait=True, poll=0.05):
        assert time.time() - t0 >= 0.9
    p.join()


def _write_owner(run_dir: Path, age: float, **rec) -> None:
    path = run_dir / LOCK_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "node7", "pid": 4242, "token": "t"} | rec))
    then = time.time() - age
    os.utime(path, (then, then))


def test_a_dead_holders_lock_file_is_taken_over_once_its_heartbeat_stopped(tmp_path, no_flock):
    _write_owner(tmp_path, age=10)
    with pytest.raises(RunLocked, match="node7 pid 4242"):
        with run_lock(tmp_path):
            pass
    _write_owner(tmp_path, age=locks.STALE_SECONDS + 5)
    assert lock_holder(tmp_path) is None
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_requeued_slurm_task_takes_over_its_own_lock_file_at_once(tmp_path, no_flock, monkeypatch):
    _write_owner(tmp_path, age=1, slurm_job="77", slurm_restart=0)
    _slurm_env(monkeypatch, "77", 0)  # the same incarnation (two processes of one allocation): no
    with pytest.raises(RunLocked, match=r"Slurm job 77"):
        with run_lock(tmp_path):
            pass
    _slurm_env(monkeypatch, "78", 1)  # another job: no
    with pytest.raises(RunLocked):
        with run_lock(tmp_path):
            pass
    _slurm_env(monkeypatch, "77", 1)  # the same job after a requeue: yes
    with run_lock(tmp_path):
        rec = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (rec["slurm_job"], rec["slurm_restart"], rec["pid"]) == ("77", 1, os.getpid())


def test_the_heartbeat_keeps_a_live_holders_lock_file_fresh(tmp_path, no_flock, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.05)
    with run_lock(tmp_path):
        path = tmp_path / LOCK_FILE
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 1
