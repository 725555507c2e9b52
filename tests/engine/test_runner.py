"""The runner around evaluation: SIGTERM / SIGINT between test cases stops the run as ``interrupted`` (the
manifest says so, and what was kept), and the same run again evaluates the kept weights without training."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import bench.engine.evaluation as evaluation
from bench.data.resolve import resolve_dataset
from bench.data.synthetic import generate as synth
from bench.engine.results import FINAL_WEIGHTS
from bench.engine.runner import execute
from bench.engine.runs import RunSpec
from bench.engine.settings import RunSettings
from bench.engine.train import Interrupted
from bench.protocol import load_protocol


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_evaluation_leaves_the_run_interrupted_and_says_what_was_kept(sig, tmp_path, monkeypatch,
                                                                                      one_thread):
    root = synth.generate(tmp_path / "two", seed=0, size=32, slice_mm=10.0, train_cases=("0005", "0006"),
                          test_cases=("0001", "0002", "0003"))
    ds = resolve_dataset(str(root), say=lambda *a, **k: None)
    protocol = load_protocol("smoke").derive({"evaluation.max_cases": None})  # all three cases, 8 slices each
    real = evaluation.predict_volume
    predicted: list[int] = []

    def predict_then_signal(*args, **kwargs):
        predicted.append(1)
        if len(predicted) == 1:
            os.kill(os.getpid(), sig)  # arrives while the first case is being predicted
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "predict_volume", predict_then_signal)
    spec, settings = RunSpec("swinunet-nano", 0, 0.01, "protocol"), RunSettings(results=tmp_path / "results")
    said: list[str] = []
    before = signal.getsignal(sig)
    with pytest.raises(Interrupted) as e:
        execute(spec, protocol, ds, settings, torch.device("cpu"), say=said.append)
    assert signal.getsignal(sig) is before  # the handlers of the evaluation are gone
    name = signal.Signals(sig).name
    assert f"stopped by {name} during evaluation, after 1 of 3 test cases" in str(e.value)
    assert f"{FINAL_WEIGHTS} kept" in str(e.value) and len(predicted) == 1  # the other cases never started
    run = tmp_path / "results" / "two" / protocol.name / "swinunet-nano" / "seed0"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and f"{name} during evaluation" in manifest["error"]
    assert any(f"{name} during evaluation" in s and "without training" in s for s in said)
    assert (run / FINAL_WEIGHTS).is_file() and not (run / "metrics.parquet").exists()
    # the same run again: the kept weights are evaluated, nothing is trained again
    monkeypatch.setattr(evaluation, "predict_volume", real)
    said.clear()
    out = execute(spec, protocol, ds, settings, torch.device("cpu"), say=said.append)
    assert out.status == "complete", out.message
    assert any("after training" in s and "evaluating" in s for s in said)
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
