"""Any dataset the harness reads, written as an nnU-Net v2 raw dataset with our split.

``DIR/DatasetNNN_NAME/``: training cases in imagesTr/ and labelsTr/, our test cases in imagesTs/
and labelsTs/, a ``splits_final.json`` whose fold 0 trains on our training cases without the
validation hold-out and validates on it (the caller passes both lists: the held-out cases are
the protocol's, ``bench.engine.validation.held_out_view``), and a dataset.json.

- Volumes: one NIfTI per channel (float32, the intensities our models see) and the label
  (uint8) on the grid the test volume records: spacing, origin, direction (none recorded: 1 mm
  voxels, said once). Training cases with no volume (the official Synapse files, the synthetic
  abdomen) are stacked from their slices, with the spacing synth.json records for the synthetic
  abdomen. NIfTI stores geometry as float32: origin and direction come back to about 1e-7.
- 2D datasets: PNG; gray 8-bit when the values are multiples of 1/255 (else 16-bit), colour as one
  RGB file (nnU-Net reads it as three channels), other channel counts one gray file each.
- dataset.json: channel names that pick nnU-Net's own normalisation (``CT`` for windowed CT, which
  nnU-Net clips and z-scores; ``MR`` / ``gray`` / ``R, G, B`` otherwise, z-scored per image),
  classes by name, and a ``segbench`` entry recording where the data came from and what the
  intensities went through, so reading the folder back (bench.data.nnunet) gives the same voxels.

Nothing is overwritten: a folder already holding a dataset with this id is refused, and the
dataset is built in a hidden sibling and renamed into place.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.data import layout
from bench.data.inputs import image_on_grid, write_nifti, write_png
from bench.data.nnunet import MARKER
from bench.data.nnunet_raw import NNUNET_SPLITS, dataset_folder_name
from bench.data.preprocessing import Preprocessing, describe
from bench.data.synapse import Dataset, case_of, load_volume, volume_grid
from bench.errors import BenchError
from bench.files import atomic_text

VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Export:
    folder: Path  # DIR/DatasetNNN_NAME
    dataset_id: int
    dataset_name: str  # DatasetNNN_NAME, what nnU-Net calls it
    splits_file: Path  # folder/splits_final.json
    commands: tuple[str, ...]  # shell lines that put the split where nnU-Net reads it


def check_dataset_id(dataset_id: int) -> int:
    if not 1 <= int(dataset_id) <= 999:
        raise BenchError(f"--id {dataset_id}: nnU-Net dataset ids are 1..999 (three digits)")
    return int(dataset_id)


def check_name(name: str) -> str:
    if not _NAME.match(name) or len(name) > 100:
        raise BenchError(f"--name {name!r}: use letters, digits, '-' and '_' (it names the folder DatasetNNN_NAME)")
    return name


def default_name(ds: Dataset) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", ds.name).strip("-")[:100] or "segbench"


def taken(out: Path, dataset_id: int) -> Path | None:
    """The dataset already in ``out`` under this id, if any (nnU-Net refuses two names for one id)."""
    out = Path(out)
    if not out.is_dir():
        return None
    return next(iter(sorted(out.glob(f"Dataset{dataset_id:03d}_*"))), None)


def split_commands(dataset_name: str, splits_file: Path) -> tuple[str, ...]:
    """What puts our split where nnU-Net's training reads it (before or after plan_and_preprocess)."""
    target = f'"$nnUNet_preprocessed/{dataset_name}"'
    return (f"mkdir -p {target}", f"cp {shlex.quote(str(Path(splits_file).resolve()))} {target}/{NNUNET_SPLITS}")


def case_arrays(ds: Dataset, case: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Image, label and recorded grid of a case: its volume when it has one, else its stacked slices."""
    if (ds.root / "test_vol_h5" / f"{case}.npy.h5").exists():
        image, label, _ = load_volume(replace(ds, eval_split="test"), case)
        return image, label, volume_grid(ds, case)
    image, label, _ = load_volume(replace(ds, eval_split="val"), case)
    return image, label, _slices_grid(ds, case)


def _slices_grid(ds: Dataset, case: str) -> dict:
    """The spacing of a case stored as slices only, where the folder records it: the synthetic
    abdomen's synth.json does (its training cases have no volume); the official files do not."""
    from bench.data.synthetic.generate import MANIFEST

    path = ds.root / MANIFEST
    try:
        cases = json.loads(path.read_text()).get("cases", {}) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    spacing = (cases.get(case.removeprefix("case")) or {}).get("spacing")
    return {"spacing": tuple(float(v) for v in spacing)} if spacing else {}


def channel_names(ds: Dataset, prep: Preprocessing) -> list[str]:
    meta = layout.read_meta(ds.root) or {}
    source = meta.get("source")
    if isinstance(source, dict) and source.get("kind") == "nnunet" and len(source["channel_names"]) == ds.channels:
        return list(source["channel_names"])
    if prep.kind == "image2d":
        return ["R", "G", "B"] if ds.channels == 3 else ["gray"] * ds.channels
    return ["CT" if prep.window is not None else "MR"] * ds.channels


def _labels(ds: Dataset) -> dict[str, int]:
    names = list(ds.organs.values())
    if sorted(ds.organs) != list(range(1, len(ds.organs) + 1)):
        raise BenchError(f"{ds.root}: classes {sorted(ds.organs)}; nnU-Net needs consecutive ids 1..K")
    if len(set(names)) != len(names) or "background" in names:
        raise BenchError(f"{ds.root}: class names {names} must be unique and not 'background' (nnU-Net keys "
                         "labels by name)")
    return {"background": 0, **{name: i for i, name in sorted(ds.organs.items())}}


def _gray_png(plane: np.ndarray) -> np.ndarray:
    scaled = plane.astype(np.float64) * 255
    if np.allclose(scaled, np.round(scaled), atol=1e-3):
        return np.round(scaled).astype(np.uint8)
    return np.round(plane.astype(np.float64) * 65535).astype(np.uint16)  # 16-bit: read back per image to [0, 1]


def _write_image_case(folder: Path, split: str, case: str, image: np.ndarray, label: np.ndarray) -> None:
    if image.shape[0] != 1:
        raise BenchError(f"case {case}: {image.shape[0]} slices in a 2D dataset")
    plane = image[0]
    if plane.ndim == 3 and plane.shape[2] == 3:
        files = [np.round(np.clip(plane, 0, 1) * 255).astype(np.uint8)]
    else:
        planes = [plane] if plane.ndim == 2 else [plane[..., c] for c in range(plane.shape[2])]
        files = [_gray_png(p) for p in planes]
    for c, array in enumerate(files):
        write_png(array, folder / f"images{split}" / f"{case}_{c:04d}.png")
    write_png(label[0].astype(np.uint8), folder / f"labels{split}" / f"{case}.png")


def _write_volume_case(folder: Path, split: str, case: str, image: np.ndarray, label: np.ndarray, grid: dict) -> None:
    channels = [image] if image.ndim == 3 else [image[..., c] for c in range(image.shape[3])]
    for c, array in enumerate(channels):
        write_nifti(image_on_grid(np.ascontiguousarray(array, np.float32), grid),
                    folder / f"images{split}" / f"{case}_{c:04d}.nii.gz")
    write_nifti(image_on_grid(label.astype(np.uint8), grid), folder / f"labels{split}" / f"{case}.nii.gz")


def _check_cases(ds: Dataset, train: list[str], val: list[str]) -> None:
    training = {case_of(s) for s in ds.train_slices}
    if set(train) & set(val) or set(train) | set(val) != training or training & set(ds.test_cases):
        raise ValueError("train and val must split the dataset's training cases, apart from its test cases")


def write_nnunet(ds: Dataset, dataset_id: int, out: Path, train: list[str], val: list[str], name: str | None = None,
                 say=print) -> Export:
    """Write ``ds`` into ``out/DatasetNNN_NAME`` (train + val in imagesTr, our test cases in imagesTs)."""
    dataset_id, name = check_dataset_id(dataset_id), check_name(name or default_name(ds))
    _check_cases(ds, train, val)
    dataset_name = dataset_folder_name(dataset_id, name)
    other = taken(out, dataset_id)
    if other is not None:
        raise BenchError(f"--id {dataset_id}: {other} already holds dataset {dataset_id} in {out}; choose another --id")
    prep, labels = describe(ds), _labels(ds)
    image2d = prep.kind == "image2d"
    names = channel_names(ds, prep)
    cases = [(c, "Tr") for c in sorted(train + val)] + [(c, "Ts") for c in sorted(ds.test_cases)]
    folder = Path(out) / dataset_name
    no_grid = []
    say(f"writing {len(cases)} cases of {ds.name} as {folder} ...")
    with layout.building(folder) as tmp:
        for i, (case, split) in enumerate(cases):
            if i % 10 == 0 and len(cases) > 10:
                say(f"[{i + 1}/{len(cases)}] {case}")
            image, label, grid = case_arrays(ds, case)
            if image2d:
                _write_image_case(tmp, split, case, image, label)
            else:
                no_grid += [case] if "spacing" not in grid else []
                _write_volume_case(tmp, split, case, image, label, grid)
        atomic_text(tmp / NNUNET_SPLITS, json.dumps([{"train": sorted(train), "val": sorted(val)}], indent=1) + "\n")
        doc = {"channel_names": {str(i): n for i, n in enumerate(names)}, "labels": labels,
               "numTraining": len(train) + len(val), "file_ending": ".png" if image2d else ".nii.gz",
               "name": dataset_name, "description": f"{ds.name} exported by segbench; fold 0 of {NNUNET_SPLITS} is "
               "its training cases without the validation hold-out, imagesTs its test cases",
               "licence": "that of the source dataset", "converted_by": "segbench (bench data export-nnunet)",
               MARKER: {"version": VERSION, "dataset": ds.name, "root": str(Path(ds.root).resolve()),
                        "fingerprint": ds.fingerprint(), "preprocessing": prep.to_dict(),
                        "cases": {"train": len(train), "val": len(val), "test": len(ds.test_cases)}}}
        atomic_text(tmp / layout.META, json.dumps(doc, indent=1) + "\n")
    if no_grid:
        say(f"{len(no_grid)} case(s) record no voxel spacing (e.g. {no_grid[0]}): written with 1 mm voxels")
    splits_file = folder / NNUNET_SPLITS
    return Export(folder, dataset_id, dataset_name, splits_file, split_commands(dataset_name, splits_file))

