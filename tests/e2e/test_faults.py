"""Fault injection: SIGKILL + resume, truncated checkpoints, a diverging model, concurrent
processes, an unwritable results folder. Run alone with ``nox -s faults``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import bench_cli, subprocess_env

pytestmark = pytest.mark.faults
RUN = ["run", "--protocol", "smoke", "--iterations", "40", "--checkpoint-every", "10"]


def _args(dataset: Path, results: Path, models: str = "unet") -> list[str]:
    return [*RUN, "--models", models, "--dataset", str(dataset), "--results", str(results),
            "--reports", str(results.parent / "reports")]


def _run_dir(results: Path, model: str = "unet") -> Path:
    return results / "tiny" / "smoke" / model / "seed0"


def _metrics(results: Path, model: str = "unet") -> pd.DataFrame:
    return pd.read_parquet(_run_dir(results, model) / "metrics.parquet")


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory) -> Path:
    """An uninterrupted run of the command the kill tests interrupt."""
    results = tmp_path_factory.mktemp("ref") / "results"
    res = bench_cli(*_args(tiny_dataset, results, "unet,swinunet-nano"), "--drop-weights")
    assert res.returncode == 0, res.stderr
    return results


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "finished before it could be killed: " + proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _checkpoint_at(run_dir: Path, iteration: int):
    def ready() -> bool:
        log = run_dir / "train_log.csv"
        return log.exists() and sum(1 for _ in open(log)) - 1 >= iteration
    return ready


@pytest.mark.parametrize("model, when", [("unet", 10), ("unet", 30), ("swinunet-nano", 20), ("unet", "eval")])
def test_sigkill_then_resume_gives_identical_metrics(reference, tiny_dataset, tmp_path, model, when):
    results = tmp_path / "results"
    run_dir = _run_dir(results, model)
    proc = _start(_args(tiny_dataset, results, model))
    if when == "eval":  # killed after the final checkpoint, during evaluation, before the metrics file
        _kill_when(proc, _checkpoint_at(run_dir, 40))
    else:
        _kill_when(proc, _checkpoint_at(run_dir, when))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    if when != "eval":  # during evaluation the kill may land just after metrics.parquet is renamed in
        assert not (run_dir / "metrics.parquet").exists()
    res = bench_cli(*_args(tiny_dataset, results, model))
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed_from"] > 0
    assert manifest["train_seconds"] != 0  # a number from before the kill, or None (unknown), never 0
    got, want = _metrics(results, model), _metrics(reference, model)
    assert not got.duplicated(["case", "label", "metric"]).any()
    pd.testing.assert_frame_equal(got, want)
    log = pd.read_csv(run_dir / "train_log.csv")
    assert list(log["iteration"]) == list(range(40))


def test_truncated_checkpoint_falls_back_to_the_previous_one(reference, tiny_dataset, tmp_path):
    results = tmp_path / "results"
    run_dir = _run_dir(results)
    proc = _start(_args(tiny_dataset, results))
    _kill_when(proc, _checkpoint_at(run_dir, 22))  # checkpoints at 10 and 20 exist
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    res = bench_cli(*_args(tiny_dataset, results))
    assert res.returncode == 0, res.stderr
    assert "unreadable" in res.stdout and "resuming" in res.stdout and "Traceback" not in res.stderr
    pd.testing.assert_frame_equal(_metrics(results), _metrics(reference))


def test_a_run_that_died_in_evaluation_reuses_its_final_weights(reference, tiny_dataset, tmp_path):
    results = tmp_path / "results"
    run_dir = _run_dir(results, "swinunet-nano")
    assert bench_cli(*_args(tiny_dataset, results, "swinunet-nano")).returncode == 0
    first = json.loads((run_dir / "manifest.json").read_text())
    # the state a kill during evaluation leaves: weights saved, manifest still "running", no metrics
    (run_dir / "manifest.json").write_text(json.dumps(first | {"status": "running"}))
    (run_dir / "metrics.parquet").unlink()
    res = bench_cli(*_args(tiny_dataset, results, "swinunet-nano"))
    assert res.returncode == 0, res.stderr
    assert "after training (40 iterations done): evaluating model.pt" in res.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed_from"] == 40
    assert manifest["train_seconds"] == first["train_seconds"] > 0
    assert len(pd.read_csv(run_dir / "train_log.csv")) == 40
    pd.testing.assert_frame_equal(_metrics(results, "swinunet-nano"), _metrics(reference, "swinunet-nano"))


def test_a_diverging_model_fails_alone(tiny_dataset, tmp_path):
    from models import create_model

    model = create_model("unet", num_classes=9, img_size=64)
    poisoned = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in model.state_dict().items()}
    weights = tmp_path / "nan.pt"
    torch.save(poisoned, weights)
    results = tmp_path / "results"
    res = bench_cli(*_args(tiny_dataset, results, "unet,swinunet-nano"), "--weights", f"unet={weights}")
    assert res.returncode == 1
    assert "diverged" in res.stdout and "unet" in res.stdout
    bad = json.loads((_run_dir(results, "unet") / "manifest.json").read_text())
    assert bad["status"] == "diverged" and "loss nan" in bad["error"]
    good = json.loads((_run_dir(results, "swinunet-nano") / "manifest.json").read_text())
    assert good["status"] == "complete"


def test_two_processes_on_one_folder_train_each_run_once(tiny_dataset, tmp_path):
    results = tmp_path / "results"
    procs = [_start(_args(tiny_dataset, results, "unet,swinunet-nano")) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for model in ("unet", "swinunet-nano"):
        trained = sum(f"{model} seed 0: complete" in out for out, _ in outs)
        reused = sum(f"{model} seed 0: skipped" in out for out, _ in outs)
        assert (trained, reused) == (1, 1), outs
        log = pd.read_csv(_run_dir(results, model) / "train_log.csv")
        assert list(log["iteration"]) == list(range(40))


def _read_only_folder(tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return ro
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(ro)]).returncode != 0:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    return ro


def test_read_only_results_folder_fails_before_training(tiny_dataset, tmp_path):
    ro = _read_only_folder(tmp_path)
    try:
        res = bench_cli(*_args(tiny_dataset, ro / "results"))
        assert res.returncode == 2
        assert "results folder is not writable" in res.stderr and str(ro) in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)])
