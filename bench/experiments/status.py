"""``bench status``: every run under a results folder, its state and, for scheduled runs, its job.

The state comes from the run folder (the manifest, whether a live process holds the run's
lock, the ``job.json`` a submission left) and, for Slurm jobs, from ``squeue`` / ``sacct``:

- complete, failed, diverged: what the manifest says;
- running: a live process holds the lock (or Slurm runs the task and it is starting);
- pending: the Slurm task waits in the queue (submitted, or requeued after a preemption);
- interrupted: the run started, stopped before finishing, and nothing runs or queues it now.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from bench.engine.locks import describe, lock_holder
from bench.engine.results import MANIFEST, TRAIN_LOG, RunId, parse_run_path, read_manifest
from bench.experiments.executors.common import FINISHED, JOB_MARKER, read_marker

STYLE = {"complete": "green", "running": "cyan", "pending": "blue", "failed": "red", "diverged": "red",
         "interrupted": "yellow"}
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESV_DEL_HOLD")


@dataclass
class RunStatus:
    path: Path
    run: RunId
    state: str
    job: str = ""  # Slurm task id or Ray task
    where: str = ""  # node or host
    progress: str = ""
    detail: str = ""


def _checkpointed(run_dir: Path) -> int:
    """Iterations in the training log (written with each checkpoint)."""
    try:
        with open(run_dir / TRAIN_LOG) as f:
            return sum(1 for _ in csv.DictReader(f))
    except (FileNotFoundError, csv.Error):
        return 0


def _job_of(manifest: dict | None, marker: dict | None) -> tuple[str, str]:
    ex = (manifest or {}).get("executor") or {}
    if marker and marker.get("executor") == "slurm":
        return marker["job_id"], ex.get("node") or ""
    if ex.get("name") == "slurm":
        return ex.get("job_id", ""), ex.get("node") or ""
    if ex.get("name") == "ray":
        return f"ray {str(ex.get('task_id', ''))[:12]}", ex.get("node") or ""
    return "", (manifest or {}).get("host", "")


def _state(run_dir: Path, m: dict | None, marker: dict | None, live: dict, ended: dict) -> tuple[str, str]:
    job = (marker or {}).get("job_id") if (marker or {}).get("executor") == "slurm" else None
    if m and m.get("status") in FINISHED:
        return m["status"], m.get("error") or ""
    holder = lock_holder(run_dir)
    if holder is not None:
        return "running", f"held by {describe(holder)}"
    queued = live.get(job) if job else None
    if queued:
        if queued["state"] in WAITING:
            again = m is not None  # it started before: a requeue
            return "pending", f"{'requeued, ' if again else ''}waiting ({queued['reason']})"
        return "running", f"Slurm {queued['state'].lower()}"
    how = f" (Slurm {ended[job]})" if job and job in ended else ""
    if m is None:
        log = f"; log: {marker.get('log')}" if marker and marker.get("log") else ""
        return "failed", f"the job ended before the run started{how}{log}"
    stopped = m.get("error") or "its process is gone"
    return "interrupted", f"{stopped}{how}; run the command again to resume"


def collect(results: Path) -> list[RunStatus]:
    """The status of every run folder under ``results`` (one squeue call for all Slurm jobs)."""
    from bench.experiments.executors.slurm import final_states, queue

    dirs = sorted({p.parent for name in (MANIFEST, JOB_MARKER) for p in Path(results).glob(f"*/*/*/seed*/{name}")})
    folders = [(d, read_manifest(d), read_marker(d)) for d in dirs]
    jobs = [mk["job_id"] for _, _, mk in folders if mk and mk.get("executor") == "slurm"]
    live = queue(jobs) or {}
    unfinished = [mk["job_id"] for _, m, mk in folders if mk and mk.get("executor") == "slurm"
                  and mk["job_id"] not in live and not (m and m.get("status") in FINISHED)]
    ended = final_states(unfinished) if unfinished else {}
    out = []
    for d, m, mk in folders:
        state, detail = _state(d, m, mk, live, ended)
        job, where = _job_of(m, mk)
        if job in live and live[job]["node"]:
            where = live[job]["node"]
        done = _checkpointed(d)
        if state == "complete":
            progress = f"{m.get('iterations', '?')} iterations"
        else:
            progress = f"checkpoint at {done}" if done else ""
        out.append(RunStatus(d, parse_run_path(d), state, job, where, progress, detail))
    return out


def render(rows: list[RunStatus], results: Path) -> Table:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    table = Table(title=f"{results}: {summary}")
    for column in ("dataset", "protocol", "model", "seed", "state", "job", "where", "progress", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column not in ("model", "detail"))
    for r in rows:
        table.add_row(r.run.dataset, r.run.protocol, r.run.model, str(r.run.seed),
                      f"[{STYLE.get(r.state, '')}]{r.state}[/]", r.job, r.where, r.progress, r.detail)
    return table
