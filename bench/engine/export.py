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
import SimpleITK as sitk

from bench.data.inputs import write_nifti
from bench.data.synapse import Dataset, load_volume, volume_grid
from bench.engine.evaluation import PRED_DIR, load_prediction
from bench.engine.results import EXPORT_DIR, read_manifest
from bench.errors import BenchError

FORMATS = ("nifti",)


def _image(array: np.ndarray, grid: dict) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    if "spacing" in grid:
        image.SetSpacing(tuple(reversed(grid["spacing"])))  # (z, y, x) -> ITK's (x, y, z)
    if "origin" in grid:
        image.SetOrigin(grid["origin"])
    if "direction" in grid:
        image.SetDirection(grid["direction"])
    return image


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
    written, unit = [], []
    for case in cases:
        h5 = root / "test_vol_h5" / f"{case}.npy.h5"
        grid = volume_grid(ds, case) if h5.exists() else {}  # a validation case stacked from slices: no grid
        pred = load_prediction(run_dir, case).astype(np.uint8)
        if grid and tuple(grid["shape"]) != pred.shape:
            raise BenchError(f"{run_dir / PRED_DIR / (case + '.npz')}: prediction {pred.shape} does not fit its test "
                             f"volume {tuple(grid['shape'])} in {root}")
        if "spacing" not in grid:
            unit.append(case)
        written.append(out / f"{case}.nii.gz")
        write_nifti(_image(pred, grid), written[-1])
        if images and h5.exists():
            image, _, _ = load_volume(ds, case)
            written.append(out / f"{case}_image.nii.gz")
            write_nifti(_image(image, grid), written[-1])
    if unit:
        say(f"{len(unit)} case(s) record no voxel spacing (e.g. {unit[0]}): written with 1 mm voxels")
    return written
