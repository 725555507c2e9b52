"""ACDC (cardiac MRI) into the Synapse layout: ``bench data prepare-acdc RAW_DIR --out DIR``.

Input: the ACDC training set, ``patientNNN/patientNNN_frameNN.nii.gz`` with ``..._gt.nii.gz``
(two annotated frames per patient, end-diastole and end-systole; each frame becomes one case,
``patientNNN_frameNN``). Classes: 1 RV, 2 Myo, 3 LV (the challenge's ids).

Split: 70 training / 10 validation / 20 test patients, as in the TransUNet and Swin-Unet papers.
The papers did not publish their patient ids; these are the public lists of SSL4MIS
(github HiLab-git/SSL4MIS, data/ACDC/{train,val,test}.list, commit 0119796), used by many
follow-up works. Validation patients are written but listed in neither train.txt nor
test_vol.txt: they are the stored ``val`` split (see bench.data.splits).

Preprocessing: the voxel order of the files is kept (short-axis slices first; MR stacks are
oblique, so no reorientation); image and label must share one grid; each volume is scaled
min-max to [0, 1] (MR has no fixed intensity scale).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data import layout
from bench.data.ct_import import check_image, load_pair
from bench.data.labelmaps import LabelMap
from bench.data.splits import write_splits
from bench.errors import BenchError

ACDC = LabelMap("acdc", {1: 1, 2: 2, 3: 3}, frozenset(range(4)), {1: "RV", 2: "Myo", 3: "LV"})
TEST_PATIENTS = (1, 7, 8, 11, 13, 22, 24, 33, 52, 59, 64, 65, 66, 68, 75, 80, 81, 83, 84, 93)
VAL_PATIENTS = (2, 19, 28, 30, 39, 45, 78, 82, 85, 87)
ALL_PATIENTS = tuple(range(1, 101))


def minmax(volume: np.ndarray, path: Path) -> np.ndarray:
    check_image(volume, path)
    v = volume.astype(np.float32)
    return (v - v.min()) / (v.max() - v.min())


def find_acdc(raw: Path) -> dict[int, list[tuple[str, Path, Path]]]:
    """patient number -> [(case id, image, label)] for the 100 annotated patients."""
    raw = Path(raw)
    if not raw.is_dir():
        raise BenchError(f"ACDC folder not found: {raw}")
    for base in (raw, raw / "training", raw / "database" / "training"):
        if (base / "patient001").is_dir():
            break
    else:
        raise BenchError(f"{raw}: no patient001/ folder (expected the ACDC training set: patientNNN/...)")
    found = {}
    for p in ALL_PATIENTS:
        folder = base / f"patient{p:03d}"
        if not folder.is_dir():
            raise BenchError(f"{folder}: missing (the 70 / 10 / 20 split needs patients 001..100)")
        frames = []
        for gt in sorted(folder.glob(f"patient{p:03d}_frame[0-9][0-9]_gt.nii*")):
            image = gt.with_name(gt.name.replace("_gt", ""))
            if not image.is_file():
                raise BenchError(f"{image}: missing (its label {gt.name} exists)")
            frames.append((gt.name.split("_gt")[0], image, gt))
        if not frames:
            raise BenchError(f"{folder}: no annotated frame (patientNNN_frameNN_gt.nii.gz)")
        found[p] = frames
    return found


def prepare_acdc(raw: Path, out: Path, say=print) -> Path:
    """Convert ACDC and store the paper split (lists + splits.json)."""
    patients = find_acdc(raw)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    train_slices = []
    with layout.building(out) as tmp:
        for i, (p, frames) in enumerate(patients.items()):
            which = "test" if p in TEST_PATIENTS else "val" if p in VAL_PATIENTS else "train"
            if i % 10 == 0:
                say(f"[{i + 1}/{len(patients)}] patient{p:03d} ...")
            for case, img_path, gt_path in frames:
                img, lab, spacing, grid = load_pair(img_path, gt_path, ACDC, minmax, orient=False)
                names = layout.write_case(tmp, case, img, lab, spacing, grid)
                split[which].append(case)
                if which == "train":
                    train_slices += names
        layout.write_lists(tmp, train_slices, split["test"])
        layout.write_meta(tmp, ACDC.organs, source={"kind": "acdc", "raw": str(Path(raw).resolve()),
                                                   "split": "SSL4MIS lists (70 / 10 / 20 patients)"})
        write_splits(tmp, {"seed": None, **split})
    return Path(out)
