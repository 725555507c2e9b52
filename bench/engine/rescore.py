"""``bench evaluate``: score a finished run's saved predictions again, without its model."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from pydantic import ValidationError
from rich.progress import Progress

from bench.data.synapse import open_synapse
from bench.engine.evaluation import evaluated_cases, rescore
from bench.engine.header import describe_dataset, header, recorded_lr
from bench.engine.results import (
    MANIFEST,
    METRICS,
    load_manifest,
    metrics_problem,
    recorded_evaluation,
    row_set,
    with_row_set,
    write_metrics,
)
from bench.engine.runs import add_identity, recorded_id
from bench.engine.stopping import Stopped
from bench.errors import BenchError
from bench.protocol import Evaluation, _first_error

OPTIONS = {"convention": "--convention", "nsd_tolerance_mm": "--nsd-tolerance"}  # the flags of `bench evaluate`


def _evaluation(run_dir: Path, manifest: dict, given: dict) -> Evaluation:
    """The run's evaluation settings with the options given; ``Evaluation`` alone decides what is valid."""
    # an external run records its evaluation settings itself (no protocol applies to it)
    recorded = recorded_evaluation(manifest)
    given = {k: v for k, v in given.items() if v is not None}
    try:
        return Evaluation.model_validate(recorded | given)
    except ValidationError as e:
        key = str(e.errors()[0]["loc"][0]) if e.errors()[0]["loc"] else ""
        where = OPTIONS[key] if key in given else str(run_dir / MANIFEST)
        raise BenchError(f"{where}: {_first_error(e)}") from None


def rescore_run(run_dir: Path, convention: str | None = None, nsd_tolerance_mm: float | None = None,
                progress: Progress | None = None, say: Callable[..., object] | None = None) -> pd.DataFrame:
    """Rows of ``run_dir`` under ``convention`` at ``nsd_tolerance_mm`` (default: the run's own); they replace the
    rows of that convention and tolerance in metrics.parquet, and rows of other ones are kept.

    ``say`` gets the header line before the cases are scored (with a bar on ``progress``)."""
    run_dir = Path(run_dir)
    m = load_manifest(run_dir)
    if m.get("status") != "complete":
        raise BenchError(f"{run_dir}: run is {m.get('status')}, not complete; run `bench run` again first")
    ev = _evaluation(run_dir, m, {"convention": convention, "nsd_tolerance_mm": nsd_tolerance_mm})
    info = m["dataset"]
    organs = {int(k): v for k, v in info["organs"].items()}
    ds = open_synapse(Path(info["root"]), info["name"], organs)
    if ds.fingerprint() != info["fingerprint"]:
        raise BenchError(f"{ds.root}: its case lists changed since the run; cannot re-score")
    missing = [c for c in evaluated_cases(ds, ev) if not (run_dir / "predictions" / f"{c}.npz").exists()]
    if missing:
        raise BenchError(f"{run_dir}: no saved prediction for {', '.join(missing)}")
    problem = metrics_problem(run_dir)
    if problem is not None:
        raise BenchError(f"{run_dir / METRICS} {problem}; `bench run` with the same options evaluates the run again")
    if say is not None:
        named = None if m.get("kind") == "external" else \
            (str(m.get("protocol_name") or m["run"]["protocol"]), str(m.get("protocol_hash")))
        say(header(named, describe_dataset(ds, ev), "none (saved predictions)", recorded_lr(m),
                   f"convention {ev.convention}"))
    try:
        scored = rescore(run_dir, ds, ev, progress, say)
    except Stopped as e:
        e.note = f"re-scoring was not finished; {run_dir / METRICS} is unchanged"
        raise
    rows = add_identity(scored, recorded_id(m), m.get("protocol_hash") or "")
    old = with_row_set(pd.read_parquet(run_dir / METRICS), recorded_evaluation(m))
    replaced = row_set(old, ev.convention, ev.nsd_tolerance_mm).index  # the same set scored again
    merged = pd.concat([old.drop(index=replaced), rows], ignore_index=True)
    try:
        write_metrics(run_dir / METRICS, merged)
    except OSError as e:
        raise BenchError(f"{run_dir}: cannot write the re-scored metrics there ({e.strerror}); "
                         "the run folder must be writable") from None
    return rows
