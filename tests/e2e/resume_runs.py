"""The runs the fault tests interrupt: a short protocol with frequent checkpoints, the command,
and the comparison of an interrupted run with an uninterrupted one, bit for bit."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from helpers import subprocess_env

# smoke-sized, with a learning rate that moves the weights, and checkpoints at iterations 3 and 6
RESUME_PROTOCOL = """\
description: fault tests (seconds); values are not meaningful
seeds: [0]
input_size: 64
batch_size: 2
base_lr: 0.05
iterations: 9
checkpoint_every: 3
evaluation: {batch_size: 8}
"""
RESUME_MODELS = ("swinunet", "unet")  # drop-path (a random layer) and a convolutional network


def resume_args(protocol: Path, dataset: Path, results: Path, models: str = "unet") -> list[str]:
    """The `bench run` command the fault tests interrupt and then run again (no report: not tested here)."""
    return ["run", "--models", models, "--protocol", str(protocol), "--dataset", str(dataset),
            "--results", str(results), "--reports", str(results.parent / "reports"), "--no-report"]


def run_dir(results: Path, model: str) -> Path:
    return results / "tiny" / "resume" / model / "seed0"


def start(args: list[str]) -> subprocess.Popen:
    """``python -m bench ARGS`` in the background, as a user would start it."""
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged_iterations(folder: Path) -> int:
    """Iterations in the train log (it is written with every checkpoint)."""
    log = folder / "train_log.csv"
    return sum(1 for _ in open(log)) - 1 if log.exists() else 0


def signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 300) -> tuple[str, str]:
    """Send ``sig`` once ``ready()`` holds; the process's stdout and stderr."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "finished before the signal: " + proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc.communicate(timeout=300)


def assert_identical_runs(got: Path, want: Path) -> None:
    """Metric rows, logged losses and learning rates, and final weights: all equal, bit for bit."""
    pd.testing.assert_frame_equal(pd.read_parquet(got / "metrics.parquet"), pd.read_parquet(want / "metrics.parquet"))
    a, b = pd.read_csv(got / "train_log.csv", dtype=str), pd.read_csv(want / "train_log.csv", dtype=str)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    wa = torch.load(got / "model.pt", weights_only=True)
    wb = torch.load(want / "model.pt", weights_only=True)
    assert wa["iteration"] == wb["iteration"] and wa["model"].keys() == wb["model"].keys()
    different = [k for k in wa["model"] if not torch.equal(wa["model"][k], wb["model"][k])]
    assert not different, f"{len(different)} of {len(wa['model'])} tensors differ, e.g. {different[:3]}"
