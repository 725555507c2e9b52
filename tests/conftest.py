"""Shared fixtures: a tiny synthetic dataset and one torch thread per module."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.data.synthetic import generate as synth


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
