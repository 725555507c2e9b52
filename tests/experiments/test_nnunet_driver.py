"""nnU-Net v2 for real (bench.experiments.nnunet): a few iterations on the CPU on a tiny 2D dataset,
trained on our split, predicting our test cases; its predictions scored by our evaluation and by
``nnUNetv2_evaluate_folder``, whose Dice must agree case by case and label by label.

Skips without nnunetv2; with SEGBENCH_REQUIRE_NNUNET=1 (CI) a missing nnunetv2 fails instead.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import need_nnunet, nnunet_discs
from PIL import Image

from bench.data.resolve import resolve_dataset
from bench.data.synapse import case_of
from bench.engine.external import evaluate_external
from bench.engine.validation import held_out_view
from bench.errors import BenchError
from bench.experiments import nnunet
from bench.experiments.nnunet import NnunetOptions, Workspace, check_trainer, nnunet_version
from bench.experiments.nnunet_run import evaluate_with_nnunet, export_step, plan_step, read_summary, run_nnunet
from bench.protocol import Evaluation, derive, load_protocol

quiet = dict(say=lambda *a, **k: None)
BUDGET = NnunetOptions(epochs=1, iterations=5, val_iterations=2, final_validation=False)
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    need_nnunet()
    tmp = tmp_path_factory.mktemp("nnunet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGBENCH_CACHE", str(tmp / "cache"))
        mp.setenv("OMP_NUM_THREADS", "1")
        ds = resolve_dataset(str(nnunet_discs(tmp / "Dataset077_Discs")), **quiet)
        # validation during runs: nnU-Net trains fold 0 of our split, without the held-out cases (as bench run
        # then does); under smoke itself it trains fold "all" (tests/e2e/test_nnunet_cli.py)
        protocol = derive(load_protocol("smoke"), {"validation.during_run": True})
        t0 = time.perf_counter()
        result = run_nnunet(ds, protocol, tmp / "work", BUDGET, torch.device("cpu"), **quiet)
        TIMINGS["run_nnunet"] = time.perf_counter() - t0
        TIMINGS.update({f"step {k}": v for k, v in result.provenance["step_seconds"].items()})
        yield dict(ds=ds, protocol=protocol, result=result, work=tmp / "work", tmp=tmp)
    print("\nnnU-Net timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


def test_nnunet_trains_on_our_split_and_predicts_our_test_cases(trained):
    ds, work, result = trained["ds"], trained["work"], trained["result"]
    view = held_out_view(ds, trained["protocol"])
    ours = [{"train": sorted({case_of(s) for s in view.train_slices}), "val": sorted(view.test_cases)}]
    ws = Workspace(work, result.provenance["dataset"])
    assert json.loads((ws.preprocessed / ws.dataset_name / "splits_final.json").read_text()) == ours
    log = (work / "logs" / "train.log").read_text()
    assert "Using splits from existing split file" in log
    assert f"This split has {len(ours[0]['train'])} training and {len(ours[0]['val'])} validation cases" in log
    assert sorted(p.name for p in result.predictions.iterdir()) == [f"{c}.png" for c in sorted(ds.test_cases)]
    prov = result.provenance
    assert prov["version"] == nnunet_version() and prov["configuration"] == "2d" and prov["fold"] == 0
    assert prov["epochs"] == 1 and prov["iterations_per_epoch"] == 5 and prov["val_iterations_per_epoch"] == 2
    assert prov["patch_size"] == [64, 64] and prov["network"]["class"].endswith("PlainConvUNet")
    assert prov["trainer"].startswith("nnUNetTrainer__segbench") and prov["base_trainer"] == "nnUNetTrainer"
    assert prov["train_cases"] == ours[0]["train"] and prov["device"] == "cpu"
    assert prov["held_out_cases"] == prov["val_cases"] == ours[0]["val"]
    assert json.loads((work / nnunet.PROVENANCE).read_text())["wall_seconds"] == prov["wall_seconds"]


def test_a_second_run_resumes_without_redoing_finished_steps(trained):
    work, steps = trained["work"], dict(trained["result"].provenance["step_seconds"])
    t0 = time.perf_counter()
    again = run_nnunet(trained["ds"], trained["protocol"], work, BUDGET, torch.device("cpu"), **quiet)
    TIMINGS["resumed run (all steps done)"] = time.perf_counter() - t0
    assert again.provenance["step_seconds"] == steps
    assert (work / "logs" / "train.log").read_text().count("$ ") == 1  # trained once
    # killed after nnU-Net wrote its final checkpoint, before we noted it: training goes on with --c
    (work / "train.done").unlink()
    t0 = time.perf_counter()
    run_nnunet(trained["ds"], trained["protocol"], work, BUDGET, torch.device("cpu"), **quiet)
    TIMINGS["resumed training (--c)"] = time.perf_counter() - t0
    commands = [line for line in (work / "logs" / "train.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and commands[1].endswith(" --c") and not commands[0].endswith(" --c")


def _ours(pred: Path, ds, results: Path, convention: str) -> pd.DataFrame:
    _, rows = evaluate_external(pred, ds, f"nnunet-{convention}", results, Evaluation(convention=convention), **quiet)
    dice = rows[rows["metric"] == "dice"]
    return dice[["case", "label", "value", "status"]].rename(columns={"value": "ours"})


def _theirs(pred: Path, trained, out: Path) -> pd.DataFrame:
    ws = Workspace(trained["work"], trained["result"].provenance["dataset"])
    t0 = time.perf_counter()
    summary = evaluate_with_nnunet(ws.raw / ws.dataset_name, pred, ws.preprocessed / ws.dataset_name /
                                   "nnUNetPlans.json", out)
    TIMINGS[f"nnUNetv2_evaluate_folder ({pred.name})"] = time.perf_counter() - t0
    return read_summary(summary).rename(columns={"dice": "theirs"})


def _cross(pred: Path, trained, convention: str = "strict") -> pd.DataFrame:
    t0 = time.perf_counter()
    ours = _ours(pred, trained["ds"], trained["tmp"] / f"results-{pred.name}", convention)
    TIMINGS[f"our evaluation ({pred.name}, {convention})"] = time.perf_counter() - t0
    both = ours.merge(_theirs(pred, trained, trained["tmp"] / f"summary-{pred.name}.json"), on=["case", "label"])
    assert len(both) == len(ours) == 2 * len(trained["ds"].test_cases)
    return both


def test_our_dice_equals_nnunets_on_its_predictions(trained):
    both = _cross(trained["result"].predictions, trained)
    nan = both["ours"].isna()
    assert (nan == both["theirs"].isna()).all()  # undefined exactly where nnU-Net says NaN (both masks empty)
    diff = (both["ours"] - both["theirs"]).abs()[~nan]
    TIMINGS["largest |Dice ours - nnU-Net| (trained predictions)"] = float(diff.max())
    assert diff.max() < 1e-12, both


def test_empty_masks_map_to_nnunets_nan_under_strict_and_differ_under_synapse(trained):
    """Hand-made predictions covering the four cases: nnU-Net's Dice is 2TP / (2TP + FP + FN), NaN when
    both masks are empty. Ours under ``strict`` is the same; under ``synapse`` (the official Swin-Unet /
    TransUNet rule) a false positive scores 1 and an organ absent from both 0."""
    ds = trained["ds"]
    pred = trained["tmp"] / "handmade"
    pred.mkdir()
    ref = {c: np.asarray(Image.open(trained["work"] / "nnUNet_raw" / trained["result"].provenance["dataset"] /
                                    "labelsTs" / f"{c}.png")) for c in ds.test_cases}
    both = np.roll(ref["ts_both"] == 1, 3, axis=1).astype(np.uint8)  # disc shifted, bar missed
    disc = ref["ts_disc"].copy()
    disc[50:56, 40:60] = 2  # disc exact, a bar that is not there
    none = np.zeros_like(ref["ts_none"])
    none[30:40, 30:40] = 1  # a disc that is not there; no bar in either
    for case, mask in (("ts_both", both), ("ts_disc", disc), ("ts_none", none)):
        Image.fromarray(mask.astype(np.uint8)).save(pred / f"{case}.png")
    strict = _cross(pred, trained).set_index(["case", "label"])
    statuses = strict["status"].to_dict()
    assert statuses == {("ts_both", 1): "both_present", ("ts_both", 2): "ref_only", ("ts_disc", 1): "both_present",
                        ("ts_disc", 2): "pred_only", ("ts_none", 1): "pred_only", ("ts_none", 2): "both_empty"}
    for key, row in strict.iterrows():
        if math.isnan(row["theirs"]):
            assert key == ("ts_none", 2) and math.isnan(row["ours"])
        else:
            assert abs(row["ours"] - row["theirs"]) < 1e-12, (key, row)
    assert strict.loc[("ts_disc", 1), "theirs"] == 1.0 and 0 < strict.loc[("ts_both", 1), "theirs"] < 1
    synapse = _ours(pred, ds, trained["tmp"] / "results-synapse", "synapse").set_index(["case", "label"])["ours"]
    for key in statuses:
        if statuses[key] == "pred_only":
            assert synapse[key] == 1.0 and strict.loc[key, "theirs"] == 0.0
        elif statuses[key] == "both_empty":
            assert synapse[key] == 0.0 and math.isnan(strict.loc[key, "theirs"])
        else:
            assert synapse[key] == pytest.approx(strict.loc[key, "theirs"], abs=1e-12)


def test_an_unknown_trainer_and_a_failed_plan_are_one_line(trained, tmp_path):
    ws = Workspace(trained["work"], trained["result"].provenance["dataset"])
    with pytest.raises(BenchError) as e:
        check_trainer("nnUNetTrainerThatDoesNotExist", ws.env(BUDGET))
    assert "\n" not in str(e.value) and "--trainer nnUNetTrainerThatDoesNotExist: not among" in str(e.value)
    other = Workspace(tmp_path / "work", "Dataset002_missing")  # nothing exported: nnU-Net finds no dataset 2
    opts = NnunetOptions(dataset_id=2)
    with pytest.raises(BenchError) as e:
        plan_step(other, opts, other.env(opts), **quiet)
    msg = str(e.value)
    assert "\n" not in msg and "nnUNetv2_plan_and_preprocess failed" in msg and "plan.log" in msg
    assert "dataset" in msg.lower()  # the tail of nnU-Net's log names the cause


def test_an_id_taken_in_the_workspace_is_refused(trained, tmp_path):
    work = tmp_path / "work"
    (work / "nnUNet_raw" / "Dataset001_Other").mkdir(parents=True)
    ws = Workspace(work, "Dataset001_Dataset077-Discs")
    with pytest.raises(BenchError) as e:
        export_step(trained["ds"], trained["protocol"], ws, NnunetOptions(), **quiet)
    assert "\n" not in str(e.value) and "--id 1" in str(e.value) and "Dataset001_Other" in str(e.value)


def test_options_and_a_missing_nnunet_are_one_line(monkeypatch):
    for opts, needle in ((NnunetOptions(plans="myPlans"), "--plans myPlans"),
                         (NnunetOptions(configuration="3d_cascade_fullres"), "--configuration"),
                         (NnunetOptions(epochs=0), "--epochs 0"), (NnunetOptions(trainer="a b"), "--trainer")):
        with pytest.raises(BenchError) as e:
            nnunet.check_options(opts)
        assert needle in str(e.value)
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(BenchError) as e:
        run_nnunet(None, None, Path("unused"), NnunetOptions(), torch.device("cpu"))  # type: ignore[arg-type]
    assert "nnunetv2 is not installed: pip install 'segbench[nnunet]'" in str(e.value)


def test_budget_trainer_file(tmp_path):
    ws = Workspace(tmp_path, "Dataset001_x")
    assert nnunet.budget_trainer(ws, NnunetOptions()) == "nnUNetTrainer"  # no budget: nnU-Net's own trainer
    name = nnunet.budget_trainer(ws, NnunetOptions(trainer="nnUNetTrainerNoMirroring", epochs=3))
    assert name == "nnUNetTrainerNoMirroring__segbench_e3_id_vd"
    text = (ws.trainers / f"segbench_{name}.py").read_text()
    assert "self.num_epochs = 3" in text and "num_iterations_per_epoch" not in text
    assert "recursive_find_trainer_class_by_name('nnUNetTrainerNoMirroring')" in text
    compile(text, "trainer", "exec")
    shutil.rmtree(ws.trainers)


def test_nnunet_trains_on_the_cases_bench_run_trains_on():
    smoke = load_protocol("smoke")
    assert nnunet.training_fold(smoke) == "all"  # bench run trains on every training case: so does nnU-Net
    assert nnunet.training_fold(derive(smoke, {"validation.during_run": True})) == "0"  # both hold out fold 0's val
