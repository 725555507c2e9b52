"""The training loop's recipe keys and records: precision, run identity across the new keys, the
log written as training goes, validation during a run (never a test case) and tracking isolation."""
from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.progress import Progress

import bench.data.synapse
import bench.engine.evaluation
import bench.engine.runner
from bench.data.organs import SYNAPSE_ORGANS
from bench.data.synapse import case_of, open_synapse
from bench.engine import numerics
from bench.engine.results import TRAIN_LOG
from bench.engine.runs import RunSpec, config_key, run_config, same_run
from bench.engine.settings import RunSettings
from bench.engine.tracking import Tracking, parse_track
from bench.engine.train import _read_log, poly_lr, train
from bench.engine.validation import VALIDATION_LOG, Validator, held_out_view
from bench.errors import BenchError
from bench.protocol import load_protocol

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ds(tiny_dataset):
    return open_synapse(tiny_dataset, "tiny", SYNAPSE_ORGANS)


class _Tiny(torch.nn.Module):
    def __init__(self, classes: int = 9):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_precision_comes_from_the_protocol_and_the_device_must_support_it():
    cpu = torch.device("cpu")
    numerics.check_precision("fp32", cpu)
    numerics.check_precision("bf16", cpu)
    with pytest.raises(BenchError, match="precision fp16 is not available on cpu"):
        numerics.check_precision("fp16", cpu)
    conv, x = _Tiny(), torch.randn(1, 1, 8, 8)
    with numerics.autocast("bf16", cpu):
        assert conv(x).dtype == torch.bfloat16
    with numerics.autocast("fp32", cpu):
        assert conv(x).dtype == torch.float32
    assert not numerics.grad_scaler("bf16", cpu).is_enabled()
    fp16 = numerics.record(load_protocol("paper").derive(precision="fp16"), torch.device("cuda"))
    assert (fp16["autocast"], fp16["grad_scaler"], fp16["cudnn"]["applied"]) == ("float16", True, True)
    assert fp16["bit_reproducible"] is False  # atomics in CUDA backward passes, whatever cuDNN does
    rec = numerics.record(load_protocol("paper"), cpu)
    assert rec["precision"] == "fp32" and rec["autocast"] is None and rec["bit_reproducible"] is True
    assert rec["cudnn"] == {"benchmark": False, "deterministic": True, "applied": False}
    assert rec["threads_applied"] is True and "1 thread (the protocol's)" in rec["reproducibility"]
    assert fp16["threads_applied"] is False  # on CUDA the CPU threads do not change the numbers


def test_a_cpu_run_uses_the_protocols_threads_and_the_process_gets_its_count_back():
    before = torch.get_num_threads()
    other = 2 if before != 2 else 3
    protocol = load_protocol("smoke").derive(threads=other)
    with numerics.threads(protocol, torch.device("cpu")):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with numerics.threads(protocol, torch.device("cuda")):  # not applied on a GPU
        assert torch.get_num_threads() == before


def test_runs_made_before_the_new_keys_keep_their_identity(ds):
    config = run_config(RunSpec("unet", 0, 0.01, "protocol smoke"), load_protocol("smoke"), ds)
    earlier = copy.deepcopy(config)  # the manifest a run wrote before precision / cudnn / during_run existed
    for key in ("precision", "cudnn"):
        del earlier["protocol"][key]
    del earlier["protocol"]["validation"]["during_run"]
    assert config_key(earlier) == config_key(config)
    manifest = {"key": config_key(config), "protocol": earlier["protocol"], "device": "cpu"}
    assert same_run(manifest, config_key(config))
    # on CUDA such a run trained under fp16 autocast: never taken for today's fp32 run
    assert not same_run(manifest | {"device": "cuda:0"}, config_key(config))
    assert numerics.precision_of(manifest | {"device": "cuda:0"}) == "fp16" == numerics.precision_of(
        {"precision": "fp16"})
    assert numerics.precision_of(manifest) == "fp32"
    assert same_run(manifest | {"device": "cuda:0", "protocol": config["protocol"]}, config_key(config))
    bf16 = run_config(RunSpec("unet", 0, 0.01, "protocol smoke"), load_protocol("smoke").derive(precision="bf16"), ds)
    assert config_key(bf16) != config_key(config)


class _Recorder:
    def __init__(self):
        self.opened, self.logged = [], []

    def open(self, start):
        self.opened.append(start)

    def log(self, metrics, step):
        self.logged.append((step, dict(metrics)))


def test_the_log_grows_as_training_goes_and_the_tracker_sees_every_iteration(ds, tmp_path):
    protocol = load_protocol("smoke").derive(iterations=5, checkpoint_every=100)
    rows_seen = []

    def look(done: int) -> None:
        path = tmp_path / TRAIN_LOG
        rows_seen.append(sum(1 for _ in open(path)) - 1 if path.exists() else None)

    tracker = _Recorder()
    train(_Tiny(), ds, protocol, 0, tmp_path, 0.01, torch.device("cpu"), say=lambda *a: None, on_iteration=look,
          tracker=tracker)
    assert rows_seen == [0, 1, 2, 3, 4]  # at iteration k's callback, the rows of 0..k-2 are on disk
    assert [r["iteration"] for r in _read_log(tmp_path, 99)] == ["0", "1", "2", "3", "4"]
    assert tracker.opened == [0]
    assert [s for s, _ in tracker.logged] == [1, 2, 3, 4, 5]
    assert set(tracker.logged[0][1]) == {"train/loss", "train/ce_loss", "train/dice_loss", "train/lr"}
    assert tracker.logged[0][1]["train/lr"] == pytest.approx(0.01)


def test_a_resumed_log_keeps_the_rows_before_the_checkpoint_and_drops_a_torn_one(tmp_path):
    lines = ["iteration,loss,ce,dice,lr,seconds"] + [f"{i},1.0,1.0,1.0,0.01,{i}.0" for i in range(8)] + ["8,0.9"]
    (tmp_path / TRAIN_LOG).write_text("\n".join(lines) + "\n")
    assert [r["iteration"] for r in _read_log(tmp_path, 5)] == ["0", "1", "2", "3", "4"]
    assert [r["iteration"] for r in _read_log(tmp_path, 99)] == [str(i) for i in range(8)]


def test_validator_redoes_the_scores_after_the_checkpoint_it_resumes_from(ds, tmp_path):
    protocol = load_protocol("smoke")  # validation every 2 iterations
    view = held_out_view(ds, protocol)
    with open(tmp_path / VALIDATION_LOG, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "dice", "hd95", "seconds"])
        w.writerows([[2, 0.1, 9, 1], [4, 0.2, 8, 2], [6, 0.3, 7, 3]])
    Validator(_Tiny(), view, protocol, torch.device("cpu"), tmp_path, say=lambda *a: None)(5)  # resumed at 4
    with open(tmp_path / VALIDATION_LOG) as f:
        assert [r["iteration"] for r in csv.DictReader(f)] == ["2", "4"]


def test_validation_during_a_run_never_reads_a_test_case_while_training(ds, tmp_path, monkeypatch):
    events = []
    real_volume, real_slice, real_train = (bench.engine.evaluation.load_volume, bench.data.synapse.load_slice,
                                           bench.engine.runner.train)
    monkeypatch.setattr(bench.engine.evaluation, "load_volume",
                        lambda d, c: events.append(("volume", d.eval_split, c)) or real_volume(d, c))
    monkeypatch.setattr(bench.data.synapse, "load_slice", lambda d, n: events.append(("slice", n)) or real_slice(d, n))

    def train_then_mark(*args, **kwargs):
        out = real_train(*args, **kwargs)
        events.append(("trained",))
        return out

    monkeypatch.setattr(bench.engine.runner, "train", train_then_mark)
    protocol = load_protocol("smoke").derive(validation={"fraction": 0.5, "interval": 2, "during_run": True})
    console = Console(file=io.StringIO())
    out = bench.engine.runner.execute(RunSpec("swinunet-nano", 0, 0.01, "test"), protocol, ds,
                                      RunSettings(results=tmp_path), torch.device("cpu"),
                                      progress=Progress(console=console), say=console.print)
    assert out.status == "complete", out.message
    cut = events.index(("trained",))
    during, after = events[:cut], events[cut + 1:]
    view = held_out_view(ds, protocol)
    assert [e for e in during if e[0] == "volume"] == [("volume", "val", c) for c in view.test_cases] * 2
    assert not {case_of(e[1]) for e in during if e[0] == "slice"} & (set(ds.test_cases) | set(view.test_cases)) - \
        set(view.test_cases)
    assert {e[2] for e in after if e[0] == "volume"} == set(ds.test_cases)  # the test cases, once trained
    manifest = json.loads((out.path / "manifest.json").read_text())
    assert manifest["validation_cases"] == view.test_cases
    assert manifest["train_slices"] == len(view.train_slices) < len(ds.train_slices)
    with open(out.path / VALIDATION_LOG) as f:
        assert [r["iteration"] for r in csv.DictReader(f)] == ["2", "4"]


def test_trackers_are_checked_up_front_and_a_failing_one_never_stops_the_run(monkeypatch):
    with pytest.raises(BenchError, match="unknown tracker 'wandb'"):
        parse_track(["wandb"])
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(BenchError, match=r"mlflow package is not installed; pip install 'segbench\[track\]'"):
        parse_track(["mlflow"])
    said = []
    tracking = Tracking([], results=Path("."), run_dir=Path("."), experiment="e", name="n", params={},
                        say=said.append)

    class Broken:
        def log(self, metrics, step):
            raise OSError("disk full")

    tracking.active["mlflow"] = Broken()
    tracking.log({"train/loss": 1.0}, 1)
    tracking.log({"train/loss": 0.5}, 2)
    assert not tracking.active and len(said) == 1 and "disk full" in said[0]


def test_poly_lr_schedule():
    assert poly_lr(0.05, 0, 100, 0.9) == 0.05
    assert poly_lr(0.05, 50, 100, 0.9) == pytest.approx(0.05 * 0.5**0.9)
    assert poly_lr(0.05, 99, 100, 0.9) > 0
