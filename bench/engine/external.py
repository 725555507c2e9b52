"""External predictions: another tool's masks scored under this harness's conventions.

``bench evaluate --pred DIR --ref DATASET --name NAME`` reads one prediction per test case of
DATASET (``<case>.nii.gz``, ``.nii``, ``.npz`` or ``.png``), matches each to its reference by its
header as ``bench data import`` does (reoriented, never resampled: a prediction on another grid
is refused with both geometries in the message), translates label ids with ``--label-map``, and
scores it exactly as a trained run's predictions are scored. The result is an *external run* in
the results store, ``<results>/<dataset>/external/<NAME>/``: a manifest that says where the
predictions came from and that no protocol applies, ``metrics.parquet`` in the usual long format
and ``predictions/<case>.npz``, so ``bench report``, ``bench evaluate RUN_DIR --convention`` and
``bench export`` treat it like any run.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from rich.progress import Progress

from bench import env
from bench.data import folders2d
from bench.data.ct_import import canonical, check_same_grid, read_image
from bench.data.labelmaps import LabelMap, label_values
from bench.data.preprocessing import Preprocessing, describe
from bench.data.synapse import Dataset, volume_grid
from bench.engine.evaluation import PRED_DIR, score_cases
from bench.engine.results import (
    EXPORT_DIR,
    MANIFEST,
    METRICS,
    metrics_problem,
    read_manifest,
    recorded_evaluation,
    row_set,
    run_lock,
    with_row_set,
    write_metrics,
)
from bench.engine.runs import EXTERNAL, RunId, add_identity, external_id
from bench.engine.stopping import Stopped, uninterrupted
from bench.errors import BenchError
from bench.files import write_json
from bench.protocol import Evaluation

PRED_EXTS = (".nii.gz", ".nii", ".npz", ".png")


def _case_of(path: Path, image2d: bool, cases: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The case a prediction file is for: its stem, or for a 2D image the stem made file-safe as the
    image folders' case ids are (an nnU-Net dataset's 2D case names are kept as they are)."""
    low = path.name.lower()
    for ext in PRED_EXTS:
        if low.endswith(ext) and len(low) > len(ext):
            stem = path.name[: -len(ext)]
            return folders2d.case_id(stem) if image2d and stem not in cases else stem
    return None


def match_predictions(pred_dir: Path, cases: list[str], image2d: bool) -> tuple[dict[str, Path], list[str], list[Path]]:
    """(case -> prediction file, cases without one, files that are no test case)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise BenchError(f"--pred {pred_dir}: folder not found")
    found: dict[str, Path] = {}
    extra = []
    known = set(cases)
    for f in sorted(pred_dir.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        case = _case_of(f, image2d, known)
        if case is None or case not in cases:
            extra.append(f)
        elif case in found:
            raise BenchError(f"{f}: a second prediction for {case} (also {found[case].name})")
        else:
            found[case] = f
    return found, [c for c in cases if c not in found], extra


def _reference_image(grid: dict, like: sitk.Image) -> sitk.Image:
    """An empty image on the test volume's recorded grid; what it does not record is taken from ``like``,
    so a prediction is checked on what the reference records and nothing else (the synthetic and the
    official Synapse volumes record no direction: their voxel order is all there is)."""
    d, h, w = grid["shape"]
    ref = sitk.Image([w, h, d], sitk.sitkUInt8)
    ref.SetSpacing(tuple(reversed(grid["spacing"])) if "spacing" in grid else like.GetSpacing())
    ref.SetOrigin(grid.get("origin", like.GetOrigin()))
    ref.SetDirection(grid.get("direction", like.GetDirection()))
    return ref


def read_prediction(path: Path, grid: dict, orient: bool, mask_values: str,
                    unused_headers: list[Path] | None = None) -> np.ndarray:
    """The prediction as a D x H x W integer array in the reference's voxel order.

    A reference that records no direction is compared in array order; a NIfTI prediction whose
    header has another direction than the identity is then added to ``unused_headers`` (to be said).
    """
    shape = tuple(grid["shape"])
    low = path.name.lower()
    if low.endswith(".npz"):
        try:
            with np.load(path) as f:
                keys = list(f.keys())
                if "pred" not in keys and len(keys) != 1:
                    raise BenchError(f"{path}: holds {', '.join(keys)}; name the array 'pred' (or store only one)")
                arr = f["pred" if "pred" in keys else keys[0]]
        except BenchError:
            raise
        except Exception as e:
            raise BenchError(f"{path}: unreadable prediction ({type(e).__name__}: {e})") from None
        arr = arr[None] if arr.ndim == 2 and shape[0] == 1 else arr
        if arr.shape != shape:  # no header: the array order must be the dataset's own
            raise BenchError(f"{path}: array {arr.shape}, the reference is {shape} (D x H x W); "
                             "an .npz prediction is taken in the dataset's array order, not resampled")
    elif low.endswith(".png"):
        arr = folders2d.read_mask(path)
        if mask_values == folders2d.MASK_255:
            arr = np.where(arr == 255, 1, arr)
        arr = arr[None]
        if arr.shape != shape:
            raise BenchError(f"{path}: mask is {arr.shape[2]} x {arr.shape[1]}, the reference is "
                             f"{shape[2]} x {shape[1]}")
    else:
        image = read_image(path)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise BenchError(f"{path}: expected a 3D label volume, got {image.GetDimension()}D with "
                             f"{image.GetNumberOfComponentsPerPixel()} component(s)")
        if "direction" not in grid:  # nothing to reorient to: the reference's voxel order is all there is
            if unused_headers is not None and not np.allclose(image.GetDirection(), np.eye(3).ravel()):
                unused_headers.append(path)
        elif orient:
            image = canonical(image)
        check_same_grid(_reference_image(grid, image), image, path, ("prediction", "reference"))
        arr = sitk.GetArrayFromImage(image)
    if arr.dtype.kind not in "biuf":
        raise BenchError(f"{path}: label values of type {arr.dtype} (use integer labels)")
    if arr.dtype.kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise BenchError(f"{path}: label values are not integers (is this a probability map?)")
    return arr


def to_classes(arr: np.ndarray, path: Path, ds: Dataset, label_map: LabelMap | None) -> np.ndarray:
    """Label ids -> the dataset's class ids (uint8); values outside them are an error."""
    if label_map is not None:
        return label_map.apply(arr, str(path))
    values = label_values(arr)
    bad = [v for v in values if v < 0 or v >= ds.num_classes]
    if bad:
        raise BenchError(f"{path}: label values {bad[:8]} are not classes 0..{ds.num_classes - 1} of {ds.name}; "
                         "translate them with --label-map (totalsegmentator, btcv or a YAML file)")
    return arr.astype(np.uint8)


def _read_predictions(found: dict[str, Path], ds: Dataset, prep: Preprocessing,
                      label_map: LabelMap | None, say=print) -> dict[str, np.ndarray]:
    """Every test case's prediction as the dataset's class ids; an empty one for a case without a file."""
    image2d = prep.kind == "image2d"
    preds = {}
    unused: list[Path] = []
    for case in ds.test_cases:
        grid = volume_grid(ds, case)
        if case in found:
            arr = read_prediction(found[case], grid, prep.orient and not image2d, prep.mask_values, unused)
            preds[case] = to_classes(arr, found[case], ds, label_map)
        else:
            preds[case] = np.zeros(grid["shape"], np.uint8)
    if unused:
        say(f"note: the test volumes of {ds.name} record no direction, so predictions are compared in their "
            f"stored voxel order; the header direction of {len(unused)} file(s) (e.g. {unused[0].name}) is not used")
    return preds


def check_name(name: str) -> str:
    """An external run's name: it names a folder, so it follows the name rule (``runs.external_id``)."""
    external_id("", name)
    return name


def evaluate_external(pred_dir: Path, ds: Dataset, name: str, results: Path, ev: Evaluation,
                      label_map: LabelMap | None = None, allow_missing: bool = False, force: bool = False,
                      say=print, provenance: dict | None = None, key: str | None = None,
                      progress: Progress | None = None) -> tuple[Path, pd.DataFrame]:
    """Score ``pred_dir`` against ``ds``'s test cases into an external run; returns (run folder, rows). The manifest
    records ``provenance`` (what made the predictions) and ``key`` (their settings, for ``runs.run_state``).

    A re-run writes beside the run and swaps the new result in once it is whole: stopped before that,
    the run keeps its previous result. Rows of other conventions and NSD tolerances are kept when the
    predictions are the same files (by content); other predictions need ``force`` and replace them all.
    """
    check_name(name)
    if label_map is not None and label_map.organs != ds.organs:
        raise BenchError(f"--label-map {label_map.name}: maps to classes {label_map.organs}, "
                         f"but {ds.name} has {ds.organs}")
    prep = describe(ds)
    found, missing, extra = _checked_matches(pred_dir, ds, prep.kind == "image2d", allow_missing, say)
    preds = _read_predictions(found, ds, prep, label_map, say)  # every one read and checked before anything is written
    source = {"predictions": str(Path(pred_dir).resolve()), "files": {c: f.name for c, f in found.items()},
              "sha256": {f.name: _sha256(f) for f in found.values()}, "missing": missing,
              "ignored": [f.name for f in extra], "label_map": label_map.name if label_map else None}
    run = external_id(ds.name, name)
    run_dir = run.path(results)
    t0 = time.perf_counter()
    with run_lock(run_dir):
        old = read_manifest(run_dir)
        kept = _kept_rows(run_dir, old, source, name, force)
        staging = run_dir / STAGING
        shutil.rmtree(staging, ignore_errors=True)  # left by a process killed outright (under the lock: not in use)
        try:
            scored = _score(ds, ev, preds, staging, run_dir, old, progress, f"{name} (external)", say)
            metrics = add_identity(scored, run, protocol_hash="")
            if len(kept):  # other conventions and tolerances of the same predictions
                kept = kept.drop(index=row_set(kept, ev.convention, ev.nsd_tolerance_mm).index)
            write_metrics(staging / METRICS, pd.concat([kept, metrics], ignore_index=True) if len(kept) else metrics)
            manifest = _manifest(run, name, source, ds, ev, round(time.perf_counter() - t0, 2))
            manifest |= ({"provenance": provenance} if provenance is not None else {}) | ({"key": key} if key else {})
            _swap_in(run_dir, staging, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return run_dir, metrics


STAGING = ".staging"  # the next result of an external run, beside the current one until it is whole


def _checked_matches(pred_dir: Path, ds: Dataset, image2d: bool, allow_missing: bool, say
                     ) -> tuple[dict[str, Path], list[str], list[Path]]:
    """``match_predictions``, with missing cases and extra files refused unless ``allow_missing`` (then said)."""
    found, missing, extra = match_predictions(pred_dir, ds.test_cases, image2d)
    if (missing or extra) and not allow_missing:
        parts = ([f"no prediction for {len(missing)} test case(s): {', '.join(missing[:10])}"] if missing else []) + (
            [f"{len(extra)} file(s) that are no test case of {ds.name}: {', '.join(f.name for f in extra[:10])}"]
            if extra else [])
        raise BenchError(f"--pred {pred_dir}: " + "; ".join(parts) + " (--allow-missing scores a missing case as "
                         "an empty prediction and ignores other files)")
    if not found:
        raise BenchError(f"--pred {pred_dir}: no prediction matches a test case of {ds.name} "
                         f"({', '.join(ds.test_cases[:5])} ...)")
    for what, items in (("scored as empty predictions", missing), ("ignored", [f.name for f in extra])):
        if items:
            say(f"{len(items)} {'case(s)' if what.startswith('scored') else 'file(s)'} {what}: {', '.join(items[:10])}")
    return found, missing, extra


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_changes(before: dict, now: dict) -> list[str]:
    """What differs between the predictions an external run was scored from and these (empty: the same)."""
    if "sha256" not in before:
        return ["its files were not fingerprinted (scored by an earlier version)"]
    old, new = before["sha256"], now["sha256"]
    out = []
    for what, names in (("changed", [f for f in new if f in old and new[f] != old[f]]),
                        ("added", [f for f in new if f not in old]),
                        ("no longer there", [f for f in old if f not in new])):
        if names:
            out.append(f"{', '.join(sorted(names)[:5])}{' ...' if len(names) > 5 else ''} {what}")
    if before.get("label_map") != now["label_map"]:
        out.append(f"label map {before.get('label_map')} -> {now['label_map']}")
    return out


def _kept_rows(run_dir: Path, old: dict | None, source: dict, name: str, force: bool) -> pd.DataFrame:
    """The rows of the complete run that stay (other conventions and tolerances, same predictions);
    a run of other predictions is refused without ``force``, naming what changed."""
    if not old or old.get("status") != "complete":
        return pd.DataFrame()
    before = old.get("source") or {}
    changes = _source_changes(before, source)
    if changes and not force:
        where = (f"the predictions in {source['predictions']} changed since '{name}' was scored"
                 if before.get("predictions") == source["predictions"] else
                 f"it holds the external run '{name}' of {before.get('predictions')}")
        raise BenchError(f"{run_dir}: {where} ({'; '.join(changes)}); use --force to replace it or choose "
                         "another --name")
    if changes or metrics_problem(run_dir) is not None:
        return pd.DataFrame()
    return with_row_set(pd.read_parquet(run_dir / METRICS), recorded_evaluation(old))


def _score(ds: Dataset, ev: Evaluation, preds: dict[str, np.ndarray], staging: Path, run_dir: Path,
           old: dict | None, progress: Progress | None, label: str, say) -> pd.DataFrame:
    """Every case scored, its prediction saved in ``staging``; stopped, the note says what was kept."""
    scored: list[str] = []

    def predict(case: str, _image: np.ndarray) -> np.ndarray:
        scored.append(case)
        return preds[case]

    try:
        return score_cases(ds, ev, predict, save_to=staging, progress=progress, label=label, say=say)
    except Stopped as e:
        kept = (f"{run_dir} is unchanged (its previous result is kept)" if old and old.get("status") == "complete"
                else "nothing was written")
        e.note = f"scoring was not finished ({len(scored)} of {len(ds.test_cases)} cases begun); {kept}"
        raise


def _swap_in(run_dir: Path, staging: Path, manifest: dict) -> None:
    """``_swap``, with a signal that arrives meanwhile held until it is done (then the run is the new one)."""
    try:
        with uninterrupted():
            _swap(run_dir, staging, manifest)
    except Stopped as e:
        e.note = f"the external run was scored and written to {run_dir} before stopping"
        raise


def _swap(run_dir: Path, staging: Path, manifest: dict) -> None:
    """The staged predictions and metrics in place of the run's, then the manifest that says complete."""
    (run_dir / MANIFEST).unlink(missing_ok=True)  # incomplete for the few renames below
    if (run_dir / PRED_DIR).exists():
        (run_dir / PRED_DIR).rename(staging / f"old-{PRED_DIR}")  # removed with the staging folder
    (staging / PRED_DIR).rename(run_dir / PRED_DIR)
    os.replace(staging / METRICS, run_dir / METRICS)
    shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)  # exported from the previous predictions
    write_json(run_dir / MANIFEST, manifest)


def _manifest(run: RunId, name: str, source: dict, ds: Dataset, ev: Evaluation, seconds: float) -> dict:
    return {
        "kind": EXTERNAL, "status": "complete",
        "run": run.__dict__,
        "model": name, "seed": 0,
        "note": "external predictions: trained and predicted elsewhere, scored here; no protocol applies",
        "source": source,
        "protocol": None, "protocol_name": None, "protocol_hash": None,
        "dataset": {"name": ds.name, "root": str(Path(ds.root).resolve()), "fingerprint": ds.fingerprint(),
                    "num_classes": ds.num_classes, "organs": ds.organs, "channels": ds.channels},
        "convention": ev.convention, "evaluation": ev.model_dump(),
        "git": env.git_revision(), "packages": env.package_versions(),
        "wall_seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
