"""``bench benchmark SPEC``: the spec, its checks before any training, the runs and the report.

The end-to-end runs use two tiny generated datasets (an abdomen and a cardiac MR at 64 x 64) and
one iteration per run; the shipped spec itself is validated here and run whole under ``smoke`` in
``test_the_shipped_spec_runs_under_smoke`` (marked slow: it generates both built-in datasets).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import bench_cli

from bench.experiments import benchmark as B
from bench.experiments.options import ExecutorOptions, RunOptions
from bench.protocol import load_protocol
from models import check_model_args

KNOB_ROW = "swinunet-nano@skip_connections=1"
MODELS = ["swinunet-nano", "smp-linknet-mobilenet_v2", KNOB_ROW]  # the cheapest models, and an ablation row


@pytest.fixture(scope="module")
def tiny_heart(tmp_path_factory) -> Path:
    """The synthetic cardiac MR at 64 x 64 with five patients (one test patient: two cases)."""
    from bench.data.synthetic import cardiac

    return cardiac.generate(tmp_path_factory.mktemp("data") / "tinyheart", seed=0, size=64, patients=5)


def _spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _two_datasets(tiny_dataset: Path, tiny_heart: Path) -> str:
    return (f"models: [{', '.join(MODELS)}]\n"
            f"datasets:\n  - {tiny_dataset}\n  - {{dataset: {tiny_heart}, set: {{batch_size: 4}}}}\n"
            "protocol: smoke\nbaseline: smp-linknet-mobilenet_v2\n")


# --- the spec ---------------------------------------------------------------------------------

def test_the_shipped_spec_validates_and_shows_its_command():
    path = B.find_spec("builtin")
    assert path == B.BENCHMARK_DIR / "builtin.yaml"
    assert path.read_text().startswith("# bench benchmark builtin --protocol smoke")
    spec = B.load_spec(path)
    assert spec.labels() == ["swinunet", "unet", "smp-unet-resnet34"]
    assert [d.dataset for d in spec.datasets] == ["synthetic", "synthetic-cardiac"] and spec.baseline == "unet"
    for protocol in ("smoke", spec.protocol):  # every model builds at each input size, on both datasets' classes
        size = load_protocol(protocol).input_size
        for model in spec.labels():
            for classes in (9, 4):
                check_model_args(model, num_classes=classes, in_channels=1, img_size=size)


def test_model_entries_are_names_or_ablation_rows():
    assert B.parse_model("unet") == ("unet", {})
    assert B.parse_model("swinunet@upsampling=bilinear,skip_connections=0") == (
        "swinunet", {"upsampling": "bilinear", "skip_connections": 0})
    assert B.parse_model("x@depths=[2,2],y=0.5") == ("x", {"depths": [2, 2], "y": 0.5})
    # the label is the run folder's: knobs sorted, values as read
    assert B.model_label("swinunet@upsampling=bilinear,skip_connections=0") == \
        "swinunet@skip_connections=0,upsampling=bilinear"
    for bad, needle in [("swinunet@", "name@knob=value"), ("swinunet@skip", "expected knob=value"),
                        ("@skip=1", "expected a model name"), ("swinunet@input_size=128", "is a protocol key")]:
        with pytest.raises(ValueError, match=needle):
            B.parse_model(bad)


def test_spec_protocols_per_dataset_and_precedence(tmp_path, tiny_dataset, tiny_heart):
    path = _spec(tmp_path, _two_datasets(tiny_dataset, tiny_heart).replace("batch_size: 4", "batch_size: 4, "
                                                                           "input_size: 96"))
    spec = B.load_spec(path)
    protos = B._protocols(spec, path, RunOptions(sets=("iterations=1",)))
    assert [p.name for p in protos] == ["smoke@iterations=1", "smoke@batch_size=4,input_size=96,iterations=1"]
    # --set wins over the spec's own override (flags override YAML), recorded once in the name
    protos = B._protocols(spec, path, RunOptions(sets=("input_size=128",)))
    assert [(p.name, p.batch_size, p.input_size) for p in protos] == [
        ("smoke@input_size=128", 2, 128), ("smoke@batch_size=4,input_size=128", 4, 128)]
    # --protocol replaces the spec's; an override equal to the protocol's value changes nothing (cpu is at 96)
    protos = B._protocols(spec, path, RunOptions(protocol="cpu", sets=("batch_size=2",)))
    assert [(p.name, p.batch_size, p.input_size) for p in protos] == [
        ("cpu@batch_size=2", 2, 96), ("cpu@batch_size=2", 2, 96)]


# --- bad specs: one line naming the file and the key, exit 2, nothing trained --------------------

GOOD = "models: [swinunet-nano, unet]\ndatasets: [{data}]\nprotocol: smoke\n"
BAD_SPECS = [
    ("models: [swinunet-nano, nope]\ndatasets: [{data}]\n", "key 'models.1': unknown model 'nope'"),
    ("models: [swinunet-nano, unet]\ndatasets: [{data}, {data}/../nowhere]\n",
     "key 'datasets.1': dataset folder not found"),
    ("datasets: [{data}]\n", "key 'models': Field required"),
    ("models: [swinunet-nano, unet]\n", "key 'datasets': Field required"),
    ("models: [swinunet-nano, unet]\ndatasets: [{{dataset: {data}, set: {{input_sise: 96}}}}]\n",
     "datasets.0.set: unknown key 'input_sise'"),
    ("models: [swinunet-nano, unet]\ndatasets: [{{dataset: {data}, set: {{evaluation.batch_size: 0}}}}]\n",
     "datasets.0.set evaluation.batch_size=0: key 'evaluation.batch_size'"),
    ("models: [swinunet-nano, unet]\ndatasets: [{{dataset: {data}, set: {{optimizer.nope: 1}}}}]\n",
     "datasets.0.set: unknown key 'optimizer.nope'"),
    (GOOD + "seed: [0]\n", "unknown key 'seed'"),
    ("models: [swinunet-nano, unet]\ndatasets: [{{dataset: {data}, folds: 1}}]\n", "unknown key 'datasets.0.folds'"),
    ("models: [swinunet-nano, unet]\ndatasets: [{{dataset: {data}, fold: 3}}]\n",
     "key 'datasets.0': {data}: no split file"),
    ("models: [swinunet-nano, unet@nope=1]\ndatasets: [{data}]\n", "key 'models.1': on datasets.0 (tiny): unet@nope=1"),
    ("models: [swinunet-nano, swinunet@input_size=96]\ndatasets: [{data}]\n", "key 'models.1': "),
    ("models: [unet, unet]\ndatasets: [{data}]\n", "key 'models': listed more than once: unet"),
    ("models: [unet]\ndatasets: [{data}]\n", "key 'models': List should have at least 2 items"),
    (GOOD + "baseline: transunet\n", "key 'baseline': 'transunet' is not one of the models"),
    (GOOD.replace("smoke", "nope"), "key 'protocol': unknown protocol 'nope'"),
    ("models: [swinunet-nano, unet]\ndatasets: [{data}, {data}/.]\n", "key 'datasets.1': dataset 'tiny' is already "
     "datasets.0"),
    (GOOD + "seeds: [-1]\n", "key 'seeds.0'"),
]


@pytest.mark.parametrize("text, needle", BAD_SPECS, ids=[n.split(":")[0] + f"-{i}" for i, (_, n) in
                                                         enumerate(BAD_SPECS)])
def test_a_bad_spec_is_one_line_naming_file_and_key(bench, tmp_path, tiny_dataset, text, needle):
    path, needle = _spec(tmp_path, text.format(data=tiny_dataset)), needle.format(data=tiny_dataset)
    results = tmp_path / "results"
    code, _, err = bench("benchmark", path, "--iterations", "1", "--results", results, "--reports", tmp_path / "rep")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err and needle in err, err
    assert not list(results.rglob("manifest.json")) and not (tmp_path / "rep").exists()


def test_bad_flags_and_a_missing_spec(bench, tmp_path, tiny_dataset):
    path = _spec(tmp_path, GOOD.format(data=tiny_dataset))
    code, _, err = bench("benchmark", path, "--set", "input_sise=96", "--results", tmp_path / "r")
    assert code == 2 and "--set: unknown key 'input_sise'" in err, err
    code, _, err = bench("benchmark", "nope", "--results", tmp_path / "r")
    assert code == 2 and "benchmark spec not found: nope" in err and "builtin" in err, err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").rglob("manifest.json"))


# --- where the runs go: every dataset's jobs through execute_jobs --------------------------------

def test_slurm_without_wait_submits_every_dataset_then_returns(monkeypatch, tmp_path, tiny_dataset, tiny_heart):
    """Each dataset's array is submitted before any is waited for; without --wait the command returns 0
    with no report; with --wait each dataset is run again (waiting on its queued runs), then the report."""
    from bench.experiments.executors.common import Submitted

    calls: list[tuple[str, bool]] = []

    def fake(jobs, ds, device, opts):
        calls.append((ds.name, opts.executor.wait))
        raise Submitted()

    monkeypatch.setattr(B, "execute_jobs", fake)
    monkeypatch.setattr(B, "run_device", lambda opts: None)
    path = _spec(tmp_path, _two_datasets(tiny_dataset, tiny_heart))
    opts = RunOptions(protocol="smoke", sets=("iterations=1",), reports=tmp_path / "rep",
                      executor=ExecutorOptions(name="slurm"))
    assert B.benchmark(path, opts) == 0
    assert calls == [("tiny", False), ("tinyheart", False)] and not (tmp_path / "rep").exists()

    calls.clear()
    seen: list[tuple[str, bool]] = []

    def queued_then_waited(jobs, ds, device, opts):
        seen.append((ds.name, opts.executor.wait))
        if not opts.executor.wait:
            raise Submitted()
        return []  # outcomes of runs that all failed: the report says so, exit 1

    monkeypatch.setattr(B, "execute_jobs", queued_then_waited)
    wait = RunOptions(protocol="smoke", sets=("iterations=1",), reports=tmp_path / "rep",
                      executor=ExecutorOptions(name="slurm", wait=True))
    assert B.benchmark(path, wait) == 1
    assert seen == [("tiny", False), ("tinyheart", False), ("tiny", True), ("tinyheart", True)]


# --- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def benchmarked(tiny_dataset, tiny_heart, tmp_path_factory) -> tuple[Path, Path, Path]:
    """``bench benchmark SPEC --protocol smoke --iterations 1`` on the two tiny datasets: (spec, results, reports)."""
    out = tmp_path_factory.mktemp("bench")
    path = _spec(out, _two_datasets(tiny_dataset, tiny_heart), "two-tiny.yaml")
    res = bench_cli("benchmark", str(path), "--protocol", "smoke", "--iterations", "1", "--drop-weights",
                    "--results", str(out / "results"), "--reports", str(out / "reports"), timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "benchmark report written to" in res.stdout and "mean rank over 2 datasets, dice" in res.stdout
    return path, out / "results", out / "reports"


PROTOCOLS = {"tiny": "smoke@iterations=1", "tinyheart": "smoke@batch_size=4,iterations=1"}


def test_every_model_runs_on_every_dataset_under_its_protocol(benchmarked):
    _, results, reports = benchmarked
    for dataset, protocol in PROTOCOLS.items():
        runs = sorted(p.parent.parent.name for p in (results / dataset / protocol).glob("*/seed0/manifest.json"))
        assert runs == sorted(MODELS)
    out = reports / "benchmarks" / "two-tiny"
    cohorts = pd.read_csv(out / "csv" / "cohorts.csv")
    assert dict(zip(cohorts["dataset"], cohorts["protocol"], strict=True)) == PROTOCOLS
    ranks = pd.read_csv(out / "csv" / "ranks.csv")
    assert set(ranks["model"]) == set(MODELS) and set(ranks["dataset"]) == set(PROTOCOLS)
    assert set(pd.read_csv(out / "csv" / "outcomes.csv")["baseline"]) == {"smp-linknet-mobilenet_v2"}


def test_the_report_scores_are_the_runs_of_that_dataset(benchmarked):
    """A case's DSC in the report = the mean over organs of that dataset's run, read from metrics.parquet."""
    _, results, reports = benchmarked
    scores = pd.read_csv(reports / "benchmarks/two-tiny/csv/case_scores.csv")
    for dataset, protocol in PROTOCOLS.items():
        m = pd.read_parquet(results / dataset / protocol / KNOB_ROW / "seed0" / "metrics.parquet")
        want = m[m["metric"] == "dice"].groupby("case")["value"].mean()
        got = scores[(scores["dataset"] == dataset) & (scores["metric"] == "dice") & (scores["model"] == KNOB_ROW)]
        assert got.set_index("case")["value"].sort_index().to_dict() == pytest.approx(want.sort_index().to_dict())


def test_a_second_command_reuses_every_run(benchmarked):
    path, results, reports = benchmarked
    html = reports / "benchmarks/two-tiny/report.html"
    before = html.stat().st_mtime_ns
    res = bench_cli("benchmark", str(path), "--protocol", "smoke", "--iterations", "1", "--drop-weights",
                    "--results", str(results), "--reports", str(reports))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert res.stdout.count("already complete") == 2 * len(MODELS) and "iteration 1/1" not in res.stdout
    assert html.stat().st_mtime_ns > before


def test_the_command_s_report_renders_in_chromium(benchmarked):
    from helpers import browse, chromium
    from report.test_benchmark import _Dom

    if chromium() is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); CI installs it")
    _, _, reports = benchmarked
    res = browse(reports / "benchmarks/two-tiny/report.html", "--window-size=1400,3000", "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = _Dom()
    dom.feed(res.stdout)
    images = dom.tags["img"]
    assert len(images) == 6 and all(i["src"].startswith("data:image/png;base64,") for i in images)


@pytest.mark.slow
def test_the_shipped_spec_runs_under_smoke(tmp_path, monkeypatch):
    """The quick demo of the docs, as written: both built-in datasets generated into the cache."""
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    res = bench_cli("benchmark", "builtin", "--protocol", "smoke", "--drop-weights", "--results",
                    str(tmp_path / "results"), "--reports", str(tmp_path / "reports"), timeout=3000)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    out = tmp_path / "reports/benchmarks/builtin"
    ranks = pd.read_csv(out / "csv" / "ranks.csv")
    assert set(ranks["model"]) == {"swinunet", "unet", "smp-unet-resnet34"}
    assert set(ranks["dataset"]) == {"synthetic", "synthetic-cardiac"}
    assert (out / "report.html").is_file() and len(list((out / "plots").glob("*.png"))) == 6
