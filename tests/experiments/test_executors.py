"""Executors without a cluster: resources and their defaults, options that don't fit an executor
(one line, exit 2), what is left to run, and ``bench status`` reading run folders and the queue
(the queue is faked here; tests/e2e/test_cluster.py asks a real Slurm)."""
from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import bench_cli

from bench.cli.options import EXECUTOR, executor_from
from bench.engine.locks import run_lock
from bench.engine.settings import RunSettings
from bench.errors import BenchError
from bench.experiments.executors import common, resources
from bench.experiments.executors import slurm as slurm_mod
from bench.experiments.options import ExecutorOptions
from bench.experiments.status import collect, render
from bench.protocol import load_protocol


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("8:00:00", 480), ("2-00:00:00", 2880),
                                           ("1-12", 2160), ("0-00:30", 30)])
def test_slurm_time_limits_in_minutes(text, minutes):
    assert resources.slurm_minutes(text) == minutes


def test_gpus_and_cpus_per_run_default_to_what_the_run_will_use():
    ex = ExecutorOptions(name="slurm")
    paper, cpu = load_protocol("paper"), load_protocol("cpu")
    assert resources.gpus_per_run(ex, "auto", paper) == 1 and resources.gpus_per_run(ex, "auto", cpu) == 0
    assert resources.gpus_per_run(ex, "cuda", cpu) == 1 and resources.gpus_per_run(ex, "cpu", paper) == 0
    ablated = cpu.model_copy(update={"name": "cpu@input_size=128"})
    assert resources.gpus_per_run(ex, "auto", ablated) == 0
    assert resources.gpus_per_run(ExecutorOptions(name="ray", gpus_per_run=2), "cpu", cpu) == 2
    # the protocol's threads, plus one CPU per data-loader worker (paper: 1 + 8; cpu: 2 + 0)
    assert resources.cpus_per_run(ex, paper) == 9 and resources.cpus_per_run(ex, cpu) == 2
    assert resources.cpus_per_run(ex, load_protocol("smoke")) == 1
    assert resources.cpus_per_run(ExecutorOptions(name="slurm", cpus_per_run=4), paper) == 4


def test_fewer_cpus_per_run_than_the_protocols_threads_are_refused(tmp_path, tiny_dataset):
    cpu = load_protocol("cpu")
    with pytest.raises(BenchError, match=r"--cpus-per-run 1: protocol cpu runs 2 threads per run .* at least 2"):
        resources.cpus_per_run(ExecutorOptions(name="ray", cpus_per_run=1), cpu)
    assert resources.cpus_per_run(ExecutorOptions(name="ray", cpus_per_run=1), cpu.derive(threads=1)) == 1
    res = bench_cli("run", "--models", "unet", "--protocol", "cpu", "--dataset", str(tiny_dataset), "--results",
                    str(tmp_path), "--executor", "ray", "--cpus-per-run", "1")
    assert res.returncode == 2 and "--cpus-per-run 1: protocol cpu runs 2 threads" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("*/*/*/seed*"))


@pytest.mark.parametrize("options, message", [
    ({"partition": "gpu"}, "--partition only apply to --executor slurm"),
    ({"executor": "ray", "time": "1:00:00", "mem": "8G"}, "--mem, --time only apply to --executor slurm"),
    ({"gpus_per_run": 1}, "apply to --executor slurm or ray"),
    ({"executor": "slurm", "ray_address": "auto"}, "--ray-address only applies to --executor ray"),
    ({"executor": "pbs"}, "--executor must be one of local, slurm, ray"),
    ({"executor": "slurm", "slurm_arg": ["account"]}, "--slurm-arg expects KEY=VALUE"),
    ({"executor": "slurm", "time": "8h"}, "--time expects a Slurm time"),
    ({"executor": "slurm", "mem": "lots"}, "--mem expects a Slurm size"),
    ({"executor": "slurm", "max_parallel": 0}, "--max-parallel must be at least 1"),
    ({"executor": "slurm", "cpus_per_run": 0}, "--cpus-per-run must be at least 1"),
])
def test_options_that_do_not_fit_the_executor_are_refused(options, message):
    flags = {name: option.default for name, (_, option) in EXECUTOR.items()}
    with pytest.raises(BenchError, match=re.escape(message)):
        executor_from(flags | options)


def test_executor_flags_reach_the_options():
    flags = {name: option.default for name, (_, option) in EXECUTOR.items()}
    ex = executor_from(flags | {"executor": "slurm", "time": "2-00:00:00", "mem": "32G",
                        "slurm_arg": ["account=lab", "--qos=high"]})
    assert (ex.name, ex.time, ex.mem) == ("slurm", "2-00:00:00", "32G")
    assert ex.slurm_args == {"account": "lab", "qos": "high"}


def test_a_misfit_flag_is_one_line_and_exit_2_through_the_cli(tmp_path):
    res = bench_cli("run", "--models", "unet", "--results", str(tmp_path), "--partition", "gpu")
    assert res.returncode == 2 and "--partition only apply to --executor slurm" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_tune_workers_need_a_storage_every_node_reaches(tmp_path):
    res = bench_cli("tune", "--model", "unet", "--executor", "slurm", "--workers", "2", "--results", str(tmp_path))
    assert res.returncode == 2 and "--storage journal:FILE" in res.stderr and "Traceback" not in res.stderr
    res = bench_cli("tune", "--model", "unet", "--workers", "2", "--results", str(tmp_path))
    assert res.returncode == 2 and "--workers applies to --executor slurm or ray" in res.stderr


# ----- bench status ----------------------------------------------------------------------------

def _folder(results: Path, model: str, manifest: dict | None = None, marker: dict | None = None) -> Path:
    d = results / "tiny" / "smoke" / model / "seed0"
    d.mkdir(parents=True)
    if manifest is not None:
        (d / "manifest.json").write_text(json.dumps(manifest))
    if marker is not None:
        (d / common.JOB_MARKER).write_text(json.dumps(marker | {"executor": "slurm"}))
    return d


def _hold(run_dir, ready, release):
    with run_lock(Path(run_dir)):
        ready.set()
        release.wait(20)


def test_status_reads_run_folders_locks_and_the_queue(tmp_path, monkeypatch):
    results = tmp_path / "results"
    _folder(results, "a-done", {"status": "complete", "iterations": 4}, {"job_id": "5_0"})
    _folder(results, "b-queued", None, {"job_id": "5_1", "log": "/logs/5_1_0_log.out"})
    _folder(results, "c-requeued", {"status": "interrupted", "error": "stopped by SIGUSR1 at iteration 10"},
            {"job_id": "5_2"})
    _folder(results, "d-vanished", None, {"job_id": "5_3", "log": "/logs/5_3_0_log.out"})
    _folder(results, "e-killed", {"status": "running"}, {"job_id": "5_4"})
    live = _folder(results, "f-live", {"status": "running"})
    _folder(results, "g-diverged", {"status": "diverged", "error": "loss nan at iteration 3"})
    queue = {"5_1": {"state": "PENDING", "reason": "Resources", "node": "", "job": "7"},
             "5_2": {"state": "PENDING", "reason": "BeginTime", "node": "", "job": "8"}}
    asked = []

    def fake_queue(ids, finished=False):
        asked.append(sorted(ids))
        return {i: q for i, q in queue.items() if i in ids}

    monkeypatch.setattr(slurm_mod, "queue", fake_queue)
    monkeypatch.setattr(slurm_mod, "final_states", lambda ids: {"5_3": "FAILED", "5_4": "NODE_FAIL"})
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(live), ready, release))
    holder.start()
    assert ready.wait(20)
    try:
        rows = {r.run.model: r for r in collect(results)}
    finally:
        release.set()
        holder.join()
    assert asked[0] == ["5_0", "5_1", "5_2", "5_3", "5_4"]  # one query for every job
    state = {m: r.state for m, r in rows.items()}
    assert state == {"a-done": "complete", "b-queued": "pending", "c-requeued": "pending", "d-vanished": "failed",
                     "e-killed": "interrupted", "f-live": "running", "g-diverged": "diverged"}
    assert rows["b-queued"].job == "5_1" and "Resources" in rows["b-queued"].detail
    assert "requeued" in rows["c-requeued"].detail and "BeginTime" in rows["c-requeued"].detail
    assert "Slurm FAILED" in rows["d-vanished"].detail and "/logs/5_3_0_log.out" in rows["d-vanished"].detail
    assert "Slurm NODE_FAIL" in rows["e-killed"].detail and "resume" in rows["e-killed"].detail
    assert f"pid {holder.pid}" in rows["f-live"].detail
    assert rows["a-done"].progress == "4 iterations"
    assert "1 complete, 1 diverged, 1 failed, 1 interrupted, 2 pending, 1 running" in render(
        list(rows.values()), results).title


def test_a_complete_run_is_never_handed_to_a_worker_and_force_resets_before_submitting(tmp_path, tiny_dataset):
    from rich.console import Console

    from bench.data.resolve import resolve_dataset
    from bench.engine.runner import RunSpec
    from bench.experiments.options import RunOptions

    ds = resolve_dataset(str(tiny_dataset), say=lambda *_: None)
    proto = load_protocol("smoke")
    jobs = [(RunSpec("unet", s, 0.01, "flag --lr"), proto) for s in (0, 1)]
    opts = RunOptions(protocol="smoke", run=RunSettings(results=tmp_path), console=Console(quiet=True))
    first = common.plan(jobs, ds, opts)
    done = first[0]
    done.path.mkdir(parents=True)
    (done.path / "manifest.json").write_text(json.dumps({"status": "complete", "key": done.key}))
    (done.path / "checkpoint.pt").write_text("old")
    (done.path / "metrics.parquet").write_bytes(b"PAR1 torn")
    assert isinstance(common.plan(jobs, ds, opts)[0], common.RunJob)  # complete, metrics unreadable: run again
    pd.DataFrame({"value": [1.0]}).to_parquet(done.path / "metrics.parquet")
    planned = common.plan(jobs, ds, opts)
    assert planned[0].status == "skipped" and isinstance(planned[1], common.RunJob)
    assert planned[1].settings.results.is_absolute() and planned[1].ds.root.is_absolute()
    forced = common.plan(jobs, ds, RunOptions(protocol="smoke", run=RunSettings(results=tmp_path, force=True),
                                              console=Console(quiet=True)))
    assert all(isinstance(p, common.RunJob) for p in forced)
    assert not (done.path / "manifest.json").exists() and not (done.path / "checkpoint.pt").exists()
    with pytest.raises(BenchError, match="--force: .* is being run by"):
        ctx = mp.get_context("fork")
        ready, release = ctx.Event(), ctx.Event()
        p = ctx.Process(target=_hold, args=(str(done.path), ready, release))
        p.start()
        assert ready.wait(20)
        try:
            common.plan(jobs, ds, RunOptions(protocol="smoke", run=RunSettings(results=tmp_path, force=True),
                                             console=Console(quiet=True)))
        finally:
            release.set()
            p.join()


def test_a_ray_task_whose_worker_dies_is_retried_then_recorded_as_a_failed_run(tmp_path, tiny_dataset, monkeypatch):
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("SEGBENCH_REQUIRE_RAY"):
            pytest.fail("Ray is not installed (SEGBENCH_REQUIRE_RAY is set)")
        pytest.skip("Ray is not installed (pip install 'segbench[ray]')")
    from rich.console import Console

    from bench.data.resolve import resolve_dataset
    from bench.engine.runner import RunSpec
    from bench.experiments.executors import ray as ray_mod
    from bench.experiments.options import RunOptions

    attempts = tmp_path / "attempts"

    def dies(job):  # a worker killed mid-run (out of memory, a lost node), every time
        import json
        import os

        with open(attempts, "a") as f:
            f.write("x\n")
        job.path.mkdir(parents=True, exist_ok=True)
        (job.path / "manifest.json").write_text(json.dumps({"status": "running", "key": job.key}))
        os._exit(3)

    monkeypatch.setattr(ray_mod, "ray_run", dies)
    ds = resolve_dataset(str(tiny_dataset), say=lambda *_: None)
    opts = RunOptions(protocol="smoke", run=RunSettings(results=tmp_path / "results"), console=Console(quiet=True),
                      executor=ExecutorOptions(name="ray", cpus_per_run=1))
    [out] = ray_mod.execute_ray([(RunSpec("unet", 0, 0.01, "flag --lr"), load_protocol("smoke"))], ds, opts)
    assert out.status == "failed" and "Ray task failed" in out.message
    assert attempts.read_text().count("x") == 1 + ray_mod.RETRIES
    manifest = json.loads((out.path / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == out.message


def _text(table) -> str:
    from rich.console import Console

    console = Console(width=250, record=True, markup=False, file=open(os.devnull, "w"))
    console.print(table)
    return console.export_text()


def test_status_reads_partial_and_foreign_job_files_without_a_traceback(tmp_path, monkeypatch):
    """Issue 25, item 17: a job.json of {"executor": "slurm"} raised KeyError: 'job_id'."""
    results = tmp_path / "results"
    markers = {"a-partial": {"executor": "slurm"}, "b-int-id": {"executor": "slurm", "job_id": 7},
               "c-other-tool": {"executor": "pbs", "id": 3}, "d-list": [], "e-torn": '{"executor": "slu'}
    for model, marker in markers.items():
        d = results / "tiny" / "smoke" / model / "seed0"
        d.mkdir(parents=True)
        (d / common.JOB_MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    torn = _folder(results, "f-torn-manifest")
    (torn / "manifest.json").write_text('{"status": "compl')
    _folder(results, "g-odd-error", {"status": "failed", "error": {"not": "text"}, "executor": "not a dict"})
    asked = []
    monkeypatch.setattr(slurm_mod, "queue", lambda ids, finished=False: asked.append(ids) or {})
    monkeypatch.setattr(slurm_mod, "final_states", lambda ids: {"7": "FAILED"})
    rows = {r.run.model: r for r in collect(results)}
    assert asked == [["7"]]  # only the marker that names a job is asked about
    assert {m: r.state for m, r in rows.items()} == {
        "a-partial": "unknown", "b-int-id": "failed", "c-other-tool": "unknown", "d-list": "unknown",
        "e-torn": "unknown", "f-torn-manifest": "unreadable", "g-odd-error": "failed"}
    assert "job.json names no Slurm job" in rows["a-partial"].detail and "pbs" in rows["c-other-tool"].detail
    assert "could not be parsed" in rows["e-torn"].detail and "Slurm FAILED" in rows["b-int-id"].detail
    text = _text(render(list(rows.values()), results))
    assert "{'not': 'text'}" in text and "4 unknown" in text


def test_status_lists_external_runs_with_their_cases_and_source(tmp_path):
    """Issue 25, item 24: external runs are listed (no seed, no iterations: the cases scored and where from)."""
    results = tmp_path / "results"
    ext = results / "tiny" / "external" / "nnunet"
    ext.mkdir(parents=True)
    (ext / "manifest.json").write_text(json.dumps({
        "kind": "external", "status": "complete", "run": {"dataset": "tiny", "protocol": "external",
                                                          "model": "nnunet", "seed": 0},
        "source": {"predictions": "/data/nnunet/preds", "files": {"case0001": "case0001.nii.gz",
                                                                 "case0002": "case0002.nii.gz"}}}))
    _folder(results, "unet", {"status": "complete", "iterations": 4})
    rows = {r.run.model: r for r in collect(results)}
    assert rows["nnunet"].state == "complete" and rows["nnunet"].run.external
    assert rows["nnunet"].progress == "2 cases" and rows["nnunet"].detail == "predictions from /data/nnunet/preds"
    line = next(line for line in _text(render(list(rows.values()), results)).splitlines() if "nnunet" in line)
    assert [c.strip() for c in line.strip("│ ").split("│")][:5] == ["tiny", "external", "nnunet", "-", "complete"]


@pytest.mark.parametrize("item, needle", [
    ("account=lab\ntouch X", "the value holds a newline"),  # issue 25, item 21
    ("account=lab\r#SBATCH --x", "the value holds a newline"),
    ("comment=a\x00b", "another control character"),
    ("acc\nount=lab", "with an sbatch option name"),
    ("account lab=x", "with an sbatch option name"),
    ("signal=KILL@1", "the harness sets signal (the warning (USR1@120)"),  # item 22
    ("--signal=KILL@1", "add --slurm-override signal"),
    ("sig=KILL@1", "the harness sets signal"),  # sbatch reads --sig as --signal
    ("output=/tmp/x.log", "the harness sets output"),
    ("error=/tmp/x.err", "add --slurm-override error"),
    ("open_mode=truncate", "the harness sets open-mode"),
    ("array=0-99", "use --max-parallel"),
    ("requeue=no", "always on"),
    ("no-requeue=1", "requeue is always on"),
    ("time=1:00:00", "use --time"),
    ("mem=4G", "use --mem"),
    ("cpus_per_task=4", "use --cpus-per-run"),
    ("gpus-per-node=2", "use --gpus-per-run"),
    ("p=gpu", "use --partition"),  # an abbreviation of partition
])
def test_slurm_args_that_would_break_the_batch_script_or_the_harness_are_refused(item, needle):
    flags = {name: option.default for name, (_, option) in EXECUTOR.items()}
    with pytest.raises(BenchError) as e:
        executor_from(flags | {"executor": "slurm", "slurm_arg": [item]})
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_key_the_harness_sets_is_replaced_only_with_slurm_override():
    flags = {name: option.default for name, (_, option) in EXECUTOR.items()} | {"executor": "slurm"}
    ex = executor_from(flags | {"slurm_arg": ["signal=USR1@600", "job-name=mine", "gpus=2", "mail_type=END"],
                        "slurm_override": ["signal", "job_name"]})
    assert ex.slurm_args == {"signal": "USR1@600", "job_name": "mine", "gpus": "2", "mail-type": "END"}
    for overrides, args, needle in ((["signal"], [], "--slurm-override signal: no --slurm-arg sets it"),
                                    (["account"], ["account=lab"], "not a key the harness sets"),
                                    (["time"], ["time=1"], "time cannot be overridden")):
        with pytest.raises(BenchError, match=re.escape(needle)):
            executor_from(flags | {"slurm_arg": args, "slurm_override": overrides})
    with pytest.raises(BenchError, match="--slurm-arg, --slurm-override only apply to --executor slurm"):
        executor_from(flags | {"executor": "local", "slurm_arg": ["signal=x"], "slurm_override": ["signal"]})


def test_the_batch_script_holds_one_line_per_option_and_an_override_replaces_the_harness_value(tmp_path):
    sbatch = pytest.importorskip("submitit.slurm.slurm", reason="submitit is optional: pip install 'segbench[slurm]'")
    flags = {name: option.default for name, (_, option) in EXECUTOR.items()} | {"executor": "slurm"}

    def script(**values) -> list[str]:
        ex = executor_from(flags | values)
        params = slurm_mod.sbatch_parameters(ex, gpus=1, cpus=9, minutes=60, n=3, name="segbench")
        text = sbatch._make_sbatch_string(command="python -m x", folder=tmp_path / "%j", map_count=3, **params)
        return [line for line in text.splitlines() if line.startswith("#SBATCH")]

    plain = script(slurm_arg=["account=lab", "qos=high"])
    assert "#SBATCH --signal=USR1@120" in plain and "#SBATCH --requeue" in plain and "#SBATCH --account=lab" in plain
    assert "#SBATCH --array=0-2%3" in plain and "#SBATCH --job-name=segbench" in plain
    mine = script(slurm_arg=["signal=USR1@600", "job_name=mine"], slurm_override=["signal", "job-name"])
    assert [line for line in mine if "--signal" in line] == ["#SBATCH --signal=USR1@600"]
    assert [line for line in mine if "--job-name" in line] == ["#SBATCH --job-name=mine"]
