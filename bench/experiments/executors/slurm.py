"""``--executor slurm``: one ``sbatch --array`` per command through submitit, one run per task.

Submitting: completed runs are left out, runs still queued by an earlier command are not
submitted twice, and each submitted run gets a ``job.json`` naming its task. The command then
returns (``bench status`` follows the jobs) or, with ``--wait``, polls ``squeue`` until every
task has left the queue and reads the outcomes from the run folders.

In a task: the run goes through ``runner.execute`` like a local one. The job is submitted with
``--signal=USR1@120``: on that warning (preemption or the time limit coming) training writes a
checkpoint at the next iteration and the task requeues itself with ``scontrol requeue``; outside
training (loading, evaluating) it requeues at once. A task killed without warning and requeued
(``scontrol requeue``, a node failure) resumes from its last periodic checkpoint. Either way it
continues in the same run folder, which comes from the run's identity, never from a job id.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.engine.runner import Outcome
from bench.engine.runs import RunSpec
from bench.engine.train import Interrupted, Preempted
from bench.errors import BenchError
from bench.experiments.executors import resources
from bench.experiments.executors.common import (
    RunJob,
    Submitted,
    outcome_from_folder,
    plan,
    read_marker,
    run_here,
    say,
    set_threads,
    write_marker,
)
from bench.experiments.options import RunOptions
from bench.protocol import Protocol

SIGNAL = "USR1"
SIGNAL_LEAD_SECONDS = 120  # warning before the limit: enough for an iteration and a checkpoint
POLL_SECONDS = 3.0
JOBS_DIR = Path("jobs") / "slurm"  # under the results folder


def _check_slurm():
    try:
        import submitit
    except ImportError:
        raise BenchError("--executor slurm needs submitit: pip install 'segbench[slurm]'") from None
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise BenchError("--executor slurm: sbatch / srun not found; run the command on a Slurm login node")
    return submitit


def _default_minutes(partition: str | None) -> int:
    """The partition's default time limit, else its maximum (0: none), from ``sinfo``."""
    res = subprocess.run(["sinfo", "-h", "-o", "%P|%L|%l"], capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"--executor slurm: sinfo failed: {res.stderr.strip() or res.stdout.strip()}")
    for line in res.stdout.splitlines():
        name, default, maximum = line.split("|")
        if (partition and name.rstrip("*") == partition) or (not partition and name.endswith("*")):
            for limit in (default, maximum):
                if limit not in ("n/a", "infinite", "UNLIMITED", ""):
                    return resources.slurm_minutes(limit)
            return 0
    raise BenchError(f"--partition {partition}: no such partition (sinfo lists "
                     f"{', '.join(line.split('|')[0] for line in res.stdout.splitlines())})" if partition
                     else "--executor slurm: no default partition; choose one with --partition")


def _time_text(minutes: int) -> str:
    return "unlimited" if minutes == 0 else f"{minutes // 60}:{minutes % 60:02d}:00"


def sbatch_parameters(ex, gpus: int, cpus: int, minutes: int, n: int, name: str) -> dict:
    """submitit's parameters of an array of ``n`` runs: the resources, the requeue signal, and the
    ``--slurm-arg`` options (checked by ``resources.parse_slurm_args``: only an overridden key
    replaces one of the harness's)."""
    params: dict = {"job_name": name, "cpus_per_task": cpus, "time": minutes, "array_parallelism": ex.max_parallel or n,
                    "additional_parameters": {"signal": f"{SIGNAL}@{SIGNAL_LEAD_SECONDS}", "requeue": True}}
    if gpus:
        params["gpus_per_node"] = gpus
    if ex.partition:
        params["partition"] = ex.partition
    if ex.mem:
        params["additional_parameters"]["mem"] = ex.mem
    params["additional_parameters"].update(ex.slurm_args)
    return params


def submit(fn, items: list, opts: RunOptions, protocol: Protocol, name: str) -> tuple[list[tuple[str, Path]], str]:
    """Submit ``fn(item)`` for every item as one array job; ``(task id, log)`` per item and the resources."""
    submitit = _check_slurm()
    ex = opts.executor
    gpus, cpus = resources.gpus_per_run(ex, opts.run.device, protocol), resources.cpus_per_run(ex, protocol)
    minutes = resources.slurm_minutes(ex.time) if ex.time else _default_minutes(ex.partition)
    folder = opts.run.results.resolve() / JOBS_DIR / "%A"
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    executor.update_parameters(**sbatch_parameters(ex, gpus, cpus, minutes, len(items), name))
    try:
        with executor.batch():
            jobs = [executor.submit(fn, item) for item in items]
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as e:
        raise BenchError(f"sbatch refused the jobs: {str(e).strip().splitlines()[-1]}") from None
    described = (f"per run: {gpus} GPU{'s' if gpus != 1 else ''}, {cpus} CPU{'s' if cpus != 1 else ''}, "
                 f"mem {ex.mem or 'partition default'}, time {_time_text(minutes)}, partition "
                 f"{ex.partition or 'default'}" + "".join(f", {k} {v}" for k, v in ex.slurm_args.items()))
    return [(job.job_id, job.paths.stdout) for job in jobs], described


def execute_slurm(jobs: list[tuple[RunSpec, Protocol]], ds, opts: RunOptions) -> list[Outcome]:
    """Submit the runs that are left as one array job; with ``--wait``, their outcomes, in order."""
    _check_slurm()
    planned = plan(jobs, ds, opts)
    todo = {i: p for i, p in enumerate(planned) if isinstance(p, RunJob)}
    markers = {i: read_marker(job.path) or {} for i, job in todo.items()}
    live = queue([str(m["job_id"]) for m in markers.values() if m.get("executor") == "slurm" and m.get("job_id")]) or {}
    tracked: dict[int, tuple[str, str]] = {}  # index -> (task id, log)
    for i, m in markers.items():
        if m.get("executor") == "slurm" and m.get("job_id") in live:
            tracked[i] = (m["job_id"], m.get("log", ""))
            say(f"{todo[i].name}: already queued as Slurm job {m['job_id']} ({live[m['job_id']]['state'].lower()}); "
                "not submitted again")
    new = [i for i in todo if i not in tracked]
    skipped = len(planned) - len(todo)
    if new:
        # one array, one size of task: the most CPUs any of its runs needs (an ablation of threads)
        proto = max((todo[i].protocol for i in new), key=lambda p: resources.cpus_per_run(opts.executor, p))
        ids, described = submit(slurm_run, [todo[i] for i in new], opts, proto, "segbench")
        for i, (task, log_path) in zip(new, ids, strict=True):
            write_marker(todo[i].path, {"executor": "slurm", "job_id": task, "log": str(log_path)})
            tracked[i] = (task, str(log_path))
        array = ids[0][0].split("_")[0]
        opts.say(f"submitted {len(new)} run{'s' if len(new) != 1 else ''} as Slurm job {array} ({described})"
                 + (f"; {skipped} complete run{'s' if skipped != 1 else ''} reused" if skipped else ""))
        for i in new:
            opts.say(f"  {tracked[i][0]}: {todo[i].name}")
        opts.say(f"logs: {opts.run.results.resolve() / JOBS_DIR / array}/")
    if not tracked:  # every run was complete
        return _said([p for p in planned if isinstance(p, Outcome)], opts)
    if not opts.executor.wait:
        opts.say(f"follow them with `bench status --results {opts.run.results}`; run the same command again "
                 "(or with --wait) for the table once they are done")
        raise Submitted()
    try:
        states = wait({tracked[i][0]: todo[i].name for i in tracked}, opts.say)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting; the Slurm jobs go on (bench status --results "
                          f"{opts.run.results})") from None
    out = []
    for i, p in enumerate(planned):
        if isinstance(p, Outcome):
            out.append(p)
            continue
        task, log = tracked[i]
        out.append(outcome_from_folder(p, f"Slurm task {task} ended ({states.get(task, 'state unknown')}); "
                                          f"log: {log}"))
    return _said(out, opts)


def _said(outcomes: list[Outcome], opts: RunOptions) -> list[Outcome]:
    for o in outcomes:
        opts.say(f"{o.run.model} seed {o.run.seed}: {o.status}{f' ({o.message})' if o.message else ''} -> {o.path}")
    return outcomes


def queue(ids: list[str], finished: bool = False) -> dict[str, dict] | None:
    """``{task id: {"state", "node", "reason", "job"}}`` for those of ``ids`` in the queue (with
    ``finished``, also those that ended recently); None if ``squeue`` cannot answer."""
    if not ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    bases = sorted({str(i).split("_")[0] for i in ids})
    cmd = ["squeue", "-h", "-r", "-j", ",".join(bases), "-o", "%i|%A|%T|%N|%r"] + (["-t", "all"] if finished else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {} if "Invalid job id" in res.stderr else None
    out = {}
    for line in res.stdout.splitlines():
        task, job, state, node, reason = (line.split("|") + [""] * 5)[:5]
        if task in ids:
            out[task] = {"state": state, "job": job, "node": node, "reason": reason}
    return out


def final_states(ids: list[str]) -> dict[str, str]:
    """How tasks that left the queue ended (squeue remembers recent jobs, sacct older ones)."""
    known = {t: info["state"] for t, info in (queue(ids, finished=True) or {}).items()}
    rest = [t for t in ids if t not in known]
    if rest and shutil.which("sacct"):
        res = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(rest)],
                             capture_output=True, text=True)
        if res.returncode == 0:
            for line in res.stdout.splitlines():
                task, _, state = line.partition("|")
                if task in rest:
                    known[task] = state.split()[0] if state else state
    return known


def wait(tasks: dict[str, str], say_=print) -> dict[str, str]:
    """Block until every task has left the queue (a requeued task is still in it); their final states."""
    last: dict[str, str] = {}
    absent: set[str] = set()
    silent_since = None
    while True:
        now = queue(list(tasks))
        if now is None:  # the controller does not answer: keep waiting, say so once
            if silent_since is None:
                silent_since = time.time()
                say_("squeue does not answer; still waiting")
            time.sleep(POLL_SECONDS)
            continue
        silent_since = None
        for task, name in tasks.items():
            state = now.get(task, {}).get("state")
            if state and state != last.get(task):
                where = f" on {now[task]['node']}" if state == "RUNNING" and now[task]["node"] else ""
                say_(f"{task} {name}: {state.lower()}{where}")
                last[task] = state
        # a task counts as gone when two polls in a row miss it (a requeue passes through no gap,
        # but a controller restart could)
        gone = {t for t in tasks if t not in now}
        if gone and gone == set(tasks) and absent == gone:
            break
        absent = gone
        time.sleep(POLL_SECONDS)
    return final_states(list(tasks))


# ----- inside a task ---------------------------------------------------------------------------

def slurm_where() -> dict:
    """The executor record of the manifest: the array task, the job id, the node, requeues so far."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = os.environ.get("SLURM_JOB_ID", "")
    return {"name": "slurm", "job_id": f"{array}_{task}" if array else job, "slurm_job_id": job,
            "array_job_id": array, "array_task_id": int(task) if task else None,
            "node": os.environ.get("SLURMD_NODENAME"), "restarts": int(os.environ.get("SLURM_RESTART_COUNT") or 0)}


def requeue_self(reason: str) -> None:
    """``scontrol requeue`` this job, then leave (the scheduler starts it again later)."""
    job = os.environ["SLURM_JOB_ID"]
    say(f"{reason}; requeueing Slurm job {job}")
    res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if res.returncode != 0:
        say(f"scontrol requeue {job} failed: {res.stderr.strip()}")
        sys.exit(1)
    sys.exit(0)


def requeue_on_signal() -> None:
    """Outside training a warning signal means: requeue now (the state on disk is the last checkpoint
    or the final weights); training replaces this handler with its own checkpoint-first one."""
    def handle(signum, frame) -> None:
        requeue_self(f"{signal.Signals(signum).name} outside training")

    signal.signal(getattr(signal, "SIG" + SIGNAL), handle)


def slurm_run(job: RunJob) -> Outcome:
    """An array task: one run, requeued on the warning signal, in its run folder whatever the job id."""
    set_threads(int(os.environ.get("SLURM_CPUS_PER_TASK") or 0), job.protocol.num_workers)
    where = slurm_where()
    say(f"{job.name}: Slurm job {where['job_id']} on {where['node']} (restart {where['restarts']}) -> {job.path}")
    requeue_on_signal()
    try:
        out = run_here(job, where)
    except Preempted as e:
        requeue_self(str(e))
    except Interrupted as e:  # SIGTERM: cancelled, requeued by someone else, or at the time limit
        say(f"{job.name}: {e}; leaving the rest to the scheduler")
        sys.exit(1)
    say(f"{job.name}: {out.status}{f' ({out.message})' if out.message else ''}")
    return out
