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

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from bench import env
from bench.data import folders2d
from bench.data.ct_import import canonical, check_same_grid, read_image
from bench.data.labelmaps import LabelMap, label_values
from bench.data.preprocessing import describe
from bench.data.synapse import Dataset, load_volume, volume_grid
from bench.engine.evaluation import PRED_DIR, save_prediction, score_case
from bench.engine.results import EXPORT_DIR, MANIFEST, METRICS, read_manifest, run_lock, write_metrics
from bench.errors import BenchError
from bench.files import write_json
from bench.protocol import Evaluation

EXTERNAL = "external"  # the "protocol" folder of external runs
PRED_EXTS = (".nii.gz", ".nii", ".npz", ".png")


def external_path(results: Path, dataset: str, name: str) -> Path:
    return Path(results) / dataset / EXTERNAL / name


def _case_of(path: Path, image2d: bool) -> str | None:
    low = path.name.lower()
    for ext in PRED_EXTS:
        if low.endswith(ext) and len(low) > len(ext):
            stem = path.name[: -len(ext)]
            return folders2d.case_id(stem) if image2d else stem
    return None


def match_predictions(pred_dir: Path, cases: list[str], image2d: bool) -> tuple[dict[str, Path], list[str], list[Path]]:
    """(case -> prediction file, cases without one, files that are no test case)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise BenchError(f"--pred {pred_dir}: folder not found")
    found: dict[str, Path] = {}
    extra = []
    for f in sorted(pred_dir.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        case = _case_of(f, image2d)
        if case is None or case not in cases:
            extra.append(f)
        elif case in found:
            raise BenchError(f"{f}: a second prediction for {case} (also {found[case].name})")
        else:
            found[case] = f
    return found, [c for c in cases if c not in found], extra


def _reference_image(grid: dict, like: sitk.Image) -> sitk.Image:
    """An empty image on the test volume's recorded grid; what it does not record is taken from ``like``."""
    d, h, w = grid["shape"]
    ref = sitk.Image([w, h, d], sitk.sitkUInt8)
    ref.SetSpacing(tuple(reversed(grid["spacing"])) if "spacing" in grid else like.GetSpacing())
    ref.SetOrigin(grid.get("origin", like.GetOrigin()))
    ref.SetDirection(grid.get("direction", like.GetDirection()))
    return ref


def read_prediction(path: Path, grid: dict, orient: bool, mask_values: str) -> np.ndarray:
    """The prediction as a D x H x W integer array in the reference's voxel order."""
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
        if orient:
            image = canonical(image)
        check_same_grid(_reference_image(grid, image), image, path, ("prediction", "reference"))
        arr = sitk.GetArrayFromImage(image)
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


def evaluate_external(pred_dir: Path, ds: Dataset, name: str, results: Path, ev: Evaluation,
                      label_map: LabelMap | None = None, allow_missing: bool = False, force: bool = False,
                      say=print) -> tuple[Path, pd.DataFrame]:
    """Score ``pred_dir`` against ``ds``'s test cases into an external run; returns (run folder, rows)."""
    if not name or name != folders2d.case_id(name) or name.startswith("seed"):
        raise BenchError(f"--name '{name}': use letters, digits, '.' and '-' (it names a folder), not seed<k>")
    if label_map is not None and label_map.organs != ds.organs:
        raise BenchError(f"--label-map {label_map.name}: maps to classes {label_map.organs}, "
                         f"but {ds.name} has {ds.organs}")
    prep = describe(ds)
    image2d = prep.kind == "image2d"
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
    # read and check every prediction before anything is written
    preds = {}
    for case in ds.test_cases:
        grid = volume_grid(ds, case)
        if case in found:
            arr = read_prediction(found[case], grid, prep.orient and not image2d, prep.mask_values)
            preds[case] = to_classes(arr, found[case], ds, label_map)
        else:
            preds[case] = np.zeros(grid["shape"], np.uint8)
    run_dir = external_path(results, ds.name, name)
    source = str(Path(pred_dir).resolve())
    t0 = time.perf_counter()
    with run_lock(run_dir):
        old = read_manifest(run_dir)
        if old and old.get("status") == "complete" and (old.get("source") or {}).get("predictions") != source \
                and not force:
            raise BenchError(f"{run_dir} holds the external run '{name}' of {old['source']['predictions']}; "
                             "use --force to replace it or choose another --name")
        (run_dir / MANIFEST).unlink(missing_ok=True)  # incomplete from here until the manifest is rewritten
        for folder in (PRED_DIR, EXPORT_DIR):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
        frames = []
        for case in ds.test_cases:
            _, ref, spacing = load_volume(ds, case)
            save_prediction(run_dir, case, preds[case])
            rows = score_case(preds[case], ref, spacing, ds.organs, ev)
            rows.insert(0, "case", case)
            frames.append(rows)
        metrics = pd.concat(frames, ignore_index=True)
        for col, value in (("dataset", ds.name), ("protocol", EXTERNAL), ("model", name), ("seed", 0),
                           ("protocol_hash", "")):
            metrics.insert(0, col, value)
        write_metrics(run_dir / METRICS, metrics)
        write_json(run_dir / MANIFEST, {
            "kind": EXTERNAL, "status": "complete",
            "run": {"dataset": ds.name, "protocol": EXTERNAL, "model": name, "seed": 0},
            "model": name, "seed": 0,
            "note": "external predictions: trained and predicted elsewhere, scored here; no protocol applies",
            "source": {"predictions": source, "files": {c: f.name for c, f in found.items()},
                       "missing": missing, "ignored": [f.name for f in extra],
                       "label_map": label_map.name if label_map else None},
            "protocol": None, "protocol_name": None, "protocol_hash": None,
            "dataset": {"name": ds.name, "root": str(Path(ds.root).resolve()), "fingerprint": ds.fingerprint(),
                        "num_classes": ds.num_classes, "organs": ds.organs, "channels": ds.channels},
            "convention": ev.convention, "evaluation": ev.model_dump(),
            "git": env.git_revision(), "packages": env.package_versions(),
            "wall_seconds": round(time.perf_counter() - t0, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
    return run_dir, metrics
