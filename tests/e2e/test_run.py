"""End to end: `bench run` under the smoke protocol, skip-if-done, determinism, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import bench_cli

MODELS = ("swinunet", "unet")


@pytest.fixture(scope="module")
def smoke_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = bench_cli("run", "--models", ",".join(MODELS), "--protocol", "smoke", "--dataset", str(tiny_dataset),
                    "--results", str(out / "results"), "--reports", str(out / "reports"))
    assert res.returncode == 0, res.stdout + res.stderr
    return out, res


def _run_dir(out: Path, model: str, seed: int = 0) -> Path:
    return out / "results" / "tiny" / "smoke" / model / f"seed{seed}"


def test_run_writes_every_file(smoke_run):
    out, res = smoke_run
    for model in MODELS:
        d = _run_dir(out, model)
        for name in ("manifest.json", "metrics.parquet", "train_log.csv", "model.pt"):
            assert (d / name).is_file(), name
        assert not list(d.glob("checkpoint.pt*"))  # the optimizer state goes once training is over
        assert (d / "predictions" / "case0001.npz").is_file()
        m = json.loads((d / "manifest.json").read_text())
        assert m["status"] == "complete"
        for key in ("protocol", "protocol_hash", "git", "packages", "device", "threads", "seed",
                    "parameters", "wall_seconds", "lr", "lr_source", "convention"):
            assert key in m, key
        assert m["iterations"] == 4 and m["protocol"]["input_size"] == 64
        log = pd.read_csv(d / "train_log.csv")
        assert list(log["iteration"]) == [0, 1, 2, 3] and log["lr"].iloc[0] == pytest.approx(0.01)
        df = pd.read_parquet(d / "metrics.parquet")
        assert {"model", "seed", "case", "label", "organ", "metric", "value", "convention"} <= set(df.columns)
        assert len(df) == 1 * 8 * 5  # cases x organs x metrics (dice, hd95, hd95_max, asd, nsd)
        assert not df.duplicated(["case", "label", "metric"]).any()
        assert df.query("metric == 'dice'")["value"].between(0, 1).all()
    assert (out / "reports" / "tiny" / "smoke" / "summary.md").is_file()
    assert "swinunet" in res.stdout and "DSC" in res.stdout
    assert json.loads((_run_dir(out, "unet") / "manifest.json").read_text())["parameters"] == 24_898_953


def test_completed_runs_are_skipped_and_force_redoes_them(smoke_run, tiny_dataset):
    out, _ = smoke_run
    d = _run_dir(out, "unet")
    before = (d / "metrics.parquet").stat().st_mtime_ns
    res = bench_cli("run", "--models", "unet", "--protocol", "smoke", "--dataset", str(tiny_dataset),
                    "--results", str(out / "results"), "--reports", str(out / "reports"))
    assert res.returncode == 0 and "skipped" in res.stdout
    assert (d / "metrics.parquet").stat().st_mtime_ns == before
    res = bench_cli("run", "--models", "unet", "--protocol", "smoke", "--dataset", str(tiny_dataset),
                    "--results", str(out / "results"), "--reports", str(out / "reports"), "--force")
    assert res.returncode == 0 and "skipped" not in res.stdout
    assert (d / "metrics.parquet").stat().st_mtime_ns != before


def test_other_settings_in_a_completed_folder_are_refused(smoke_run, tiny_dataset):
    out, _ = smoke_run
    res = bench_cli("run", "--models", "unet", "--protocol", "smoke", "--dataset", str(tiny_dataset),
                    "--results", str(out / "results"), "--lr", "0.02")
    assert res.returncode == 2
    assert "different settings" in res.stderr and "--force" in res.stderr


def test_same_seed_gives_identical_metrics(smoke_run, tiny_dataset, tmp_path):
    out, _ = smoke_run
    res = bench_cli("run", "--models", "swinunet", "--protocol", "smoke", "--dataset", str(tiny_dataset),
                    "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports"),
                    "--drop-weights")
    assert res.returncode == 0, res.stderr
    a = pd.read_parquet(_run_dir(out, "swinunet") / "metrics.parquet")
    b = pd.read_parquet(_run_dir(tmp_path, "swinunet") / "metrics.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert not list(_run_dir(tmp_path, "swinunet").glob("*.pt*"))  # --drop-weights


def test_saved_weights_load_into_the_registered_model(smoke_run):
    from models import create_model
    from models.weights import read_state_dict

    out, _ = smoke_run
    state = read_state_dict(_run_dir(out, "swinunet") / "model.pt")
    model = create_model("swinunet", num_classes=9, in_channels=1, img_size=64)
    model.load_state_dict(state)  # strict: every key and shape matches
    assert any(not torch.equal(v, state[k]) for k, v in
               create_model("swinunet", num_classes=9, in_channels=1, img_size=64).state_dict().items())


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--models", "swinunet,nope"], "unknown model 'nope'; valid models: "),
        (["--models", "unet", "--protocol", "nope"], "unknown protocol 'nope'"),
        (["--models", "unet", "--dataset", "/does/not/exist"], "dataset folder not found: /does/not/exist"),
        (["--models", "unet", "--seeds", "a,b"], "--seeds expects comma-separated integers"),
        (["--models", "unet", "--weights", "unet"], "--weights expects MODEL=PATH"),
    ],
)
def test_bad_input_is_one_clear_line(args, needle, tmp_path):
    res = bench_cli("run", *args, "--results", str(tmp_path / "r"))
    assert res.returncode == 2
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_bad_yaml_and_empty_dataset(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("iterations: 3\nbatch_size: [\n")
    res = bench_cli("run", "--models", "unet", "--protocol", str(bad))
    assert res.returncode == 2 and str(bad) in res.stderr and "invalid YAML" in res.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    res = bench_cli("run", "--models", "unet", "--dataset", str(empty), "--results", str(tmp_path / "r"))
    assert res.returncode == 2 and "empty" in res.stderr


def test_models_command_lists_parameter_counts():
    res = bench_cli("models", "unet")
    assert res.returncode == 0 and "24,898,953" in res.stdout


def test_evaluate_rescores_saved_predictions_under_another_convention(smoke_run):
    out, _ = smoke_run
    d = _run_dir(out, "unet")
    before = pd.read_parquet(d / "metrics.parquet")
    res = bench_cli("evaluate", str(d), "--convention", "strict")
    assert res.returncode == 0, res.stderr
    after = pd.read_parquet(d / "metrics.parquet")
    assert set(after["convention"]) == {"synapse", "strict"}
    pd.testing.assert_frame_equal(after[after.convention == "synapse"].reset_index(drop=True),
                                  before.reset_index(drop=True))
    strict = after[after.convention == "strict"]
    assert len(strict) == len(before)
    res = bench_cli("evaluate", str(d / "nope"))
    assert res.returncode == 2 and "not a run folder" in res.stderr


def test_evaluate_scores_a_false_positive_by_the_convention(smoke_run, tiny_dataset, tmp_path):
    """An organ absent from the reference but predicted: Dice 1 under synapse (the official rule), 0 under strict."""
    out, _ = smoke_run
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    with h5py.File(data / "test_vol_h5" / "case0001.npy.h5", "a") as f:
        label = f["label"][:]
        assert (label == 2).any()
        f["label"][:] = np.where(label == 2, 0, label)  # no gallbladder in the reference any more
    run = Path(shutil.copytree(_run_dir(out, "unet"), tmp_path / "results" / "tiny" / "smoke" / "unet" / "seed0"))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["dataset"]["root"] = str(data)  # same case lists, so the same fingerprint
    (run / "manifest.json").write_text(json.dumps(manifest))
    pred = np.zeros(label.shape, np.uint8)
    pred[10:12, 20:30, 20:30] = 2  # ... but predicted
    np.savez_compressed(run / "predictions" / "case0001.npz", pred=pred)
    for convention, dice, hd95 in (("strict", 0.0, None), ("synapse", 1.0, 0.0)):
        res = bench_cli("evaluate", str(run), "--convention", convention)
        assert res.returncode == 0, res.stderr
        rows = pd.read_parquet(run / "metrics.parquet").query(f"convention == '{convention}' and label == 2")
        assert set(rows["status"]) == {"pred_only"}
        value = rows.set_index("metric")["value"]
        assert value["dice"] == dice
        if hd95 is not None:
            assert value["hd95"] == hd95
        else:  # the worst case: the diagonal of the volume's extent, in mm
            assert value["hd95"] > 50
