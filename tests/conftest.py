"""Shared fixtures: a tiny synthetic dataset and a way to call the CLI as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.data.synthetic import generate as synth

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: tiny models gain nothing from two, and two thrash under load."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Two training cases and one test volume at 64 x 64: enough for the smoke protocol."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    return synth.generate(root, seed=0, size=64, train_cases=("0005", "0006"), test_cases=("0001",))


def subprocess_env() -> dict[str, str]:
    """Subprocess environment: one torch thread each, so concurrent test processes don't thrash."""
    return dict(os.environ, COLUMNS="200", NO_COLOR="1", OMP_NUM_THREADS="1")


def bench_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m bench ARGS`` in a fresh process and capture its output."""
    env = subprocess_env()
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
