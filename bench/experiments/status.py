"""``bench status``: every run under a results folder (trained and external), its state and, for
scheduled runs, its job.

The state comes from the run folder (the manifest, whether a live process holds the run's
lock, the ``job.json`` a submission left) and, for Slurm jobs, from ``squeue`` / ``sacct``:

- complete, failed, diverged: what the manifest says;
- running: a live process holds the lock (or Slurm runs the task and it is starting);
- pending: the Slurm task waits in the queue (submitted, or requeued after a preemption);
- interrupted: the run started, stopped before finishing, and nothing runs or queues it now;
- unreadable: the manifest is not JSON (torn, or not written by us);
- unknown: no manifest, and a ``job.json`` that names no Slurm job (partial, or another tool's).

External runs (``bench evaluate --pred``) are listed with the cases they scored and their source.
Folders that hold a manifest or ``job.json`` where no run lives (``seedabc``) are not runs: they are
named (``not_runs``), never read as runs, and never stop the listing.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text

from bench.engine.locks import describe, lock_holder
from bench.engine.results import MANIFEST, TRAIN_LOG, read_manifest
from bench.engine.runs import EXTERNAL, JOB_MARKER, RunId, list_runs, parse_run_path, scan_runs
from bench.experiments.executors.common import FINISHED, read_marker

STYLE = {"complete": "green", "running": "cyan", "pending": "blue", "failed": "red", "diverged": "red",
         "interrupted": "yellow", "unreadable": "red", "unknown": "yellow"}
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
    except (OSError, UnicodeDecodeError, csv.Error):
        return 0


def _slurm_task(marker: dict | None) -> str | None:
    """The Slurm task a ``job.json`` names; None without one (no marker, another executor's, or a
    partial file without a job id)."""
    if not marker or marker.get("executor") != "slurm":
        return None
    job = marker.get("job_id")
    return str(job) if isinstance(job, str | int) and not isinstance(job, bool) and str(job) else None


def _job_of(manifest: dict | None, marker: dict | None) -> tuple[str, str]:
    ex = (manifest or {}).get("executor")
    ex = ex if isinstance(ex, dict) else {}
    task = _slurm_task(marker)
    if task:
        return task, str(ex.get("node") or "")
    if ex.get("name") == "slurm":
        return str(ex.get("job_id", "")), str(ex.get("node") or "")
    if ex.get("name") == "ray":
        return f"ray {str(ex.get('task_id', ''))[:12]}", str(ex.get("node") or "")
    return "", str((manifest or {}).get("host") or "")


def _state(run_dir: Path, m: dict | None, marker: dict | None, live: dict, ended: dict) -> tuple[str, str]:
    if m is None and (run_dir / MANIFEST).exists():
        return "unreadable", f"{MANIFEST} could not be parsed"
    if m is None and marker is None:  # listed for its job.json, which is no JSON object
        return "unknown", f"{JOB_MARKER} could not be parsed"
    job = _slurm_task(marker)
    if m and m.get("status") in FINISHED:
        return str(m["status"]), str(m.get("error") or "")
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
        if marker is not None and job is None:  # a partial or foreign job.json: say what it holds
            return "unknown", f"{JOB_MARKER} names no Slurm job ({json.dumps(marker)[:120]})"
        log = f"; log: {marker.get('log')}" if marker and marker.get("log") else ""
        return "failed", f"the job ended before the run started{how}{log}"
    stopped = m.get("error") or "its process is gone"
    return "interrupted", f"{stopped}{how}; run the command again to resume"


def _source(m: dict) -> dict:
    """An external run's record of its predictions ({} if it has none)."""
    source = m.get("source")
    return source if isinstance(source, dict) else {}


def _progress(m: dict | None, state: str, run_dir: Path) -> str:
    if m and m.get("kind") == EXTERNAL:  # scored predictions: no training, no checkpoint
        source = _source(m)
        files = source.get("files") if isinstance(source.get("files"), dict) else {}
        return f"{len(files)} cases" if files else ""
    if state == "complete":
        return f"{(m or {}).get('iterations', '?')} iterations"
    done = _checkpointed(run_dir)
    return f"checkpoint at {done}" if done else ""


def _detail(m: dict | None, detail: str) -> str:
    if not detail and m and m.get("kind") == EXTERNAL:
        source = _source(m)
        return f"predictions from {source.get('predictions')}" if source.get("predictions") else ""
    return detail


def collect(results: Path) -> list[RunStatus]:
    """The status of every run folder under ``results`` (one squeue call for all Slurm jobs); folders
    that are no run's (``not_runs``) are left out."""
    from bench.experiments.executors.slurm import final_states, queue

    folders = []
    for d in list_runs(results):
        m = read_manifest(d)
        folders.append((d, m if isinstance(m, dict) else None, read_marker(d)))
    jobs = [job for _, _, mk in folders if (job := _slurm_task(mk))]
    live = queue(jobs) or {}
    unfinished = [job for _, m, mk in folders if (job := _slurm_task(mk)) and job not in live
                  and not (m and m.get("status") in FINISHED)]
    ended = final_states(unfinished) if unfinished else {}
    out = []
    for d, m, mk in folders:
        state, detail = _state(d, m, mk, live, ended)
        job, where = _job_of(m, mk)
        if job in live and live[job]["node"]:
            where = live[job]["node"]
        out.append(RunStatus(d, parse_run_path(d), state, job, where, _progress(m, state, d), _detail(m, detail)))
    return out


def not_runs(results: Path) -> list[Path]:
    """Folders under ``results`` that hold a manifest or ``job.json`` where no run lives (``seedabc``):
    ``bench status`` names them and lists the runs."""
    return scan_runs(results)[1]


def render(rows: list[RunStatus], results: Path) -> Table:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    table = Table(title=f"{results}: {summary}")
    # On 80 columns (a pipe) rich shrinks every column: who and what state must stay readable, long names fold
    longest = {"model": max((len(r.run.model) for r in rows), default=5), "seed": 4,
               "state": max((len(r.state) for r in rows), default=5)}
    keep = {"model": min(longest["model"], 14), "seed": longest["seed"], "state": min(longest["state"], 11)}
    for column in ("dataset", "protocol", "model", "seed", "state", "job", "where", "progress", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in ("seed", "state"), min_width=keep.get(column))
    for r in rows:  # every cell is plain text: a path or an error with brackets is shown as it is
        table.add_row(r.run.dataset, r.run.protocol, r.run.model, "-" if r.run.external else str(r.run.seed),
                      Text(r.state, style=STYLE.get(r.state, "")), r.job, r.where, r.progress, r.detail)
    return table
