"""Exact resume: a run killed by SIGKILL or stopped by SIGTERM mid-training, then the same
command, ends with every metric row, every logged loss and every weight identical, bit for bit, to
an uninterrupted run. Swin-Unet has drop-path (a random layer: its random stream must resume
exactly); the U-Net is the convolutional case. Signals go after the first and after the second
checkpoint (SIGTERM then checkpoints wherever the run stops, off the checkpoint grid)."""
from __future__ import annotations

import json
import re
import signal

import pytest
import torch
from helpers import bench_cli
from resume_runs import (
    RESUME_MODELS,
    assert_identical_runs,
    logged_iterations,
    resume_args,
    run_dir,
    signal_when,
    start,
)

pytestmark = pytest.mark.faults
POINTS = {"first checkpoint": 3, "second checkpoint": 6}  # iterations in the train log when the signal goes


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("model", RESUME_MODELS)
def test_interrupted_run_resumes_bit_for_bit(resume_reference, resume_protocol, tiny_dataset, tmp_path,
                                             model, sig, point):
    results = tmp_path / "results"
    args = resume_args(resume_protocol, tiny_dataset, results, model)
    folder = run_dir(results, model)
    at = POINTS[point]
    out, _ = signal_when(start(args), lambda: logged_iterations(folder) >= at, sig)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert not (folder / "metrics.parquet").exists() and not (folder / "model.pt").exists()
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)["iteration"]
    if sig == signal.SIGKILL:
        assert manifest["status"] == "running" and saved == at
    else:  # the stop is taken between iterations, with a checkpoint wherever that was
        stopped = int(re.search(r"stopped by SIGTERM at iteration (\d+)", out).group(1))
        assert manifest["status"] == "interrupted" and saved == stopped >= at
    res = bench_cli(*args)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    assert f"resuming {model} seed 0 from iteration {saved} of 9" in res.stdout
    assert json.loads((folder / "manifest.json").read_text())["resumed_from"] == saved
    assert_identical_runs(folder, run_dir(resume_reference, model))
