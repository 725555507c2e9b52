#!/usr/bin/env python3
"""A one-node Slurm cluster in a folder, for the tests of ``--executor slurm`` (needs root).

    python3 .ci/minislurm.py start DIR     # munged, slurmctld, slurmd; prints the SLURM_CONF to export
    python3 .ci/minislurm.py stop DIR      # stops exactly the daemons it started (by pid)

Everything lives in DIR: its own munge key and socket, slurm.conf, state, spool, logs and pid
files, free ports. Nothing under /etc or /run is touched, so a Slurm the machine already runs
is left alone. The node is this machine as ``slurmd -C`` describes it (cores, memory), with
``proctrack/linuxproc``, ``task/none`` and ``select/cons_tres``, no accounting database.
Standard library only: CI calls it before the project is installed.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """``NodeName=... CPUs=... RealMemory=...`` of this machine, from slurmd itself."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


def _config(d: Path) -> str:
    node = _node_line()
    host = node.split()[0].split("=", 1)[1]
    fields = dict(kv.split("=", 1) for kv in node.split()[1:])
    mem_per_cpu = int(fields["RealMemory"]) // int(fields["CPUs"])
    return f"""\
ClusterName=segbench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={mem_per_cpu}
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=10
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _run(cmd: list[str], env: dict) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"minislurm: {' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")


def _wait_for(what: str, ready, timeout: float = 30) -> None:
    t0 = time.time()
    while not ready():
        if time.time() - t0 > timeout:
            raise SystemExit(f"minislurm: {what} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def start(d: Path) -> None:
    if os.geteuid() != 0:
        raise SystemExit("minislurm: needs root (munged, slurmctld and slurmd run as root)")
    for tool in ("munged", "mungekey", "slurmctld", "slurmd", "sinfo"):
        if shutil.which(tool) is None:
            raise SystemExit(f"minislurm: {tool} not found (apt-get install slurm-wlm munge)")
    d = d.resolve()
    if (d / "pids").exists():
        raise SystemExit(f"minislurm: {d} already runs a cluster; stop it first")
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    os.chmod(d / "munge", 0o700)
    key = d / "munge" / "munge.key"
    if not key.exists():
        _run(["mungekey", "--create", "--keyfile", str(key)], dict(os.environ))
    (d / "slurm.conf").write_text(_config(d))
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    pids: dict[str, int] = {}
    try:
        _run(["munged", "--force", f"--socket={d}/munge/munge.socket", f"--key-file={key}",
              f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/log/munged.log",
              f"--seed-file={d}/munge/munged.seed"], env)
        pids["munged"] = int((d / "munge" / "munged.pid").read_text())
        _run(["slurmctld"], env)
        _wait_for("slurmctld", lambda: (d / "slurmctld.pid").exists())
        pids["slurmctld"] = int((d / "slurmctld.pid").read_text())
        _run(["slurmd"], env)
        _wait_for("slurmd", lambda: (d / "slurmd.pid").exists())
        pids["slurmd"] = int((d / "slurmd.pid").read_text())

        def idle() -> bool:
            res = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return res.returncode == 0 and res.stdout.strip() == "idle"

        _wait_for("the node", idle)
    finally:
        (d / "pids").write_text("".join(f"{name} {pid}\n" for name, pid in pids.items()))
    print(f"export SLURM_CONF={d / 'slurm.conf'}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def stop(d: Path) -> None:
    path = d / "pids"
    if not path.exists():
        return
    pids = dict(line.split() for line in path.read_text().splitlines() if line.strip())
    for name in DAEMONS:
        if name not in pids:
            continue
        pid = int(pids[name])
        if not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        t0 = time.time()
        while _alive(pid) and time.time() - t0 < 15:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    path.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        raise SystemExit(__doc__)
    (start if sys.argv[1] == "start" else stop)(Path(sys.argv[2]))
