"""Scoring a trained model on a dataset's test volumes; rows in the long metrics format."""
from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from bench.data.names import check_case_name
from bench.data.synapse import Dataset, load_volume
from bench.engine.inference import predict_volume
from bench.engine.metrics import evaluate_case
from bench.errors import BenchError
from bench.files import atomic_write
from bench.protocol import Evaluation

METRICS = ("dice", "hd95", "hd95_max", "asd", "nsd")
PRED_DIR = "predictions"


def save_prediction(run_dir: Path, case: str, pred: np.ndarray) -> None:
    check_case_name(case, str(run_dir / PRED_DIR))  # lists are checked on reading; never write outside

    def write(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez_compressed(f, pred=pred)

    atomic_write(run_dir / PRED_DIR / f"{case}.npz", write)


def load_prediction(run_dir: Path, case: str) -> np.ndarray:
    """A saved prediction; FileNotFoundError if there is none, a BenchError naming a damaged one."""
    path = run_dir / PRED_DIR / f"{case}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["pred"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # truncated, torn, not ours
        raise BenchError(f"{path}: unreadable prediction ({type(e).__name__}: {e})") from None


def score_case(pred: np.ndarray, ref: np.ndarray, spacing, organs: dict[int, str], ev: Evaluation) -> pd.DataFrame:
    """Long rows (case-less) for one volume: label, organ, metric, value, status, convention."""
    wide = evaluate_case(pred, ref, organs, spacing=spacing, convention=ev.convention,
                         nsd_tolerance_mm=ev.nsd_tolerance_mm)
    long = wide.melt(id_vars=["label", "organ", "status"], value_vars=list(METRICS),
                     var_name="metric", value_name="value")
    long["convention"] = ev.convention
    return long


def evaluate_model(
    model: torch.nn.Module,
    ds: Dataset,
    input_size: int,
    ev: Evaluation,
    device: torch.device,
    run_dir: Path | None = None,
    progress: Progress | None = None,
    label: str = "evaluate",
) -> pd.DataFrame:
    """Predict every test volume (saving predictions under ``run_dir``) and score it.

    Scoring a case (CPU-bound numpy/scipy) overlaps with predicting the next one.
    """
    task = progress.add_task(label, total=len(ds.test_cases), loss=float("nan"), lr=float("nan")) if progress else None

    def score(case: str, pred: np.ndarray, ref: np.ndarray, spacing) -> pd.DataFrame:
        if run_dir is not None:
            save_prediction(run_dir, case, pred)
        rows = score_case(pred, ref, spacing, ds.organs, ev)
        rows.insert(0, "case", case)
        if progress is not None:
            progress.update(task, advance=1)
        return rows

    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = []
        for case in ds.test_cases:
            image, ref, spacing = load_volume(ds, case)
            pred = predict_volume(model, image, input_size, ev.batch_size, ev.resize, device, ds.channels)
            futures.append(pool.submit(score, case, pred, ref, spacing))
        frames = [f.result() for f in futures]
    if progress is not None:
        progress.remove_task(task)
    return pd.concat(frames, ignore_index=True)


def rescore(run_dir: Path, ds: Dataset, ev: Evaluation) -> pd.DataFrame:
    """Score saved predictions again (e.g. under another convention) without the model."""
    frames = []
    for case in ds.test_cases:
        _, ref, spacing = load_volume(ds, case)
        rows = score_case(load_prediction(run_dir, case), ref, spacing, ds.organs, ev)
        rows.insert(0, "case", case)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)
