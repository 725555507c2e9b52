"""``bench export RUN_DIR --format nifti``: a run's saved test predictions as NIfTI files.

Each ``predictions/<case>.npz`` (D x H x W, the dataset's voxel order) becomes
``<case>.nii.gz`` on its test volume's grid: the spacing recorded in the volume's h5 file and,
for cases imported with ``bench data import`` / ``prepare-btcv`` / ``prepare-acdc``, its origin
and direction, so the mask lies on the imported scan in physical space. Volumes that record no
spacing (2D images, the official preprocessed files) get 1 mm voxels, said once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data import layout
from bench.data.inputs import image_on_grid, write_nifti
from bench.data.synapse import Dataset, load_volume, volume_grid
from bench.engine.evaluation import PRED_DIR, evaluated_slices, load_prediction
from bench.engine.results import EXPORT_DIR, read_manifest
from bench.errors import BenchError
from bench.protocol import Evaluation

FORMATS = ("nifti",)


def export_run(run_dir: Path, fmt: str = "nifti", out: Path | None = None, images: bool = False,
               say=print) -> list[Path]:
    """Write every saved prediction of ``run_dir`` (and with ``images`` its test image) as NIfTI."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise BenchError(f"--format {fmt}: not supported; formats: {', '.join(FORMATS)}")
    m = read_manifest(run_dir)
    if m is None:
        raise BenchError(f"{run_dir}: no manifest.json; not a run folder")
    if m.get("status") != "complete":
        raise BenchError(f"{run_dir}: run is {m.get('status')}, not complete")
    cases = sorted(p.name[: -len(".npz")] for p in (run_dir / PRED_DIR).glob("*.npz"))
    if not cases:
        raise BenchError(f"{run_dir / PRED_DIR}: no saved predictions")
    info = m["dataset"]
    root = Path(info["root"])
    if not root.is_dir():
        raise BenchError(f"{root}: the run's dataset folder is gone; its test volumes hold the spacing")
    ds = Dataset(info["name"], root, [], cases, {int(k): v for k, v in info["organs"].items()},
                 channels=int(info.get("channels", 1)))
    out = Path(out) if out is not None else run_dir / EXPORT_DIR
    ev = Evaluation.model_validate(m.get("evaluation") or (m.get("protocol") or {}).get("evaluation") or {})
    written: list[Path] = []
    unit: list[str] = []
    partial: list[str] = []  # cases whose saved prediction is the evaluated slab only
    for case in cases:
        h5 = layout.files(root).volume(case)
        grid = volume_grid(ds, case) if h5.exists() else {}  # a validation case stacked from slices: no grid
        pred = load_prediction(run_dir, case).astype(np.uint8)
        if grid and tuple(grid["shape"]) != pred.shape:
            pred = _on_volume(pred, grid, ev)
            partial += [case] if tuple(grid["shape"]) == pred.shape else []
        if grid and tuple(grid["shape"]) != pred.shape:
            raise BenchError(f"{run_dir / PRED_DIR / (case + '.npz')}: prediction {pred.shape} does not fit its test "
                             f"volume {tuple(grid['shape'])} in {root}")
        if "spacing" not in grid:
            unit.append(case)
        written.append(out / f"{case}.nii.gz")
        write_nifti(image_on_grid(pred, grid), written[-1])
        if images and h5.exists():
            image, _, _ = load_volume(ds, case)
            written.append(out / f"{case}_image.nii.gz")
            write_nifti(image_on_grid(image, grid), written[-1])
    if unit:
        say(f"{len(unit)} case(s) record no voxel spacing (e.g. {unit[0]}): written with 1 mm voxels")
    if partial:
        say(f"the protocol scored {ev.subset()}: the other slices of {len(partial)} volume(s) were not predicted "
            "and are 0 in the masks")
    return written


def _on_volume(pred: np.ndarray, grid: dict, ev: Evaluation) -> np.ndarray:
    """A prediction of the evaluated slab (``evaluation.max_slices``) placed in its whole volume (0 elsewhere)."""
    shape = tuple(grid["shape"])
    slab = evaluated_slices(shape[0], ev)
    if pred.shape != (slab.stop - slab.start, *shape[1:]):
        return pred  # not the protocol's slab: the caller names the mismatch
    full = np.zeros(shape, pred.dtype)
    full[slab] = pred
    return full
