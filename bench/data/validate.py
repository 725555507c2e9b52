"""Up-front checks of a dataset in the Synapse layout, so bad data fails in a second, not mid-run.

Checked: every listed name follows the case-name rule and its file is present; each training
slice is a readable npz with ``image`` and ``label``, 2D, equal shapes, a float image with no NaN
or infinite value and an integer-valued label within 0..C-1; each test volume likewise (3D,
D x H x W, at least one slice) with a valid ``spacing`` attribute if it has one. A bad value is
named by file (and slice). Everything is read in full, once: a passing check is remembered in
the cache, keyed by every file's size and modification time, so the official 2,211-slice set is
read once, not on every run.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import h5py
import numpy as np

from bench.data import layout
from bench.data.names import read_names
from bench.errors import BenchError
from bench.paths import cache_dir

VERSION = 2  # 2: images read in full for NaN / Inf, empty volumes refused


def _listed(root: Path) -> tuple[list[Path], list[Path]]:
    where = layout.files(root)
    lists = {path.name: read_names(path) for path in (where.train_list, where.test_list)}
    train = [where.slice(s) for s in lists["train.txt"]]
    test = [where.volume(c) for c in lists["test_vol.txt"]]
    for files, name in ((train, "train.txt"), (test, "test_vol.txt")):
        missing = [f for f in files if not f.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise BenchError(f"{missing[0]}: listed in {name} but missing{more}")
    return train, test


def _stamp(root: Path, files: list[Path], num_classes: int) -> str:
    h = hashlib.sha256(f"{VERSION}|{root.resolve()}|{num_classes}".encode())
    where = layout.files(root)
    for f in files + [where.train_list, where.test_list]:
        st = f.stat()
        h.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _check_label(label: np.ndarray, num_classes: int, where: str) -> None:
    if label.dtype.kind not in "iufb":
        raise BenchError(f"{where}: label has dtype {label.dtype}, expected integers")
    if label.dtype.kind == "f" and not (np.all(np.isfinite(label)) and np.all(label == np.round(label))):
        raise BenchError(f"{where}: label values are not integers")
    lo, hi = label.min(), label.max()
    if lo < 0 or hi > num_classes - 1:
        raise BenchError(f"{where}: label values {lo:g}..{hi:g} are outside 0..{num_classes - 1} "
                         f"(this dataset has {num_classes - 1} classes)")


def _check_image_dtype(dtype: np.dtype, where: str) -> None:
    if np.dtype(dtype).kind != "f":
        raise BenchError(f"{where}: image has dtype {dtype}, expected float (scaled to [0, 1])")


def check_slice(path: Path, num_classes: int) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            members = set(zf.namelist())
            for key in ("image", "label"):
                if f"{key}.npy" not in members:
                    raise BenchError(f"{path}: no '{key}' array (keys: {', '.join(sorted(m[:-4] for m in members))})")
            with zf.open("image.npy") as f:
                image = np.lib.format.read_array(f, allow_pickle=False)
            shape, dtype = image.shape, image.dtype
            with zf.open("label.npy") as f:
                label = np.lib.format.read_array(f, allow_pickle=False)
    except BenchError:
        raise
    except Exception as e:  # truncated zip, bad header...
        raise BenchError(f"{path}: unreadable training slice ({type(e).__name__}: {e})") from None
    if label.ndim != 2 or tuple(shape[:2]) != label.shape or 0 in shape or len(shape) not in (2, 3):
        raise BenchError(f"{path}: image {shape} and label {label.shape} must be equal 2D (H x W) arrays, not empty "
                         "(several channels: H x W x C)")
    _check_image_dtype(dtype, str(path))
    if not np.isfinite(image).all():
        raise BenchError(f"{path}: image has NaN or infinite values")
    _check_label(label, num_classes, str(path))


def check_volume(path: Path, num_classes: int) -> None:
    try:
        with h5py.File(path, "r") as f:
            for key in ("image", "label"):
                if key not in f:
                    raise BenchError(f"{path}: no '{key}' dataset (has: {', '.join(f.keys())})")
            image, label = f["image"], f["label"]
            if label.ndim != 3 or image.shape[:3] != label.shape or image.ndim not in (3, 4):
                raise BenchError(f"{path}: image {image.shape} and label {label.shape} must be equal "
                                 "3D (D x H x W) arrays (several channels: D x H x W x C)")
            if 0 in image.shape:
                raise BenchError(f"{path}: empty test volume ({'x'.join(map(str, image.shape))}): "
                                 "a case needs at least one slice")
            _check_image_dtype(image.dtype, str(path))
            for start in range(0, label.shape[0], 32):
                _check_label(label[start : start + 32], num_classes, str(path))
                bad = ~np.isfinite(image[start : start + 32]).all(axis=(1, 2))
                if bad.any():
                    raise BenchError(f"{path}: slice {start + int(np.argmax(bad))} of the image has NaN or "
                                     "infinite values")
            if "spacing" in f.attrs:
                sp = np.asarray(f.attrs["spacing"], np.float64)
                if sp.shape != (3,) or not np.all(sp > 0):
                    raise BenchError(f"{path}: attribute 'spacing' must be three positive numbers (z, y, x) mm")
            for key, n in (("origin", 3), ("direction", 9)):
                if key in f.attrs and np.asarray(f.attrs[key], np.float64).shape != (n,):
                    raise BenchError(f"{path}: attribute '{key}' must be {n} numbers")
    except BenchError:
        raise
    except Exception as e:
        raise BenchError(f"{path}: unreadable test volume ({type(e).__name__}: {e})") from None


def validate_layout(root: Path, num_classes: int, say=print) -> None:
    """Check a Synapse-layout folder; raises BenchError naming the first bad file."""

    root = Path(root)
    train, test = _listed(root)
    stamp = cache_dir() / "validated" / _stamp(root, train + test, num_classes)
    if stamp.exists():
        return
    if len(train) + len(test) > 200:
        say(f"checking {len(train)} training slices and {len(test)} test volumes in {root} (once) ...")
    for f in train:
        check_slice(f, num_classes)
    for f in test:
        check_volume(f, num_classes)
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    except OSError:
        pass  # a read-only cache only costs the check next time
