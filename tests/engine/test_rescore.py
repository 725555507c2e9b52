"""`bench evaluate RUN`: saved predictions scored again; each convention and NSD tolerance is its own row set."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.engine.rescore import rescore_run
from bench.report.load import load_runs

KEY = ["case", "label", "metric"]


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def _own(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values(KEY).reset_index(drop=True)[[*KEY, "value"]]


def test_another_tolerance_is_added_beside_the_runs_rows_and_recorded(trained_run, tmp_path, bench):
    run = Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))
    before = pd.read_parquet(run / "metrics.parquet")
    manifest = (run / "manifest.json").read_text()
    assert json.loads(manifest)["protocol"]["evaluation"]["nsd_tolerance_mm"] == 2.0
    rows = rescore_run(run, None, 1.0)
    assert set(rows["nsd_tolerance_mm"]) == {1.0} and set(rows["convention"]) == {"synapse"}
    stored = pd.read_parquet(run / "metrics.parquet")
    assert stored.groupby("nsd_tolerance_mm").size().to_dict() == {1.0: len(before), 2.0: len(before)}
    pd.testing.assert_frame_equal(_own(stored[stored["nsd_tolerance_mm"] == 2.0]), _own(before))  # kept as it was
    nsd = {t: _own(g[g["metric"] == "nsd"]).set_index(KEY)["value"] for t, g in stored.groupby("nsd_tolerance_mm")}
    assert (nsd[1.0].fillna(0) <= nsd[2.0].fillna(0) + 1e-12).all()  # a tighter tolerance never scores higher
    assert (run / "manifest.json").read_text() == manifest  # the run's own settings are still 2 mm
    # what reads the run uses its own row set, never both
    loaded = load_runs(tmp_path, [run])
    assert len(loaded.metrics) == len(before)
    code, out, err = bench("evaluate", run, "--nsd-tolerance", "1.5")
    assert code == 0, out + err
    assert "NSD tolerance 1.5 mm" in out
    assert set(pd.read_parquet(run / "metrics.parquet")["nsd_tolerance_mm"]) == {1.0, 1.5, 2.0}
    np.testing.assert_array_equal(sorted(load_runs(tmp_path, [run]).metrics["value"].fillna(-1)),
                                  sorted(before["value"].fillna(-1)))
