"""The whole recipe from the command line: `bench protocol`, `--set`, precision, validation during a
run, and live tracking read back with TensorBoard's and MLflow's own readers."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import bench_cli, subprocess_env

MODEL = "swinunet-nano"
TRACKED = ["--set", "precision=bf16", "--set", "validation.during_run=true", "--track", "tensorboard,mlflow"]
TRACKED_PROTOCOL = "smoke@precision=bf16,validation.during_run=true"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], env=env or subprocess_env(), capture_output=True,
                          text=True, timeout=600)


def _hash(shown: str) -> str:
    return re.match(r"# protocol \S+, hash ([0-9a-f]{12})\n", shown).group(1)


def test_protocol_show_and_list():
    plain, four = _cli("protocol", "show", "cpu"), _cli("protocol", "show", "cpu", "--set", "batch_size=4")
    assert plain.returncode == four.returncode == 0, plain.stderr + four.stderr
    assert "batch_size: 8\n" in plain.stdout and "batch_size: 4\n" in four.stdout
    assert "precision: fp32\n" in plain.stdout and "cudnn: {benchmark: false, deterministic: true}" in plain.stdout
    assert four.stdout.startswith("# protocol cpu@batch_size=4, hash ")
    assert "threads: 2\n" in plain.stdout
    assert _hash(plain.stdout) == "8a5838133ca4" != _hash(four.stdout)  # cpu says threads: 2 since issue 27
    listed = _cli("protocol", "list")
    assert listed.returncode == 0
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [
        ["cpu", "8a5838133ca4"], ["paper", "2e19206b078d"], ["smoke", "b906b8ec34f9"]]


@pytest.mark.parametrize("args, needle", [
    (["protocol", "show", "cpu", "--set", "nosuch=1"], "--set: unknown key 'nosuch'"),
    (["run", "--models", MODEL, "--set", "evaluation.convention=loose"], "key 'evaluation.convention'"),
    (["run", "--models", MODEL, "--track", "wandb"], "--track: unknown tracker 'wandb'"),
    (["run", "--models", MODEL, "--protocol", "smoke", "--set", "precision=fp16", "--device", "cpu"],
     "precision fp16 is not available on cpu"),
])
def test_bad_overrides_are_one_line(args, needle, tiny_dataset, tmp_path):
    if args[0] == "run":
        args = [*args, "--dataset", str(tiny_dataset), "--results", str(tmp_path / "r")]
    res = _cli(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not list((tmp_path / "r").glob("*/*/*/seed*"))  # no run folder was started


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """The same model and seed twice: fp32 as shipped, and bf16 validating during training and tracked."""
    out = tmp_path_factory.mktemp("recipe")
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("MLFLOW_")}
    common = ["run", "--models", MODEL, "--protocol", "smoke", "--dataset", str(tiny_dataset),
              "--results", str(out / "results"), "--reports", str(out / "reports"), "--drop-weights"]
    plain = _cli(*common, env=env)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    tracked = _cli(*common, *TRACKED, env=env)
    assert tracked.returncode == 0, tracked.stdout + tracked.stderr
    return out, tracked


def _manifest(out: Path, protocol: str) -> dict:
    return json.loads((out / "results" / "tiny" / protocol / MODEL / "seed0" / "manifest.json").read_text())


def test_bf16_on_a_cpu_is_its_own_run_and_is_recorded(runs):
    out, _ = runs
    fp32, bf16 = _manifest(out, "smoke"), _manifest(out, TRACKED_PROTOCOL)
    assert fp32["status"] == bf16["status"] == "complete"
    assert (fp32["precision"], fp32["autocast"]) == ("fp32", None)
    assert (bf16["precision"], bf16["autocast"], bf16["protocol"]["precision"]) == ("bf16", "bfloat16", "bf16")
    assert fp32["protocol_hash"] == "b906b8ec34f9" != bf16["protocol_hash"] and fp32["key"] != bf16["key"]
    for m in (fp32, bf16):
        assert m["bit_reproducible"] is True and m["cudnn"]["applied"] is False
        assert 100 < m["peak_host_memory_mb"] < 20_000
    # never pooled: one report per cohort, and an index that tells them apart by their precision
    res = bench_cli("report", "--results", str(out / "results"), "--reports", str(out / "mixed"))
    assert res.returncode == 0, res.stdout + res.stderr
    index = (out / "mixed" / "index.md").read_text()
    assert "2 cohorts" in index and all(f"| {m['protocol_hash']} | {m['precision']} |" in index for m in (fp32, bf16))
    md = (out / "reports" / "tiny" / TRACKED_PROTOCOL / "report.md").read_text()
    assert f"protocol {TRACKED_PROTOCOL} (hash {bf16['protocol_hash']}, bf16, 1 thread on a CPU)" in md
    assert "peak host memory (MB)" in md


def test_two_thread_counts_give_two_run_folders_never_pooled(tiny_dataset, tmp_path):
    """smoke (1 thread) and smoke@threads=2: two recipes, two folders, as the manifests record, even
    though the environment asks for 1 thread (subprocess_env sets OMP_NUM_THREADS=1)."""
    common = ["run", "--models", MODEL, "--protocol", "smoke", "--dataset", str(tiny_dataset), "--results",
              str(tmp_path / "results"), "--reports", str(tmp_path / "reports"), "--drop-weights", "--no-report"]
    for extra in ([], ["--set", "threads=2"]):
        res = _cli(*common, *extra)
        assert res.returncode == 0, res.stdout + res.stderr
    folders = sorted(p.parent.relative_to(tmp_path / "results") for p in
                     (tmp_path / "results").glob("*/*/*/seed*/manifest.json"))
    assert folders == [Path("tiny/smoke") / MODEL / "seed0", Path("tiny/smoke@threads=2") / MODEL / "seed0"]
    one, two = (json.loads((tmp_path / "results" / f / "manifest.json").read_text()) for f in folders)
    assert (one["threads"], one["protocol"]["threads"], two["threads"], two["protocol"]["threads"]) == (1, 1, 2, 2)
    assert one["threads_applied"] is two["threads_applied"] is True and one["cpu_vendor"]
    assert one["protocol_hash"] == "b906b8ec34f9" != two["protocol_hash"] and one["key"] != two["key"]
    again = _cli(*common, "--set", "threads=2")  # the same command again reuses its own run
    assert again.returncode == 0 and "already complete" in again.stdout, again.stdout
    res = bench_cli("report", "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "mixed"))
    assert res.returncode == 0, res.stdout + res.stderr  # never pooled: a report per thread count, and an index
    index = (tmp_path / "mixed" / "index.md").read_text()
    assert "2 cohorts" in index
    assert all(f"| {m['protocol_hash']} | fp32 | {m['threads']} |" in index for m in (one, two))


def test_validation_scores_held_out_training_cases_during_the_run(runs):
    out, tracked = runs
    bf16 = _manifest(out, TRACKED_PROTOCOL)
    run_dir = out / "results" / "tiny" / TRACKED_PROTOCOL / MODEL / "seed0"
    log = pd.read_csv(run_dir / "validation_log.csv")
    assert list(log["iteration"]) == [2, 4] and log["dice"].between(0, 1).all()
    assert bf16["validation_cases"] and not set(bf16["validation_cases"]) & {"case0001"}  # the test case
    assert "validation at iteration 2: DSC" in tracked.stdout


def test_tensorboard_reads_the_curves(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = runs
    events = EventAccumulator(str(out / "results" / "tiny" / TRACKED_PROTOCOL / MODEL / "seed0" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/ce_loss", "train/dice_loss", "train/lr"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3, 4], tag
    log = pd.read_csv(out / "results" / "tiny" / TRACKED_PROTOCOL / MODEL / "seed0" / "train_log.csv")
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(list(log["loss"]), abs=1e-6)
    assert [e.step for e in events.Scalars("val/dice")] == [2, 4]
    assert {"test/dice", "test/hd95", "test/dice/liver"} <= set(scalars)


def test_mlflow_reads_the_run_params_and_curves(runs):
    from mlflow.tracking import MlflowClient

    out, _ = runs
    store = out / "results" / "mlflow" / "mlflow.db"
    assert store.is_file()
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("segbench/tiny")
    [run] = client.search_runs([experiment.experiment_id])
    bf16 = _manifest(out, TRACKED_PROTOCOL)
    assert run.info.run_name == f"{TRACKED_PROTOCOL}/{MODEL}/seed0" and run.info.status == "FINISHED"
    params = run.data.params
    assert (params["protocol_hash"], params["dataset_fingerprint"], params["model"], params["seed"],
            params["precision"]) == (bf16["protocol_hash"], bf16["dataset"]["fingerprint"], MODEL, "0", "bf16")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/dice")] == [2, 4]
    assert 0 <= run.data.metrics["test/dice"] <= 1 and "test/hd95/liver" in run.data.metrics
    assert not (Path.cwd() / "mlruns").exists()


def test_nothing_is_tracked_without_track(runs):
    out, _ = runs
    plain = out / "results" / "tiny" / "smoke" / MODEL / "seed0"
    assert not (plain / "tensorboard").exists() and not (plain / "mlflow_run.json").exists()
