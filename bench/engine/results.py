"""The results store: run paths, atomic files, manifests and per-run locks (``locks.py``).

A run lives in ``<results>/<dataset>/<protocol>/<model>/seed<k>/``. Every file is written to
a temporary name and renamed; a run counts as complete only when its manifest says so, and
the manifest is written last.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

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

METRIC_COLUMNS = ["dataset", "protocol", "model", "seed", "case", "label", "organ", "metric", "value", "convention"]


@dataclass(frozen=True)
class RunId:
    dataset: str
    protocol: str
    model: str
    seed: int


def run_path(results: Path, run: RunId) -> Path:
    """The folder of one run; ``parse_run_path`` reads it back."""
    return Path(results) / run.dataset / run.protocol / run.model / f"seed{run.seed}"


def parse_run_path(path: Path) -> RunId:
    path = Path(path)
    if not path.name.startswith("seed") or not path.name[4:].lstrip("-").isdigit():
        raise BenchError(f"{path}: not a run folder (expected .../<dataset>/<protocol>/<model>/seed<k>)")
    return RunId(path.parents[2].name, path.parents[1].name, path.parent.name, int(path.name[4:]))


def find_runs(results: Path) -> list[Path]:
    """Every run folder under ``results`` that has a manifest (complete or not), external runs
    (``<dataset>/external/<name>/``, see bench.engine.external) included."""
    trained = Path(results).glob(f"*/*/*/seed*/{MANIFEST}")
    return sorted(p.parent for p in [*trained, *Path(results).glob(f"*/external/*/{MANIFEST}")])


def read_manifest(run_dir: Path) -> dict | None:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # torn by something other than us; treat the run as incomplete


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
