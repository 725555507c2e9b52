"""Fault injection: SIGKILL during evaluation, truncated checkpoints and metrics, planted
checkpoints, leftovers of killed writers, a diverging model, concurrent processes, an unwritable
results folder. Exact resume after SIGKILL / SIGTERM mid-training is in test_resume.py. Run all
of them alone with ``nox -s faults``."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import bench_cli
from resume_runs import assert_identical_runs, logged_iterations, resume_args, run_dir, start

pytestmark = pytest.mark.faults


def _args(protocol: Path, dataset: Path, results: Path, models: str = "unet") -> list[str]:
    return resume_args(protocol, dataset, results, models)


def _metrics(results: Path, model: str = "unet") -> pd.DataFrame:
    return pd.read_parquet(run_dir(results, model) / "metrics.parquet")


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "finished before it could be killed: " + proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_during_evaluation_reuses_the_final_weights(resume_reference, resume_protocol, tiny_dataset,
                                                            tmp_path):
    results = tmp_path / "results"
    folder = run_dir(results, "unet")
    proc = start(_args(resume_protocol, tiny_dataset, results))
    # training is over once model.pt is there and the manifest holds the training figures
    _kill_when(proc, lambda: (folder / "model.pt").exists()
               and "train_seconds" in json.loads((folder / "manifest.json").read_text()))
    before = json.loads((folder / "manifest.json").read_text())
    assert before["status"] == "running" and not (folder / "metrics.parquet").exists()
    res = bench_cli(*_args(resume_protocol, tiny_dataset, results))
    assert res.returncode == 0, res.stderr
    assert "resuming unet seed 0 after training (9 iterations done): evaluating model.pt" in res.stdout
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed_from"] == 9
    assert isinstance(manifest["train_seconds"], float) and manifest["train_seconds"] == before["train_seconds"] > 0
    pd.testing.assert_frame_equal(_metrics(results), _metrics(resume_reference))
    assert list(pd.read_csv(folder / "train_log.csv")["iteration"]) == list(range(9))


def test_truncated_checkpoint_falls_back_to_the_previous_one(resume_reference, resume_protocol, tiny_dataset,
                                                             tmp_path):
    results = tmp_path / "results"
    folder = run_dir(results, "unet")
    proc = start(_args(resume_protocol, tiny_dataset, results))
    _kill_when(proc, lambda: logged_iterations(folder) >= 6)  # checkpoints at 3 (.prev) and 6
    ckpt = folder / "checkpoint.pt"
    assert torch.load(ckpt, weights_only=True)["iteration"] == 6
    assert torch.load(folder / "checkpoint.pt.prev", weights_only=True)["iteration"] == 3
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    res = bench_cli(*_args(resume_protocol, tiny_dataset, results))
    assert res.returncode == 0, res.stderr
    assert f"{ckpt} is unreadable (not a whole checkpoint archive" in res.stdout and "Traceback" not in res.stderr
    assert "resuming unet seed 0 from iteration 3 of 9" in res.stdout  # the previous checkpoint, not a fresh start
    assert_identical_runs(folder, run_dir(resume_reference, "unet"))


def test_a_run_that_died_in_evaluation_reuses_its_final_weights(resume_reference, resume_protocol, tiny_dataset,
                                                                tmp_path):
    results = tmp_path / "results"
    shutil.copytree(resume_reference / "tiny", results / "tiny")
    folder = run_dir(results, "swinunet")
    first = json.loads((folder / "manifest.json").read_text())
    # the state a kill during evaluation leaves: weights saved, manifest still "running", no metrics
    (folder / "manifest.json").write_text(json.dumps(first | {"status": "running"}))
    (folder / "metrics.parquet").unlink()
    res = bench_cli(*_args(resume_protocol, tiny_dataset, results, "swinunet"))
    assert res.returncode == 0, res.stderr
    assert "after training (9 iterations done): evaluating model.pt" in res.stdout
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed_from"] == 9
    assert manifest["train_seconds"] == first["train_seconds"] > 0
    assert len(pd.read_csv(folder / "train_log.csv")) == 9
    pd.testing.assert_frame_equal(_metrics(results, "swinunet"), _metrics(resume_reference, "swinunet"))


@pytest.mark.parametrize("damage", ["truncated metrics", "torn manifest"])
def test_a_damaged_complete_run_is_evaluated_again_not_skipped(resume_reference, resume_protocol, tiny_dataset,
                                                               tmp_path, damage):
    results = tmp_path / "results"
    shutil.copytree(resume_reference / "tiny", results / "tiny")
    folder = run_dir(results, "unet")
    target = folder / ("metrics.parquet" if damage == "truncated metrics" else "manifest.json")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    res = bench_cli(*_args(resume_protocol, tiny_dataset, results))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert "skipped" not in res.stdout and "Traceback" not in res.stderr
    if damage == "truncated metrics":
        assert f"{target} is unreadable" in res.stdout and "evaluating it again" in res.stdout
    assert "after training (9 iterations done): evaluating model.pt" in res.stdout  # no retraining
    assert json.loads((folder / "manifest.json").read_text())["status"] == "complete"
    pd.testing.assert_frame_equal(_metrics(results), _metrics(resume_reference))


class _Planted:
    """What an attacker would leave as checkpoint.pt: unpickling it creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("form", ["torch.save", "bare pickle"])
def test_a_planted_checkpoint_is_refused_and_runs_nothing(resume_protocol, tiny_dataset, tmp_path, form):
    results = tmp_path / "results"
    folder = run_dir(results, "unet")
    folder.mkdir(parents=True)
    marker = tmp_path / "marker"
    planted = {"model": {}, "optimizer": {}, "iteration": 3, "x": _Planted(marker)}
    if form == "torch.save":
        torch.save(planted, folder / "checkpoint.pt")
    else:
        (folder / "checkpoint.pt").write_bytes(pickle.dumps(planted))
    res = bench_cli(*_args(resume_protocol, tiny_dataset, results))
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert f"{folder / 'checkpoint.pt'}: refused to load" in line
    assert not marker.exists()  # nothing ran
    assert not (folder / "train_log.csv").exists() and not (folder / "manifest.json").exists()  # nothing trained


def test_a_killed_writers_temporary_files_are_removed_on_resume(resume_protocol, tiny_dataset, tmp_path):
    results = tmp_path / "results"
    folder = run_dir(results, "swinunet")
    _kill_when(start(_args(resume_protocol, tiny_dataset, results, "swinunet")), lambda: logged_iterations(folder) >= 3)
    # what a SIGKILL in the middle of writing the next checkpoint (or a prediction) leaves
    (folder / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"PK\x03\x04half")
    (folder / "predictions").mkdir()
    (folder / "predictions" / ".case0001.npz.x.tmp").write_bytes(b"")
    res = bench_cli(*_args(resume_protocol, tiny_dataset, results, "swinunet"), "--drop-weights")
    assert res.returncode == 0, res.stderr
    assert "removed .checkpoint.pt.k1ll3d.tmp, left by a writer that was killed" in res.stdout
    assert not list(folder.rglob("*.tmp"))


def test_a_diverging_model_fails_alone(resume_protocol, tiny_dataset, tmp_path):
    from models import create_model

    model = create_model("unet", num_classes=9, img_size=64)
    poisoned = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in model.state_dict().items()}
    weights = tmp_path / "nan.pt"
    torch.save(poisoned, weights)
    results = tmp_path / "results"
    res = bench_cli(*_args(resume_protocol, tiny_dataset, results, "unet,swinunet-nano"), "--weights",
                    f"unet={weights}")
    assert res.returncode == 1
    assert "diverged" in res.stdout and "unet" in res.stdout
    bad = json.loads((run_dir(results, "unet") / "manifest.json").read_text())
    assert bad["status"] == "diverged" and "loss nan" in bad["error"]
    good = json.loads((run_dir(results, "swinunet-nano") / "manifest.json").read_text())
    assert good["status"] == "complete"


def test_two_processes_on_one_folder_train_each_run_once(resume_protocol, tiny_dataset, tmp_path):
    results = tmp_path / "results"
    procs = [start(_args(resume_protocol, tiny_dataset, results, "unet,swinunet-nano")) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for model in ("unet", "swinunet-nano"):
        trained = sum(f"{model} seed 0: complete" in out for out, _ in outs)
        reused = sum(f"{model} seed 0: skipped" in out for out, _ in outs)
        assert (trained, reused) == (1, 1), outs
        log = pd.read_csv(run_dir(results, model) / "train_log.csv")
        assert list(log["iteration"]) == list(range(9))


def _read_only_folder(tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return ro
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(ro)]).returncode != 0:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    return ro


def test_read_only_results_folder_fails_before_training(resume_protocol, tiny_dataset, tmp_path):
    ro = _read_only_folder(tmp_path)
    try:
        res = bench_cli(*_args(resume_protocol, tiny_dataset, ro / "results"))
        assert res.returncode == 2
        assert "results folder is not writable" in res.stderr and str(ro) in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)])
