"""Reading the Synapse file layout (used by the built-in synthetic data too).

Layout (as the official repositories preprocess it)::

    train_npz/<case>_sliceNNN.npz        keys image (H x W float), label (H x W int)
    test_vol_h5/<case>.npy.h5            datasets image, label (D x H x W)
    lists/lists_Synapse/train.txt        one slice name per line
    lists/lists_Synapse/test_vol.txt     one case name per line

Training-time sampling and augmentation live in ``bench.data.sampling``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from bench.data.layout import files
from bench.data.names import read_names
from bench.errors import BenchError


@dataclass(frozen=True)
class Dataset:
    """A dataset on disk in the Synapse layout, with its name and class names."""

    name: str
    root: Path
    train_slices: list[str]
    test_cases: list[str]
    organs: dict[int, str]
    # "test": test_cases are volumes in test_vol_h5/. "val": test_cases are training cases held
    # out for validation, whose volumes are stacked from their training slices.
    eval_split: str = "test"
    # image channels: 1 (gray), 3 (colour) or C (an nnU-Net dataset's channels); with more than one, training
    # slices are H x W x C and test volumes D x H x W x C
    channels: int = 1

    @property
    def num_classes(self) -> int:
        return max(self.organs) + 1

    def fingerprint(self) -> str:
        """Short hash of the split lists (and of a colour channel count): runs on different splits never
        look alike. Gray datasets hash their lists alone, as before channels were recorded."""
        parts = self.train_slices + ["--"] + self.test_cases
        parts += [f"channels={self.channels}"] if self.channels != 1 else []
        h = hashlib.sha256("\n".join(parts).encode())
        return h.hexdigest()[:12]


def _read_list(path: Path) -> list[str]:
    return read_names(path)


def open_synapse(root: Path, name: str, organs: dict[int, str]) -> Dataset:
    """Open a dataset in the Synapse layout; checks that every listed file exists."""
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"dataset folder not found: {root}")
    where = files(root)
    train = _read_list(where.train_list)
    test = _read_list(where.test_list)
    for s in train:
        if not where.slice(s).exists():
            raise BenchError(f"{where.slice(s)}: listed in train.txt but missing")
    for c in test:
        if not where.volume(c).exists():
            raise BenchError(f"{where.volume(c)}: listed in test_vol.txt but missing")
    return Dataset(name=name, root=root, train_slices=train, test_cases=test, organs=organs)


def case_of(slice_name: str) -> str:
    """``case0005_slice012`` -> ``case0005``."""
    return slice_name.rsplit("_slice", 1)[0]


def validation_split(ds: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A view that trains on most training cases and evaluates on the rest; never on test cases.

    The held-out cases are drawn by case (not by slice) with a seeded generator, at least one.
    """
    cases = sorted({case_of(s) for s in ds.train_slices})
    if len(cases) < 2:
        raise BenchError(f"{ds.root}: need at least two training cases to carve a validation split")
    n_val = min(len(cases) - 1, max(1, round(fraction * len(cases))))
    rng = np.random.default_rng([seed, 7919])
    val = sorted(rng.choice(cases, size=n_val, replace=False).tolist())
    train = [s for s in ds.train_slices if case_of(s) not in val]
    return Dataset(name=ds.name, root=ds.root, train_slices=train, test_cases=val, organs=ds.organs,
                   eval_split="val", channels=ds.channels)


def load_slice(ds: Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A training slice: the image as float32, the label in the dtype it is stored in (uint8 here,
    float32 in some official files). Callers make it int64 when they need to: training after
    augmenting and resizing (order-0 operations copy label values exactly, and a small dtype
    makes them several times cheaper), volumes when they stack slices."""
    path = files(ds.root).slice(name)
    try:
        with np.load(path) as f:
            return f["image"].astype(np.float32), f["label"]
    except Exception as e:  # truncated zip, missing key...
        raise BenchError(f"{path}: unreadable training slice ({e})") from None


def volume_grid(ds: Dataset, case: str) -> dict:
    """What a test volume records of its grid: ``spacing`` (z, y, x) mm, ``origin`` (x, y, z) mm and
    ``direction`` (9 cosines) when present, and its ``shape`` (D, H, W); arrays are not read."""
    path = files(ds.root).volume(case)
    try:
        with h5py.File(path, "r") as f:
            out: dict = {"shape": tuple(int(n) for n in f["label"].shape)}
            for key in ("spacing", "origin", "direction"):
                if key in f.attrs:
                    out[key] = tuple(float(v) for v in np.asarray(f.attrs[key]).ravel())
    except Exception as e:
        raise BenchError(f"{path}: unreadable test volume ({e})") from None
    return out


def load_volume(ds: Dataset, case: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...] | None]:
    """Image, label (D x H x W) and spacing (z, y, x) in mm if the file records it."""
    if ds.eval_split == "val":
        listed = _read_list(files(ds.root).train_list)
        names = sorted((s for s in listed if case_of(s) == case), key=lambda s: int(s.rsplit("_slice", 1)[1]))
        pairs = [load_slice(ds, s) for s in names]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(np.int64), None
    path = files(ds.root).volume(case)
    try:
        with h5py.File(path, "r") as f:
            image = f["image"][:].astype(np.float32)
            label = f["label"][:].astype(np.int64)
            spacing = tuple(float(s) for s in f.attrs["spacing"]) if "spacing" in f.attrs else None
    except Exception as e:
        raise BenchError(f"{path}: unreadable test volume ({e})") from None
    return image, label, spacing
