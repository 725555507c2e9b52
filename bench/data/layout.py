"""Writing datasets in the Synapse layout (see bench/data/synapse.py), never half-way.

Every case is written in both forms, so any split (train/test lists, folds, a validation
subset) can use it without converting again:

    train_npz/<case>_sliceNNN.npz     image float32 H x W (colour: H x W x 3) in [0, 1], label uint8 H x W
    test_vol_h5/<case>.npy.h5         image, label D x H x W (axial slices first); attr spacing (z, y, x) mm,
                                      and for imported CT / MR origin (x, y, z) mm and direction (9 cosines)
    lists/lists_Synapse/train.txt     the slices the engine trains on
    lists/lists_Synapse/test_vol.txt  the cases it tests on
    dataset.json                      class names ("organs") and where the data came from

nnU-Net v2 also names its description ``dataset.json``; ``is_nnunet_meta`` is the one rule that
tells the two apart (ours always has ``organs``, nnU-Net's never does and has ``labels``).

A whole dataset is built in a hidden sibling folder and renamed into place; one case added to an
existing folder is staged, moved in, and committed by the final rewrite of its list file, and
rolled back on any error before that.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from bench.errors import BenchError
from bench.files import atomic_text

LIST_DIR = Path("lists") / "lists_Synapse"
META = "dataset.json"
TRAIN_LIST = LIST_DIR / "train.txt"
TEST_LIST = LIST_DIR / "test_vol.txt"


@dataclass(frozen=True)
class Files:
    """Where a dataset in the Synapse layout keeps each of its files: the one place they are spelled."""

    root: Path

    @property
    def slice_dir(self) -> Path:
        return self.root / "train_npz"

    @property
    def volume_dir(self) -> Path:
        return self.root / "test_vol_h5"

    @property
    def list_dir(self) -> Path:
        return self.root / LIST_DIR

    @property
    def train_list(self) -> Path:
        return self.root / TRAIN_LIST

    @property
    def test_list(self) -> Path:
        return self.root / TEST_LIST

    @property
    def meta(self) -> Path:
        return self.root / META

    def slice(self, name: str) -> Path:
        """A training slice: ``train_npz/<case>_sliceNNN.npz``."""
        return self.slice_dir / f"{name}.npz"

    def volume(self, case: str) -> Path:
        """A test volume: ``test_vol_h5/<case>.npy.h5``."""
        return self.volume_dir / f"{case}.npy.h5"


def files(root: Path | str) -> Files:
    """The file paths of the dataset at ``root``."""
    return Files(Path(root))


def slice_name(case: str, k: int) -> str:
    return f"{case}_slice{k:03d}"


def write_case(root: Path, case: str, image: np.ndarray, label: np.ndarray,
               spacing: tuple[float, float, float] | None, grid: dict | None = None) -> list[str]:
    """Write one case's slices and volume under root; returns the slice names.

    ``grid`` (origin, direction of the volume as stored: ``bench.data.ct_import.grid_of``) goes
    into the volume's attributes beside the spacing."""
    if image.shape[:3] != label.shape or image.ndim not in (3, 4) or label.ndim != 3:
        raise ValueError(f"image {image.shape} and label {label.shape} must be D x H x W (image: or D x H x W x C)")
    where = files(root)
    where.slice_dir.mkdir(parents=True, exist_ok=True)
    where.volume_dir.mkdir(parents=True, exist_ok=True)
    image, label = image.astype(np.float32), label.astype(np.uint8)
    names = []
    for k in range(image.shape[0]):
        names.append(slice_name(case, k))
        np.savez(where.slice(names[-1]), image=image[k], label=label[k])
    with h5py.File(where.volume(case), "w") as f:
        for key, data in (("image", image), ("label", label)):
            f.create_dataset(key, data=data, chunks=(1, *data.shape[1:]), compression="gzip", compression_opts=1)
        if spacing is not None:
            f.attrs["spacing"] = np.asarray(spacing, np.float64)
        for key, value in (grid or {}).items():
            f.attrs[key] = np.asarray(value, np.float64)
    return names


def write_lists(root: Path, train_slices: list[str], test_cases: list[str]) -> None:
    atomic_text(root / TRAIN_LIST, "".join(f"{s}\n" for s in train_slices))
    atomic_text(root / TEST_LIST, "".join(f"{c}\n" for c in test_cases))


def write_meta(root: Path, organs: dict[int, str], **extra) -> None:
    meta = {"organs": {str(k): v for k, v in sorted(organs.items())}, **extra}
    atomic_text(root / META, json.dumps(meta, indent=1) + "\n")


def is_nnunet_meta(doc: object) -> bool:
    """Is this dataset.json nnU-Net v2's (``labels`` with ``channel_names`` or v1's ``modality``) rather
    than ours? Ours always has ``organs`` (every writer here puts it there), nnU-Net's never does."""
    return (isinstance(doc, dict) and "organs" not in doc and "labels" in doc
            and ("channel_names" in doc or "modality" in doc))


def read_meta(root: Path) -> dict | None:
    """dataset.json as a dict (organs with int keys), None when the folder has none of ours (none at
    all, or nnU-Net's: ``is_nnunet_meta``)."""
    path = Path(root) / META
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
        if is_nnunet_meta(meta):
            return None
        meta["organs"] = {int(k): str(v) for k, v in meta["organs"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"{path}: unreadable dataset description ({type(e).__name__}: {e})") from None
    if not meta["organs"] or min(meta["organs"]) < 1:
        raise BenchError(f"{path}: 'organs' must map class ids >= 1 to names")
    return meta


def _lines(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text().splitlines() if s.strip()] if path.exists() else []


@contextmanager
def building(out: Path) -> Iterator[Path]:
    """A fresh folder to build a dataset in, renamed to ``out`` on success, removed on error.

    ``out`` must not exist or be empty: a prepared dataset is never merged into another.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out} already exists and is not empty; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_case(out: Path, case: str, image: np.ndarray, label: np.ndarray, spacing, split: str,
             organs: dict[int, str], source: dict, grid: dict | None = None) -> list[str]:
    """Add one case to a (possibly new) dataset folder, all or nothing; returns its slice names."""
    out = Path(out)
    meta = read_meta(out) if out.is_dir() else None
    if meta is not None and meta["organs"] != organs:
        raise BenchError(f"{out / META}: this dataset has classes {meta['organs']}, the label map gives {organs}")
    if out.is_dir() and meta is None and any(out.iterdir()):
        raise BenchError(f"{out}: not empty and not a dataset made by `bench data import` (no {META})")
    train, test = _lines(out / TRAIN_LIST), _lines(out / TEST_LIST)
    if files(out).volume(case).exists() or case in test or any(
            s.rsplit("_slice", 1)[0] == case for s in train):
        raise BenchError(f"{out}: case '{case}' is already there; choose another --case-id")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".staging-{case}-{uuid.uuid4().hex[:8]}"
    moved: list[Path] = []
    new_meta = meta is None
    try:
        names = write_case(stage, case, image, label, spacing, grid)
        for sub in ("slice_dir", "volume_dir"):
            target = getattr(files(out), sub)
            target.mkdir(exist_ok=True)
            for f in sorted(getattr(files(stage), sub).iterdir()):
                os.replace(f, target / f.name)
                moved.append(target / f.name)
        cases = sorted({*(meta or {}).get("cases", {}), case})
        sources = {**(meta or {}).get("cases", {}), case: source}
        write_meta(out, organs, cases={c: sources[c] for c in cases})
        if not (out / TEST_LIST).exists():
            atomic_text(out / TEST_LIST, "")
        if not (out / TRAIN_LIST).exists():
            atomic_text(out / TRAIN_LIST, "")
        # the commit point: the case joins its split's list
        if split == "train":
            atomic_text(out / TRAIN_LIST, "".join(f"{s}\n" for s in train + names))
        else:
            atomic_text(out / TEST_LIST, "".join(f"{c}\n" for c in test + [case]))
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        for f in moved:
            f.unlink(missing_ok=True)
        if new_meta:
            (out / META).unlink(missing_ok=True)
        elif meta is not None:
            write_meta(out, meta["organs"], **{k: v for k, v in meta.items() if k != "organs"})
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return names
