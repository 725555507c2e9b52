"""The results store: the files of a run folder, manifests, metrics and per-run locks (``locks.py``).

Which folder a run lives in and whether it can be reused is ``bench.engine.runs``. Every file is
written to a temporary name and renamed; a run counts as complete only when its manifest says so,
and the manifest is written last.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.engine.locks import RunLocked, run_lock  # noqa: F401 (the store's lock, see locks.py)
from bench.errors import BenchError
from bench.files import atomic_write

MANIFEST = "manifest.json"
METRICS = "metrics.parquet"
CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "model.pt"
TRAIN_LOG = "train_log.csv"
EXPORT_DIR = "nifti"  # `bench export` default output, removed with the predictions it came from

METRIC_COLUMNS = ["dataset", "protocol", "model", "seed", "case", "label", "organ", "metric", "value", "convention",
                  "nsd_tolerance_mm"]
# What identifies a set of metric rows in metrics.parquet: a run holds its own set and any that
# `bench evaluate RUN --convention / --nsd-tolerance` added; readers take one set, never several.
ROW_SET = ("convention", "nsd_tolerance_mm")


def read_manifest(run_dir: Path) -> dict | None:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # torn by something other than us; treat the run as incomplete


def recorded_evaluation(manifest: dict) -> dict:
    """The evaluation settings a run records: an external run's own, else its protocol's."""
    return dict(manifest.get("evaluation") or (manifest.get("protocol") or {}).get("evaluation") or {})


def with_row_set(rows: pd.DataFrame, evaluation: dict) -> pd.DataFrame:
    """``rows`` with the NSD tolerance filled in: rows written before it was recorded were all scored at
    the run's own (``evaluation``, as ``recorded_evaluation`` gives it; 2 mm, the default, if absent)."""
    tolerance = float(evaluation.get("nsd_tolerance_mm", 2.0))
    if "nsd_tolerance_mm" not in rows:
        return rows.assign(nsd_tolerance_mm=tolerance)
    return rows.assign(nsd_tolerance_mm=rows["nsd_tolerance_mm"].astype(float).fillna(tolerance))


def row_set(rows: pd.DataFrame, convention: str, nsd_tolerance_mm: float) -> pd.DataFrame:
    """The rows scored under ``convention`` at ``nsd_tolerance_mm`` (rows without a recorded tolerance count as
    scored at it: fill them with ``with_row_set`` first when the run's own tolerance may be another)."""
    keep = rows["convention"] == convention
    if "nsd_tolerance_mm" in rows:
        tolerance = rows["nsd_tolerance_mm"].astype(float)
        keep &= tolerance.isna() | np.isclose(tolerance, float(nsd_tolerance_mm), rtol=1e-9, atol=0)
    return rows[keep]


def load_manifest(run_dir: Path) -> dict:
    """A run folder's manifest for a command that needs one; a BenchError says why there is none:
    no file (not a run folder) or a torn one (named as such, not as missing)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise BenchError(f"{run_dir}: no manifest.json; not a run folder (.../<dataset>/<protocol>/<model>/seed<k> "
                         "or .../<dataset>/external/<name>)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        why = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise BenchError(f"{path}: unreadable ({why}); torn by a kill? `bench run` with the run's options "
                         "finishes a trained run, the same `bench evaluate --pred` an external one") from None
    if not isinstance(m, dict):
        raise BenchError(f"{path}: not a run manifest (a JSON object)")
    return m


def write_metrics(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda p: df.to_parquet(p, index=False))


def read_metrics(run_dirs: list[Path]) -> pd.DataFrame:
    """Long-format metrics of the given runs, concatenated."""
    frames = [pd.read_parquet(Path(d) / METRICS) for d in run_dirs if (Path(d) / METRICS).exists()]
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def metrics_problem(run_dir: Path) -> str | None:
    """Why a run's metrics.parquet cannot be read (missing, truncated, torn), or None when it can."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return "is missing"
    try:
        pd.read_parquet(path)
    except Exception as e:  # pyarrow raises its own types for a torn file
        return f"is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


MIN_FREE_BYTES = 1 << 30


def check_writable(results: Path) -> None:
    """Fail before training, not after it, when results can't be written."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=results, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BenchError(f"results folder is not writable: {results} ({e.strerror})") from None
    free = shutil.disk_usage(results).free
    if free < MIN_FREE_BYTES:
        raise BenchError(f"only {free / 2**20:.0f} MiB free under {results}; runs need at least 1 GiB "
                         "for checkpoints and predictions")
