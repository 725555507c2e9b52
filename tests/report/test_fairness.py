"""The fairness line of a report that holds an external run trained by ``bench nnunet``: it says what trained
it and whether it trained on the cases the trained runs train on (bench.report.tables.trained_elsewhere)."""
from __future__ import annotations

import pandas as pd

from bench.report.load import Loaded
from bench.report.tables import fairness_note, trained_elsewhere

PROVENANCE = {"tool": "nnunetv2", "version": "2.8.1", "base_trainer": "nnUNetTrainer", "plans": "nnUNetPlans",
              "configuration": "2d", "fold": "all", "epochs": 1000, "iterations_per_epoch": 250, "device": "cuda",
              "train_cases": ["a", "b", "c", "d", "e"], "held_out_cases": []}


def _loaded(trained_held_out: list[str] | None, provenance: dict) -> Loaded:
    runs = pd.DataFrame([
        {"path": "r/unet", "arm": "unet", "model": "unet", "seed": 0, "status": "complete", "external": False,
         "pretrained": False, "lr": 0.05, "lr_source": "protocol paper"},
        {"path": "r/nn", "arm": "nnunet-2d (external)", "model": "nnunet-2d", "seed": 0, "status": "complete",
         "external": True, "pretrained": None, "lr": None, "lr_source": None},
        {"path": "r/other", "arm": "tool (external)", "model": "tool", "seed": 0, "status": "complete",
         "external": True, "pretrained": None, "lr": None, "lr_source": None}])
    unet = {"validation_cases": trained_held_out} if trained_held_out is not None else {}
    manifests = {"r/unet": unet, "r/nn": {"provenance": provenance, "source": {"predictions": "/w/predictions"}},
                 "r/other": {"source": {"predictions": "/preds"}}}
    cohort = {"dataset": "d", "fingerprint": "f" * 16, "protocol": "paper", "protocol_hash": "h",
              "convention": "synapse", "precision": "fp32"}
    return Loaded(runs, pd.DataFrame(), manifests, [cohort], False)


def test_nnunet_on_the_same_training_cases_says_so_and_other_tools_keep_their_source():
    note = fairness_note(_loaded(None, PROVENANCE))
    assert ("nnunet-2d (external) trained by nnU-Net v2 (2.8.1) with its own recipe (nnUNetTrainer, nnUNetPlans, "
            "2d, fold all, 1000 epochs x 250 iterations, cuda) on the same 5 training cases as the trained runs, "
            "never on a test case" in note)
    assert "tool (external) from /preds" in note and "/w/predictions" not in note


def test_a_hold_out_that_differs_from_the_trained_runs_is_said():
    fold0 = PROVENANCE | {"fold": 0, "train_cases": ["a", "b", "c", "d"], "held_out_cases": ["e"]}
    assert "the same 4 training cases" in trained_elsewhere(_loaded(["e"], fold0))["nnunet-2d (external)"]
    text = trained_elsewhere(_loaded(None, fold0))["nnunet-2d (external)"]
    assert "4 training cases, not those of the trained runs (nnU-Net held out 1, the trained runs 0)" in text


def test_inference_options_appear_in_the_fairness_line():
    loaded = _loaded(None, PROVENANCE)
    assert "inference:" not in fairness_note(loaded)
    loaded.cohorts[0]["inference"] = "test-time mirroring (4 flips, softmax averaged), post-processing lcc"
    assert ("convention synapse, inference: test-time mirroring (4 flips, softmax averaged), post-processing lcc"
            in fairness_note(loaded))


def test_a_run_records_its_inference_options_for_the_report():
    from bench.protocol import load_protocol
    from bench.report.load import _inference

    p = load_protocol("smoke").derive({"evaluation.postprocess": "lcc+fill", "evaluation.tta": "flip"})
    assert _inference({"protocol": p.model_dump()}) == ("test-time mirroring (4 flips, softmax averaged), "
                                                        "post-processing lcc+fill")
    assert _inference({"protocol": load_protocol("smoke").model_dump()}) == ""
