"""Bad input is refused before any training: one line naming the file or option, exit status 2,
nothing half-written. Run in process through ``bench.cli.main`` (the entry point's code path;
every case fails in its checks, so no training starts): the ``bench`` fixture of conftest.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import read_only
from resume_runs import run_dir

from bench.protocol import load_protocol


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _protocol(tmp_path: Path, **changes) -> Path:
    """The smoke protocol with ``changes`` (dotted keys for sections), as a file."""
    data = load_protocol("smoke").model_dump(exclude={"name"}, mode="json")
    for key, value in changes.items():
        section, _, field = key.rpartition(".")
        (data[section] if section else data)[field] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BAD_VALUES = [
    ({"iterations": 0}, "key 'iterations': Input should be greater than or equal to 1"),
    ({"iterations": -3}, "key 'iterations': Input should be greater than or equal to 1"),
    ({"augmentation.rot_flip_p": 7.5}, "key 'augmentation.rot_flip_p': Input should be less than or equal to 1"),
    ({"augmentation.rotate_p": -0.1}, "key 'augmentation.rotate_p': Input should be greater than or equal to 0"),
    ({"loss.ce": 0, "loss.dice": 0}, "loss.ce and loss.dice are both 0"),
    ({"loss.dice": -1}, "key 'loss.dice': Input should be greater than or equal to 0"),
    ({"evaluation.batch_size": 0}, "key 'evaluation.batch_size': Input should be greater than or equal to 1"),
    ({"evaluation.nsd_tolerance_mm": 0}, "key 'evaluation.nsd_tolerance_mm': Input should be greater than 0"),
    ({"base_lr": -0.01}, "key 'base_lr': Input should be greater than 0"),
    ({"base_lr": float("nan")}, "key 'base_lr'"),
    ({"seeds": [-1]}, "key 'seeds.0': Input should be greater than or equal to 0"),
    ({"name": "../../elsewhere"}, "must be a plain folder name"),
]


@pytest.mark.parametrize("changes, needle", BAD_VALUES, ids=[str(c) for c, _ in BAD_VALUES])
def test_protocol_values_that_could_only_fail_later_are_refused_at_load(bench, tmp_path, changes, needle):
    path = _protocol(tmp_path, **changes)
    code, _, err = bench("run", "--models", "unet", "--protocol", path, "--results", tmp_path / "r")
    _one_line(code, err, str(path), needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, needle", [
    (["--iterations", "-3"], "--set iterations=-3: key 'iterations': Input should be greater than or equal to 1"),
    (["--checkpoint-every", "0"], "--set checkpoint_every=0"),
    (["--seeds", "0,-1"], "--seeds: seeds are integers >= 0, got '0,-1'"),
    (["--device", "cuda"], "--device cuda: CUDA is not available"),
    (["--device", "gpu"], "--device gpu: not a device; use auto, cpu, cuda, cuda:N or mps"),
    (["--weights", "unet=W"], "--weights unet=W: unet is not in --models (swinunet); the file would be ignored"),
])
def test_bad_options_are_one_line_before_anything_runs(bench, tmp_path, tiny_dataset, args, needle):
    if "cuda" in args and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = bench("run", "--models", "swinunet", "--protocol", "smoke", "--dataset", tiny_dataset,
                         "--results", tmp_path / "r", *[a.replace("W", str(tmp_path / "w.pt")) for a in args])
    _one_line(code, err, needle.replace("W", str(tmp_path / "w.pt")))
    assert not list((tmp_path / "r").rglob("manifest.json"))


def test_an_unreadable_weights_file_is_named(bench, tmp_path, tiny_dataset):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not a torch file")
    code, _, err = bench("run", "--models", "unet", "--protocol", "smoke", "--dataset", tiny_dataset,
                         "--weights", f"unet={weights}", "--results", tmp_path / "r")
    _one_line(code, err, "--weights unet: cannot read", str(weights))


def test_an_input_size_the_model_cannot_take_is_refused_before_training(bench, tmp_path, tiny_dataset):
    path = _protocol(tmp_path, input_size=72)
    code, _, err = bench("run", "--models", "unet,swinunet", "--protocol", path, "--dataset", tiny_dataset,
                         "--results", tmp_path / "r")
    _one_line(code, err, "unet cannot run under protocol p (input_size 72): unet needs img_size divisible by 16")
    path = _protocol(tmp_path, input_size=80)  # fine for the U-Net, not for Swin-Unet's patches and windows
    code, _, err = bench("run", "--models", "unet,swinunet", "--protocol", path, "--dataset", tiny_dataset,
                         "--results", tmp_path / "r")
    _one_line(code, err, "swinunet cannot run under protocol p (input_size 80): img_size (80, 80) must be a "
                         "positive multiple of 32")
    assert not list((tmp_path / "r").rglob("manifest.json"))


def test_a_protocol_file_that_is_not_utf8_is_named(bench, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: r\xe9sum\xe9\niterations: 2\n".encode("latin-1"))
    code, _, err = bench("run", "--models", "unet", "--protocol", path)
    _one_line(code, err, f"{path}: not UTF-8 text")


def test_a_storage_folder_that_cannot_be_created_is_one_line(bench, tmp_path, tiny_dataset):
    code, _, err = bench("tune", "--model", "unet", "--protocol", "smoke", "--dataset", tiny_dataset, "--trials", "1",
                         "--storage", "journal:/dev/null/segbench/tune.log", "--results", tmp_path / "r")
    _one_line(code, err, "--storage journal:/dev/null/segbench/tune.log: cannot write the journal file")


@pytest.fixture()
def finished_run(resume_reference, tmp_path) -> Path:
    """A private copy of a complete run (the fault tests' reference run of the U-Net)."""
    results = tmp_path / "results"
    shutil.copytree(resume_reference / "tiny", results / "tiny")
    return run_dir(results, "unet")


def test_evaluate_on_a_read_only_run_folder_is_one_line(bench, finished_run):
    with read_only(finished_run):
        code, _, err = bench("evaluate", finished_run, "--convention", "strict")
    _one_line(code, err, f"{finished_run}: cannot write the re-scored metrics there")


def test_evaluate_with_a_corrupt_prediction_is_one_line(bench, finished_run):
    pred = finished_run / "predictions" / "case0001.npz"
    pred.write_bytes(pred.read_bytes()[:100])
    code, _, err = bench("evaluate", finished_run, "--convention", "strict")
    _one_line(code, err, f"{pred}: unreadable prediction")


def test_evaluate_with_truncated_metrics_is_one_line(bench, finished_run):
    metrics = finished_run / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:200])
    code, _, err = bench("evaluate", finished_run, "--convention", "strict")
    _one_line(code, err, f"{metrics} is unreadable", "`bench run` with the same options evaluates the run again")


def test_a_report_that_cannot_be_written_fails_the_command(bench, resume_protocol, tiny_dataset, tmp_path):
    reports = tmp_path / "reports"
    (reports / "tiny" / "resume").mkdir(parents=True)
    (reports / "tiny" / "resume" / "plots").write_text("a file where the report's plots folder goes")
    code, out, err = bench("run", "--models", "swinunet-nano", "--protocol", resume_protocol, "--dataset",
                           tiny_dataset, "--results", tmp_path / "results", "--reports", reports)
    assert code == 1, out + err
    assert "swinunet-nano seed 0: complete" in out and "Traceback" not in out + err
    assert "report not written" in out and "retry with `bench report" in out


def test_an_os_error_on_a_path_the_user_gave_is_one_line(bench):
    code, _, err = bench("data", "synth", "--out", "/dev/null/synthetic")
    _one_line(code, err, "error: /dev/null")


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_an_nsd_tolerance_that_is_no_positive_distance_is_one_line(bench, finished_run, tiny_dataset, tmp_path,
                                                                    value):
    """Item 6 and 13 of issue 25: a re-score and an external run refuse it before scoring; nothing changes."""
    metrics = (finished_run / "metrics.parquet").read_bytes()
    code, _, err = bench("evaluate", finished_run, "--nsd-tolerance", value)
    _one_line(code, err, "--nsd-tolerance")
    assert (finished_run / "metrics.parquet").read_bytes() == metrics
    code, _, err = bench("evaluate", "--pred", finished_run / "predictions", "--ref", tiny_dataset, "--name", "tool",
                         "--nsd-tolerance", value, "--results", tmp_path / "r")
    _one_line(code, err, "--nsd-tolerance")
    assert not (tmp_path / "r").exists()
