"""Scoring a trained model on a dataset's test volumes; rows in the long metrics format."""
from __future__ import annotations

import signal
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from bench.data.names import check_case_name
from bench.data.synapse import Dataset, load_volume
from bench.engine.inference import InferenceClock, predict_volume
from bench.engine.metrics import evaluate_case
from bench.engine.progress import Steps
from bench.engine.stopping import raise_if_stopped
from bench.engine.train import stopped_by
from bench.errors import BenchError
from bench.files import atomic_write
from bench.protocol import Evaluation
from models import at_input_size

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
    """Long rows (case-less) for one volume: label, organ, metric, value, status, and the row set they belong
    to: convention and nsd_tolerance_mm (``bench.engine.results.row_set``)."""
    wide = evaluate_case(pred, ref, organs, spacing=spacing, convention=ev.convention,
                         nsd_tolerance_mm=ev.nsd_tolerance_mm)
    long = wide.melt(id_vars=["label", "organ", "status"], value_vars=list(METRICS),
                     var_name="metric", value_name="value")
    long["convention"] = ev.convention
    long["nsd_tolerance_mm"] = float(ev.nsd_tolerance_mm)
    return long


# where a case's prediction comes from: (case, image) -> D x H x W labels
Predictions = Callable[[str, np.ndarray], np.ndarray]


def evaluated_cases(ds: Dataset, ev: Evaluation) -> list[str]:
    """The test cases ``ev`` scores: every one, or the first ``max_cases`` of the list."""
    return list(ds.test_cases[: ev.max_cases] if ev.max_cases else ds.test_cases)


def evaluated_slices(depth: int, ev: Evaluation) -> slice:
    """The slices of a volume of ``depth`` that ``ev`` scores: every one, or the central ``max_slices``."""
    if not ev.max_slices or ev.max_slices >= depth:
        return slice(0, depth)
    start = (depth - ev.max_slices) // 2
    return slice(start, start + ev.max_slices)


def score_cases(ds: Dataset, ev: Evaluation, predict: Predictions, save_to: Path | None = None,
                progress: Progress | None = None, label: str = "evaluate", say: Callable[..., object] | None = None,
                stop: Callable[[], int | None] | None = None) -> pd.DataFrame:
    """Long rows, with a case column, for the test cases of ``ds``; the one place cases are scored.

    ``predict(case, image)`` gives each case's prediction: a model's (``evaluate_model``), a saved
    one (``rescore``) or one given as an array (external runs). The cases, and the slices of each,
    are the evaluation's subset (``evaluated_cases``, ``evaluated_slices``; all by default).
    ``save_to`` keeps the predictions in that run folder. Scoring a case (CPU-bound numpy/scipy)
    overlaps with predicting the next. Progress goes to ``progress`` (lines through ``say`` without a
    terminal); ``stop()`` is checked between cases: a signal number there ends the evaluation with
    ``Interrupted`` once the cases started are scored.
    """
    cases = evaluated_cases(ds, ev)

    def score(case: str, pred: np.ndarray, ref: np.ndarray, spacing) -> pd.DataFrame:
        if save_to is not None:
            save_prediction(save_to, case, pred)
        rows = score_case(pred, ref, spacing, ds.organs, ev)
        rows.insert(0, "case", case)
        steps.advance(case)
        return rows

    with Steps(progress, label, len(cases), "case", say) as steps, ThreadPoolExecutor(max_workers=1) as pool:
        futures, signum = [], None
        for case in cases:
            raise_if_stopped()
            signum = stop() if stop is not None else None
            if signum:
                break
            image, ref, spacing = load_volume(ds, case)
            z = evaluated_slices(len(ref), ev)
            pred = predict(case, image[z])
            if len(pred) == len(ref) != z.stop - z.start:  # a whole volume's prediction (another tool's): its slab
                pred = pred[z]
            futures.append(pool.submit(score, case, pred, ref[z], spacing))
        frames = [f.result() for f in futures]
    raise_if_stopped()
    signum = signum or (stop() if stop is not None else None)  # a signal during the last case stops here
    if signum:
        raise stopped_by(signum, f"stopped by {signal.Signals(signum).name} during evaluation, after "
                         f"{len(frames)} of {len(cases)} test cases")
    return pd.concat(frames, ignore_index=True)


def sized_for_inference(model: torch.nn.Module, input_size: int, ev: Evaluation) -> tuple[torch.nn.Module, int]:
    """The model trained at ``input_size`` and the slice size it infers at: ``ev.inference_size`` when set
    (the model built again at that size, with its weights), else ``input_size``; one line if it cannot."""
    size = ev.inference_size or input_size
    if size == input_size:
        return model, size
    try:
        return at_input_size(model, size), size
    except ValueError as e:
        raise BenchError(f"evaluation.inference_size {size}: the model trained at {input_size} cannot infer at "
                         f"{size}: {e}") from None


def evaluate_model(
    model: torch.nn.Module,
    ds: Dataset,
    input_size: int,
    ev: Evaluation,
    device: torch.device,
    run_dir: Path | None = None,
    progress: Progress | None = None,
    label: str = "evaluate",
    say: Callable[..., object] | None = None,
    stop: Callable[[], int | None] | None = None,
    clock: InferenceClock | None = None,
) -> pd.DataFrame:
    """Predict every test volume (saving predictions under ``run_dir``) and score it (see ``score_cases``),
    with the evaluation's inference options (mirroring, post-processing, inference size); ``clock`` adds up
    the time the predictions took (test-time throughput for the manifest)."""
    model, size = sized_for_inference(model, input_size, ev)

    def predict(case: str, image: np.ndarray) -> np.ndarray:
        return predict_volume(model, image, size, ev.batch_size, ev.resize, device, ds.channels, ev.tta,
                              ev.postprocess, clock)

    return score_cases(ds, ev, predict, run_dir, progress, label, say, stop)


def rescore(run_dir: Path, ds: Dataset, ev: Evaluation, progress: Progress | None = None,
            say: Callable[..., object] | None = None) -> pd.DataFrame:
    """Score saved predictions again (e.g. under another convention) without the model."""
    return score_cases(ds, ev, lambda case, _image: load_prediction(run_dir, case), progress=progress,
                       label="re-score", say=say)
