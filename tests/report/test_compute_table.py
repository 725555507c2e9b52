"""Test-time figures: measured during each run's evaluation, stored in its manifest, shown in the report's
compute table (Markdown and CSV) for every model, and '-' for runs made before they were recorded.

One module-scoped smoke sweep of two tiny models (one seed, 2 test cases of 8 slices each).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import bench_cli

from bench.data.synthetic import generate as synth
from bench.report.load import EVAL_FIGURES

MODELS = ("swinunet-nano", "transunet-tiny")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compute")
    data = synth.generate(root / "data" / "tiny2", seed=0, size=64, slice_mm=10.0, train_cases=("0005", "0006"),
                          test_cases=("0001", "0002"))
    res = bench_cli("run", "--models", ",".join(MODELS), "--protocol", "smoke", "--dataset", str(data),
                    "--results", str(root / "results"), "--reports", str(root / "reports"), "--drop-weights")
    assert res.returncode == 0, res.stdout + res.stderr
    return root


def _manifests(results: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text()) for p in results.glob("*/*/*/seed*/manifest.json")}


def _compute_rows(report: Path) -> dict[str, dict[str, str]]:
    """model -> column -> cell of the Markdown compute table."""
    lines = (report / "report.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("### Compute"))
    table = [line for line in lines[start + 1:] if line.startswith("|")][:2 + len(MODELS)]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    return {row[0]: dict(zip(cells[0], row, strict=True)) for row in cells[2:]}


def test_a_run_records_its_test_time_figures(sweep):
    manifests = _manifests(sweep / "results")
    assert set(manifests) == set(MODELS)
    for name, m in manifests.items():
        assert m["status"] == "complete", name
        rate, ms, host = m["eval_slices_per_second"], m["eval_ms_per_slice"], m["eval_peak_host_memory_mb"]
        for v in (rate, ms, host):
            assert isinstance(v, float) and math.isfinite(v) and v > 0, (name, m)
        assert m["eval_batch_size"] == 8 and m["eval_slices"] == 2 * 8  # smoke: 2 cases x 8 central slices
        # forward passes alone are faster than the whole native-slice-to-labels path per slice
        assert 1000 / rate <= ms
        # the evaluation is part of the run: its peak is within the run's (its samples count for the run too)
        assert host <= m["peak_host_memory_mb"]
        assert "eval_peak_cuda_memory_mb" not in m  # on a CPU there is no CUDA figure
        assert "forward only" in m["eval_timed"] and "64 x 64" in m["eval_timed"]


def test_the_compute_table_shows_them_for_every_model_and_dash_for_older_runs(sweep, tmp_path):
    report = sweep / "reports" / "tiny2" / "smoke"
    rows, manifests = _compute_rows(report), _manifests(sweep / "results")
    csv = pd.read_csv(report / "csv" / "compute.csv").set_index("model")
    for name in MODELS:
        m = manifests[name]
        assert float(rows[name]["eval slices/s"]) == pytest.approx(m["eval_slices_per_second"], abs=0.05)
        assert float(rows[name]["eval ms/slice"]) == pytest.approx(m["eval_ms_per_slice"], abs=0.005)
        assert float(rows[name]["eval peak host memory (MB)"]) == pytest.approx(m["eval_peak_host_memory_mb"], abs=1)
        assert rows[name]["eval peak CUDA memory (MB)"] == "-"
        assert csv.loc[name, "eval_slices_per_second"] == pytest.approx(m["eval_slices_per_second"])
        assert csv.loc[name, "eval_batch_size"] == 8

    # a run made before these figures were recorded: the same folder, its manifest without them
    old = tmp_path / "results"
    shutil.copytree(sweep / "results", old)
    for path in old.glob(f"*/*/{MODELS[0]}/seed*/manifest.json"):
        m = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in m.items() if k not in EVAL_FIGURES}))
    res = bench_cli("report", "--results", str(old), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _compute_rows(tmp_path / "out")
    for column in ("eval slices/s", "eval ms/slice", "eval peak host memory (MB)"):
        assert rows[MODELS[0]][column] == "-", column
        assert rows[MODELS[1]][column] != "-", column
    assert rows[MODELS[0]]["train images/s"] != "-"  # the rest of the old run's row is still there
