"""``bench benchmark`` on the real engines: every dataset's array is queued before the command waits
for any, nothing is submitted twice, and Slurm and Ray give the report of a local benchmark.

A one-node Slurm (``.ci/minislurm.py``) and a Ray started by the command, as in ``test_cluster``;
without them these tests skip and say why (CI makes a skip fail).
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers import bench_cli
from test_cluster import FAST, _need, _slurm_reason

MODELS = ("swinunet-nano", FAST)
PROTOCOL = "smoke"


@pytest.fixture(scope="module")
def slurm():
    _need(_slurm_reason(), "SEGBENCH_REQUIRE_SLURM")


@pytest.fixture(scope="module")
def ray():
    _need(None if importlib.util.find_spec("ray") else "Ray is not installed (pip install 'segbench[ray]')",
          "SEGBENCH_REQUIRE_RAY")


@pytest.fixture(scope="module")
def spec(tiny_dataset, tmp_path_factory) -> Path:
    from bench.data.synthetic import cardiac

    heart = cardiac.generate(tmp_path_factory.mktemp("data") / "tinyheart", seed=0, size=64, patients=5)
    path = tmp_path_factory.mktemp("spec") / "pair.yaml"
    path.write_text(f"models: [{', '.join(MODELS)}]\ndatasets: [{tiny_dataset}, {heart}]\nprotocol: {PROTOCOL}\n")
    return path


def _args(spec: Path, out: Path, *more: str) -> list[str]:
    return ["benchmark", str(spec), "--drop-weights", "--results", str(out / "results"), "--reports",
            str(out / "reports"), *more]


@pytest.fixture(scope="module")
def local(spec, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    res = bench_cli(*_args(spec, out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    return out


def _same_as_local(local: Path, out: Path) -> None:
    for dataset in ("tiny", "tinyheart"):
        for model in MODELS:
            run = Path(dataset) / PROTOCOL / model / "seed0" / "metrics.parquet"
            pd.testing.assert_frame_equal(pd.read_parquet(local / "results" / run),
                                          pd.read_parquet(out / "results" / run), check_exact=True)
    ranks = "reports/benchmarks/pair/csv/ranks.csv"
    pd.testing.assert_frame_equal(pd.read_csv(local / ranks), pd.read_csv(out / ranks), check_exact=True)


def test_a_slurm_benchmark_queues_every_dataset_then_waits_for_the_report(slurm, spec, local, tmp_path):
    args = _args(spec, tmp_path, "--executor", "slurm", "--max-parallel", "2")
    jobs: list[str] = []
    try:
        res = bench_cli(*args)
        jobs += re.findall(r"submitted 2 runs as Slurm job (\d+)", res.stdout)
        assert res.returncode == 0, res.stdout + res.stderr
        assert len(jobs) == 2 and "every dataset's runs are queued" in res.stdout
        assert not (tmp_path / "reports").exists()
        res = bench_cli(*args, "--wait")  # nothing is submitted twice
        assert res.returncode == 0, res.stdout + res.stderr
        assert not re.search(r"submitted \d+ run", res.stdout) and "benchmark report written to" in res.stdout
        _same_as_local(local, tmp_path)
    finally:
        if jobs:
            subprocess.run(["scancel", *jobs], capture_output=True)


def test_a_ray_benchmark_gives_the_report_of_a_local_one(ray, spec, local, tmp_path):
    res = bench_cli(*_args(spec, tmp_path, "--executor", "ray"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "benchmark report written to" in res.stdout
    _same_as_local(local, tmp_path)
