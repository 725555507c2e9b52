"""``--executor slurm`` and ``--executor ray`` with the real engines: a one-node Slurm (CI starts
it with ``.ci/minislurm.py``) and a Ray started by the command.

- a 2 models x 2 seeds sweep under ``smoke`` gives metrics identical to the local run of the
  same command, through Slurm (submit and return, ``bench status``, then ``--wait``) and Ray, all
  with the default options and environment (no OMP_NUM_THREADS): each executor gives each run the
  protocol's thread count, whatever it would have given otherwise (issue 27);
- a run under ``cpu`` (60 iterations, a checkpoint every 10) gets ``scancel --signal=USR1``
  after its first checkpoint (it checkpoints, requeues itself and resumes), then a hard
  ``scontrol requeue``; it ends with the metrics and losses of an uninterrupted run;
- ``bench tune --executor slurm --workers 2 --trials 2`` on a journal file gives 4 trials.

Without a reachable Slurm (or without Ray) these tests skip and say why; CI sets
SEGBENCH_REQUIRE_SLURM / SEGBENCH_REQUIRE_RAY so that a skip fails instead.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from helpers import bench_cli, subprocess_env

# The cheapest models: one with random layers (drop-path), one without. A smp LinkNet on
# MobileNetV2 has no random layer, so it resumes exactly after a requeue; it trains 3x faster than
# smp-unet-resnet34 and 10x faster than unet under `cpu`.
FAST = "smp-linknet-mobilenet_v2"
SWEEP = ["run", "--models", f"swinunet-nano,{FAST}", "--seeds", "0,1", "--protocol", "smoke", "--drop-weights"]
RUNS = [(m, s) for m in ("swinunet-nano", FAST) for s in (0, 1)]
PREEMPT = ["run", "--models", FAST, "--seeds", "0", "--protocol", "cpu", "--iterations", "60",
           "--checkpoint-every", "10", "--drop-weights"]
PREEMPT_PROTOCOL = "cpu@checkpoint_every=10,iterations=60"  # the shorthands are --set overrides


def _need(reason: str | None, require_env: str) -> None:
    if reason:
        if os.environ.get(require_env):
            pytest.fail(f"{reason} ({require_env} is set: these tests must run here)")
        pytest.skip(reason)


def _slurm_reason() -> str | None:
    if importlib.util.find_spec("submitit") is None:
        return "submitit is not installed (pip install 'segbench[slurm]')"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm on this machine (CI installs slurm-wlm and starts one node with .ci/minislurm.py as root)"
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return (f"no Slurm cluster answers (sinfo: {res.stderr.strip()}); start one with "
                "`python3 .ci/minislurm.py start DIR` (root) and export the SLURM_CONF it prints")
    if not {"idle", "mix"} & set(res.stdout.split()):
        return f"the Slurm cluster has no idle node (sinfo: {res.stdout.strip()})"
    return None


@pytest.fixture(scope="module")
def slurm():
    _need(_slurm_reason(), "SEGBENCH_REQUIRE_SLURM")


@pytest.fixture
def jobs():
    """Slurm jobs a test submitted: cancelled at teardown, so a failed test leaves none behind."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


@pytest.fixture(scope="module")
def ray():
    _need(None if importlib.util.find_spec("ray") else "Ray is not installed (pip install 'segbench[ray]')",
          "SEGBENCH_REQUIRE_RAY")


def _as_a_user(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in a user's environment: no OMP_NUM_THREADS (``bench_cli`` sets it to 1),
    so each executor's own default would decide the thread count if the protocol did not."""
    env = {k: v for k, v in subprocess_env().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.run([sys.executable, "-m", "bench", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _where(out: Path) -> list[str]:
    return ["--results", str(out / "results"), "--reports", str(out / "reports")]


def _run_dir(results: Path, model: str, seed: int, protocol: str = "smoke") -> Path:
    return results / "tiny" / protocol / model / f"seed{seed}"


def _metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "metrics.parquet")


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def local_sweep(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    t0 = time.perf_counter()
    res = _as_a_user(*SWEEP, "--dataset", str(tiny_dataset), *_where(out))
    print(f"local sweep: {time.perf_counter() - t0:.1f} s")
    assert res.returncode == 0, res.stdout + res.stderr
    return out / "results"


def _same_metrics(local: Path, other: Path, protocol: str = "smoke", runs=RUNS) -> None:
    """Bit for bit: the metric values, and every column; the largest difference is printed (0.0)."""
    for model, seed in runs:
        a, b = _metrics(_run_dir(local, model, seed, protocol)), _metrics(_run_dir(other, model, seed, protocol))
        print(f"{model} seed {seed}: {len(a)} metric rows, max |difference| "
              f"{(a['value'] - b['value']).abs().max() if len(a) == len(b) else 'n/a'}")
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def _protocol_threads(results: Path, protocol: str = "smoke", runs=RUNS) -> None:
    """Every run trained with the protocol's threads (smoke: 1), on the CPU family it recorded."""
    for model, seed in runs:
        m = _manifest(_run_dir(results, model, seed, protocol))
        assert (m["threads"], m["threads_applied"], m["protocol"]["threads"]) == (1, True, 1), m["executor"]
        assert m["cpu_vendor"] and m["cpu"]


def test_a_slurm_sweep_submits_returns_and_waits_with_the_metrics_of_a_local_run(local_sweep, slurm, jobs,
                                                                                 tiny_dataset, tmp_path):
    args = [*SWEEP, "--dataset", str(tiny_dataset), *_where(tmp_path), "--executor", "slurm"]
    t0 = time.perf_counter()
    res = _as_a_user(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    job = re.search(r"submitted 4 runs as Slurm job (\d+) \(per run: 0 GPUs, 1 CPU", res.stdout).group(1)
    jobs.append(job)
    assert "follow them with `bench status" in res.stdout and "DSC %" not in res.stdout
    results = tmp_path / "results"
    status = bench_cli("status", "--results", str(results))
    assert status.returncode == 0, status.stderr
    for k in range(4):
        assert re.search(rf"(pending|running|complete)\s*│\s*{job}_{k}\b", status.stdout), status.stdout

    res = _as_a_user(*args, "--wait")  # the same command again: nothing is submitted twice
    print(f"slurm sweep (submit, status, --wait): {time.perf_counter() - t0:.1f} s")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not re.search(r"submitted \d+ run", res.stdout) and "DSC %" in res.stdout
    assert res.stdout.count("not submitted again") + res.stdout.count("already complete") == 4
    _same_metrics(local_sweep, results)
    _protocol_threads(local_sweep)
    _protocol_threads(results)
    tasks = set()
    for model, seed in RUNS:
        ex = _manifest(_run_dir(results, model, seed))["executor"]
        assert ex["name"] == "slurm" and ex["array_job_id"] == job and ex["restarts"] == 0 and ex["node"]
        tasks.add(ex["job_id"])
    assert tasks == {f"{job}_{k}" for k in range(4)}
    status = bench_cli("status", "--results", str(results))
    assert status.stdout.count("complete") >= 4 and "4 complete" in status.stdout


def test_a_ray_sweep_has_the_metrics_of_a_local_run(local_sweep, ray, tiny_dataset, tmp_path):
    args = [*SWEEP, "--dataset", str(tiny_dataset), *_where(tmp_path), "--executor", "ray"]
    t0 = time.perf_counter()
    res = _as_a_user(*args)
    print(f"ray sweep: {time.perf_counter() - t0:.1f} s")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "started on this machine" in res.stdout and "DSC %" in res.stdout
    assert "per run 0 GPUs and 1 CPU," in res.stdout  # smoke's 1 thread, no data-loader workers
    results = tmp_path / "results"
    _same_metrics(local_sweep, results)
    _protocol_threads(local_sweep)
    _protocol_threads(results)
    ids = set()
    for model, seed in RUNS:
        ex = _manifest(_run_dir(results, model, seed))["executor"]
        assert ex["name"] == "ray" and ex["node_id"] and ex["node"]
        ids.add(ex["task_id"])
    assert len(ids) == 4


# ----- preemption ------------------------------------------------------------------------------

def _until(what: str, ready, timeout: float = 400, proc: subprocess.Popen | None = None):
    t0 = time.time()
    while True:
        value = ready()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended while waiting for {what}: {proc.stdout.read()}")
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def _checkpointed(run_dir: Path) -> int:
    try:
        with open(run_dir / "train_log.csv") as f:
            return sum(1 for _ in csv.DictReader(f))
    except FileNotFoundError:
        return 0


def _state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _release_when_requeued(job: str, proc) -> None:
    """A requeued job waits for a begin time (Slurm's requeue delay); make it eligible in 2 s.

    Not at once: slurmd refuses a job whose credential is not newer than the revocation of its
    previous run, in whole seconds ("Job credential revoked"), and the job then fails."""
    _until(f"job {job} pending again", lambda: _state(job) == "PENDING", proc=proc)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+2"], check=True)


def _losses(run_dir: Path) -> list[str]:
    with open(run_dir / "train_log.csv") as f:
        return [r["loss"] for r in csv.DictReader(f)]


@pytest.mark.faults
def test_a_preempted_then_requeued_slurm_run_ends_as_an_uninterrupted_one(slurm, jobs, tiny_dataset, tmp_path):
    data = ["--dataset", str(tiny_dataset)]
    env = subprocess_env()
    reference = subprocess.Popen([sys.executable, "-m", "bench", *PREEMPT, *data, *_where(tmp_path / "ref")], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench", *PREEMPT, *data, *_where(tmp_path / "slurm"),
                             "--executor", "slurm", "--wait"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run_dir = _run_dir(tmp_path / "slurm" / "results", FAST, 0, PREEMPT_PROTOCOL)
    try:
        marker = _until("the submission", lambda: (run_dir / "job.json").exists() and
                        json.loads((run_dir / "job.json").read_text()), proc=proc)
        job, log = marker["job_id"], Path(marker["log"])
        jobs.append(job)
        _until("the first checkpoint", lambda: _checkpointed(run_dir) >= 10, proc=proc)
        subprocess.run(["scancel", "--signal=USR1", job], check=True)  # the warning before a preemption
        _release_when_requeued(job, proc)
        warned = _checkpointed(run_dir)
        _until("a checkpoint after the resume", lambda: _checkpointed(run_dir) >= warned + 10 and
               _checkpointed(run_dir) < 60, proc=proc)
        subprocess.run(["scontrol", "requeue", job], check=True)  # no warning
        _release_when_requeued(job, proc)
        out, _ = proc.communicate(timeout=600)
        ref_out, _ = reference.communicate(timeout=600)
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
    assert proc.returncode == 0, out
    assert reference.returncode == 0, ref_out
    text = log.read_text()
    print(text)  # the closing note's log lines
    stopped = int(re.search(r"SIGUSR1 at iteration (\d+): checkpoint saved", text).group(1))
    assert stopped == warned and 10 <= stopped < 60
    assert f"stopped by SIGUSR1 at iteration {stopped}; checkpoint saved; requeueing Slurm job {job}" in text
    resumed = [int(i) for i in re.findall(rf"resuming {FAST} seed 0 from iteration (\d+) of 60", text)]
    assert resumed[0] == stopped and len(resumed) == 2 and resumed[1] > stopped
    assert "(restart 2)" in text and _manifest(run_dir)["executor"]["restarts"] == 2
    ref_dir = _run_dir(tmp_path / "ref" / "results", FAST, 0, PREEMPT_PROTOCOL)
    pd.testing.assert_frame_equal(_metrics(ref_dir), _metrics(run_dir), check_exact=True)
    assert _losses(ref_dir) == _losses(run_dir) and len(_losses(run_dir)) == 60
    assert "DSC %" in out


def test_tune_workers_on_slurm_share_one_journal_study(slurm, jobs, tiny_dataset, tmp_path):
    storage = f"journal:{tmp_path / 'tune.log'}"
    res = bench_cli("tune", "--model", "swinunet-nano", "--trials", "2", "--protocol", "smoke", "--dataset",
                    str(tiny_dataset), "--results", str(tmp_path / "results"), "--storage", storage, "--study", "S",
                    "--device", "cpu", "--executor", "slurm", "--workers", "2", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    job = re.search(r"submitted as Slurm job (\d+)", res.stdout).group(1)
    from bench.experiments.tune.studies import open_storage

    trials = optuna.load_study(study_name="S", storage=open_storage(storage, create=False)).trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workers = sorted(t.user_attrs["worker"] for t in trials)
    assert workers == [f"{job}_0", f"{job}_0", f"{job}_1", f"{job}_1"]
    assert len({t.params["lr"] for t in trials}) == 4  # no trial duplicated
    assert "S: 4 trials (complete 4)" in res.stdout
