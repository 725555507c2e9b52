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
    weights = _run_dir(out, "unet") / "model.pt"  # starting from weights is another run in the same folder
    res = bench_cli("run", "--models", "unet", "--protocol", "smoke", "--dataset", str(tiny_dataset),
                    "--results", str(out / "results"), "--weights", f"unet={weights}")
    assert res.returncode == 2
    assert "different settings" in res.stderr and "--force" in res.stderr


def test_a_budget_override_and_the_default_run_sit_side_by_side(smoke_run, tiny_dataset):
    """--iterations 3 beside the default run: its own folder, report title, fairness line and description."""
    out, _ = smoke_run
    stamp = (_run_dir(out, "unet") / "metrics.parquet").stat().st_mtime_ns
    res = bench_cli("run", "--models", "unet", "--protocol", "smoke", "--iterations", "3", "--dataset",
                    str(tiny_dataset), "--results", str(out / "results"), "--reports", str(out / "reports"),
                    "--drop-weights")
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((out / "results" / "tiny" / "smoke@iterations=3" / "unet" / "seed0" / "manifest.json").read_text())
    assert m["iterations"] == 3 and m["protocol_name"] == "smoke@iterations=3"
    assert m["protocol"]["description"].endswith("[then changed: iterations=3]")  # not the file's text alone
    assert (_run_dir(out, "unet") / "metrics.parquet").stat().st_mtime_ns == stamp  # the default run stays
    for name in ("smoke", "smoke@iterations=3"):
        report = (out / "reports" / "tiny" / name / "report.md").read_text()
        assert report.startswith(f"# segbench report: tiny / {name}\n")
        assert f"protocol {name} (hash " in report


def _default_study(results: Path, model: str, lr: float, value: float, untrained: float) -> None:
    """A study under the name `bench run --lr tuned` looks for, with one completed trial (no training)."""
    import optuna

    from bench.experiments.tune.studies import default_storage_url, load_or_create_study, open_storage, study_name
    from bench.protocol import load_protocol

    study = load_or_create_study(open_storage(default_storage_url(results)),
                                 study_name("tiny", model, load_protocol("smoke")),
                                 {"model": model, "untrained_dsc": untrained})
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=dist, value=value))


def test_default_and_tuned_lr_runs_sit_side_by_side_in_one_report(smoke_run, tiny_dataset):
    """--lr tuned after a default run is another run (unet@lr=tuned), not a conflict; --lr default,tuned
    reports both, with the LR as the column that differs and the paired test of the difference."""
    out, _ = smoke_run
    _default_study(out / "results", "unet", 0.02, 0.5, untrained=0.1)
    res = bench_cli("run", "--models", "unet", "--protocol", "smoke", "--lr", "default,tuned", "--dataset",
                    str(tiny_dataset), "--results", str(out / "results"), "--reports", str(out / "reports"))
    assert res.returncode == 0, res.stdout + res.stderr
    said = " ".join(res.stdout.split())
    assert "unet seed 0: skipped (already complete)" in said and "Is the LR to blame?" in said
    assert "unet@lr=tuned vs unet: lr 0.02 (tuned, trial 0) vs 0.01 (protocol)" in said
    tuned = json.loads((out / "results" / "tiny" / "smoke" / "unet@lr=tuned" / "seed0" / "manifest.json").read_text())
    assert tuned["lr"] == 0.02 and tuned["protocol_hash"] == json.loads(
        (_run_dir(out, "unet") / "manifest.json").read_text())["protocol_hash"]
    folder = out / "reports" / "tiny" / "smoke"
    report = (folder / "report.md").read_text()
    assert "| unet@lr=tuned |" in report and "| unet |" in report and "Mixed" not in report
    assert "| model | mean | aorta |" in report and "| seeds | cases | lr |" in report  # the LR column
    effect = pd.read_csv(folder / "csv" / "lr_effect.csv")
    cases = pd.read_csv(folder / "csv" / "per_case.csv")
    mean = cases[cases["model"] == "unet@lr=tuned"].groupby("case")["dice"].mean().mean()
    assert list(effect["model"]) == ["unet@lr=tuned"] and list(effect["baseline"]) == ["unet"]
    assert effect["mean"].iloc[0] == pytest.approx(mean)


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
    from bench.engine.evaluation import evaluated_slices
    from bench.protocol import load_protocol

    pred = np.zeros(label.shape, np.uint8)
    z = evaluated_slices(len(label), load_protocol("smoke").evaluation).start  # in the slab smoke scores
    pred[z:z + 2, 20:30, 20:30] = 2  # ... but predicted
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


def test_a_budget_flag_and_its_set_override_are_one_run(tiny_dataset, tmp_path):
    """--iterations 3 is --set iterations=3: one protocol name, one folder, trained once."""
    where = ["--dataset", str(tiny_dataset), "--results", str(tmp_path / "r"), "--reports", str(tmp_path / "rep"),
             "--no-report", "--drop-weights"]
    first = bench_cli("run", "--models", "swinunet-nano", "--protocol", "smoke", "--iterations", "3", *where)
    assert first.returncode == 0, first.stdout + first.stderr
    run = tmp_path / "r" / "tiny" / "smoke@iterations=3" / "swinunet-nano" / "seed0"
    assert json.loads((run / "manifest.json").read_text())["iterations"] == 3
    stamp = (run / "metrics.parquet").stat().st_mtime_ns
    second = bench_cli("run", "--models", "swinunet-nano", "--protocol", "smoke", "--set", "iterations=3", *where)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "swinunet-nano seed 0: skipped (already complete)" in second.stdout
    assert "iteration" not in second.stdout.replace("iterations=3", "")
    assert (run / "metrics.parquet").stat().st_mtime_ns == stamp
    assert [p.parent.name for p in (tmp_path / "r" / "tiny").glob("*/swinunet-nano")] == ["smoke@iterations=3"]
