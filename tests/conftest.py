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


@pytest.fixture()
def bench(capsys, monkeypatch):
    """``bench ARGS`` in this process, through the entry point's code path: (exit status, stdout, stderr)."""
    import sys

    from bench.cli import main

    def call(*args: object) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        out, err = capsys.readouterr()
        return e.value.code, out, err

    return call


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Two training cases and one test volume at 64 x 64: enough for the smoke protocol."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    return synth.generate(root, seed=0, size=64, train_cases=("0005", "0006"), test_cases=("0001",))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_dataset) -> Path:
    """A complete smoke run of swinunet on the tiny dataset with its weights (for predict, export, report).

    Run in-process (no CLI start-up): ``<results>/tiny/smoke/swinunet/seed0``.
    """
    import torch

    from bench.data.resolve import resolve_dataset
    from bench.engine.runner import execute
    from bench.engine.runs import RunSpec
    from bench.engine.settings import RunSettings
    from bench.protocol import load_protocol

    protocol = load_protocol("smoke")
    ds = resolve_dataset(str(tiny_dataset), say=lambda *a, **k: None)
    results = tmp_path_factory.mktemp("trained") / "results"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread: a tiny model gains nothing from two, and two thrash under load
    try:
        out = execute(RunSpec("swinunet", 0, protocol.effective_lr(), "protocol"), protocol, ds,
                      RunSettings(results=results), torch.device("cpu"), say=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    assert out.status == "complete", out.message
    return out.path
