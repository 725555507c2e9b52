"""``bench evaluate``: score a finished run's saved predictions again, without its model."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.data.synapse import open_synapse
from bench.engine.evaluation import rescore
from bench.engine.results import METRICS, metrics_problem, read_manifest, write_metrics
from bench.errors import BenchError
from bench.protocol import Evaluation


def rescore_run(run_dir: Path, convention: str | None = None, nsd_tolerance_mm: float | None = None) -> pd.DataFrame:
    """Rows of ``run_dir`` under ``convention``; they replace that convention's rows in metrics.parquet."""
    run_dir = Path(run_dir)
    m = read_manifest(run_dir)
    if m is None:
        raise BenchError(f"{run_dir}: no manifest.json; not a run folder")
    if m.get("status") != "complete":
        raise BenchError(f"{run_dir}: run is {m.get('status')}, not complete; run `bench run` again first")
    # an external run records its evaluation settings itself (no protocol applies to it)
    ev = Evaluation.model_validate(m.get("evaluation") or m["protocol"]["evaluation"])
    ev = ev.model_copy(update={k: v for k, v in (("convention", convention),
                                                   ("nsd_tolerance_mm", nsd_tolerance_mm)) if v is not None})
    if ev.convention not in ("synapse", "strict"):
        raise BenchError(f"--convention must be synapse or strict, got '{ev.convention}'")
    info = m["dataset"]
    organs = {int(k): v for k, v in info["organs"].items()}
    ds = open_synapse(Path(info["root"]), info["name"], organs)
    if ds.fingerprint() != info["fingerprint"]:
        raise BenchError(f"{ds.root}: its case lists changed since the run; cannot re-score")
    missing = [c for c in ds.test_cases if not (run_dir / "predictions" / f"{c}.npz").exists()]
    if missing:
        raise BenchError(f"{run_dir}: no saved prediction for {', '.join(missing)}")
    problem = metrics_problem(run_dir)
    if problem is not None:
        raise BenchError(f"{run_dir / METRICS} {problem}; `bench run` with the same options evaluates the run again")
    rows = rescore(run_dir, ds, ev)
    run = m["run"]
    for col, value in (("dataset", run["dataset"]), ("protocol", run["protocol"]), ("model", run["model"]),
                       ("seed", run["seed"]), ("protocol_hash", m.get("protocol_hash") or "")):
        rows.insert(0, col, value)
    old = pd.read_parquet(run_dir / METRICS)
    merged = pd.concat([old[old["convention"] != ev.convention], rows], ignore_index=True)
    try:
        write_metrics(run_dir / METRICS, merged)
    except OSError as e:
        raise BenchError(f"{run_dir}: cannot write the re-scored metrics there ({e.strerror}); "
                         "the run folder must be writable") from None
    return rows
