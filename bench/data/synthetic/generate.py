"""Built-in synthetic abdomen dataset, written in the official Synapse preprocessed layout.

Why: the benchmark must run end to end on a CPU without the (registration-only) BTCV data, and the
data must still need what the real task needs: organ intensities overlap, so a model has to learn
position, shape and texture (`intensity_oracle_dice` measures how far plain windowing gets).
The phantom itself is drawn by `bench.data.synthetic.phantom`; this module names the cases, windows the HU
values exactly as the official preprocessing does, and writes the folder:

    <out_dir>/train_npz/case0005_slice000.npz     image float32 H x W in [0, 1], label uint8 H x W
    <out_dir>/test_vol_h5/case0001.npy.h5         datasets image, label (D x H x W); attr spacing
    <out_dir>/lists/lists_Synapse/train.txt       one slice name per line, no extension
    <out_dir>/lists/lists_Synapse/test_vol.txt    one case name per line
    <out_dir>/synth.json                          generator version, seed, options, case geometry

Each case is drawn from its own Generator seeded by (seed, case number), so the arrays depend only
on the seed, the options and the generator version, never on global RNG state or on which other
cases are generated. Files are byte-identical across runs on one platform and set of library
versions (fixed zip timestamps, no HDF5 times); `synth.json` is what a cache should compare.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from bench.data import layout
from bench.data.synthetic.phantom import make_case

GENERATOR_VERSION = 1  # bump whenever the generated arrays change
HU_WINDOW = (-125.0, 275.0)  # the official preprocessing: clip, then scale to [0, 1]
SYNAPSE_TRAIN_CASES = ("0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026",
                       "0027", "0028", "0030", "0031", "0033", "0034", "0037", "0039", "0040")
SYNAPSE_TEST_CASES = ("0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032",
                      "0035", "0036", "0038")
MANIFEST = "synth.json"


def manifest(seed: int = 0, *, size: int = 160, slice_mm: float = 5.0,
             train_cases: Sequence[str] = SYNAPSE_TRAIN_CASES,
             test_cases: Sequence[str] = SYNAPSE_TEST_CASES) -> dict:
    """What identifies a generated dataset: equal manifests mean identical arrays.

    Validates the options, so `generate` fails before writing anything.
    """
    train, test = [str(c) for c in train_cases], [str(c) for c in test_cases]
    for c in train + test:
        if not (len(c) == 4 and c.isdigit()):
            raise ValueError(f"case ids are four digits like '0005', got {c!r}")
    if len(set(train)) != len(train) or len(set(test)) != len(test) or set(train) & set(test):
        raise ValueError("case ids must be unique and the training and test cases disjoint")
    if not 32 <= int(size) <= 1024 or not 0.5 <= float(slice_mm) <= 50:
        raise ValueError(f"need 32 <= size <= 1024 and 0.5 <= slice_mm <= 50, got {size}, {slice_mm}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return {"generator": "bench.synth", "version": GENERATOR_VERSION, "seed": int(seed),
            "options": {"size": int(size), "slice_mm": float(slice_mm)},
            "train_cases": train, "test_cases": test}


def is_current(out_dir: Path, seed: int = 0, **options) -> bool:
    """True when out_dir holds a finished dataset generated with exactly these settings."""
    return manifest_matches(out_dir, manifest(seed, **options))


def manifest_matches(out_dir: Path, want: dict) -> bool:
    """True when out_dir/synth.json has every key of ``want`` with the same value (a finished dataset)."""
    try:
        found = json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and {k: found.get(k) for k in want} == want


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The Generator of one case, derived from the dataset seed and the case number only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(case_id)]))


def window(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] float32 exactly as the official Synapse preprocessing."""
    lo, hi = HU_WINDOW
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def generate(out_dir: Path, seed: int = 0, **options) -> Path:
    """Write the synthetic dataset to out_dir (replacing what is there) and return out_dir.

    Options: size (in-plane pixels; default 160, i.e. 2.375 mm over the 380 mm field of view),
    slice_mm (default 5.0, giving 46-57 slices per case as the scanned range varies), train_cases
    and test_cases (the Synapse ids by default; pass fewer for quick tests). The folder is built
    next to out_dir and renamed into place at the end, so an interrupted run never leaves a
    half-written dataset under out_dir.
    """
    meta = manifest(seed, **options)
    size, slice_mm = meta["options"]["size"], meta["options"]["slice_mm"]
    with staged(out_dir) as tmp:
        where = layout.files(tmp)
        for d in (where.slice_dir, where.volume_dir, where.list_dir):
            d.mkdir(parents=True)
        cases, train_names = {}, []
        for cid in meta["train_cases"]:
            case = make_case(case_rng(seed, cid), size, slice_mm)
            image = window(case.hu)
            for k in range(image.shape[0]):
                name = f"case{cid}_slice{k:03d}"
                _save_npz(where.slice(name), image=image[k], label=case.label[k])
                train_names.append(name)
            cases[cid] = _geometry(case)
        for cid in meta["test_cases"]:
            case = make_case(case_rng(seed, cid), size, slice_mm)
            with h5py.File(where.volume(f"case{cid}"), "w", track_order=False) as f:
                f.create_dataset("image", data=window(case.hu), track_times=False)
                f.create_dataset("label", data=case.label, track_times=False)
                f.attrs["spacing"] = np.asarray(case.spacing, np.float64)
            cases[cid] = _geometry(case)
        _write_lines(where.train_list, train_names)
        _write_lines(where.test_list, [f"case{c}" for c in meta["test_cases"]])
        meta["cases"] = cases
        meta["num_train_slices"] = len(train_names)
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")
    return Path(out_dir)


def intensity_oracle_dice(images: Iterable[np.ndarray], labels: Iterable[np.ndarray],
                          organ_ids: Iterable[int], levels: int = 401) -> dict[int, float]:
    """Best Dice a single intensity window per organ can reach, choosing it with the labels.

    For each organ: max over windows [lo, hi] of Dice((lo <= I <= hi), organ), all voxels of all
    volumes pooled into one Dice. An upper bound for any per-organ thresholding rule, so a low
    value means the organs cannot be told apart by intensity alone. Method: intensities in [0, 1]
    (windowed CT) are rounded to `levels` equal steps; the default 401 is one HU step of the
    [-125, 275] window, which makes the search exact for integer-HU data. Every window between
    two steps is scored from cumulative histograms (O(levels^2) per organ). Organs absent from
    every label map give NaN.
    """
    organ_ids = [int(o) for o in organ_ids]
    n_lab = max(organ_ids, default=0) + 1
    hist = np.zeros((levels, n_lab), np.int64)  # voxels per intensity step and label
    for img, lab in zip(images, labels, strict=True):
        q = np.rint(np.clip(np.asarray(img, np.float64), 0, 1) * (levels - 1)).astype(np.int64)
        lab = np.asarray(lab).astype(np.int64)
        lab = np.where((lab >= 0) & (lab < n_lab), lab, 0)  # other labels only count as "not it"
        hist += np.bincount((q * n_lab + lab).ravel(), minlength=levels * n_lab).reshape(levels, n_lab)
    total = np.r_[0, np.cumsum(hist.sum(1))]
    upper = np.triu(np.ones((levels, levels), bool))  # window [i, j] needs i <= j
    out = {}
    for o in organ_ids:
        cum = np.r_[0, np.cumsum(hist[:, o])]
        if cum[-1] == 0:
            out[o] = float("nan")
            continue
        tp = cum[None, 1:] - cum[:-1, None]  # organ voxels in [i, j]
        pred = total[None, 1:] - total[:-1, None]  # all voxels in [i, j]
        with np.errstate(divide="ignore", invalid="ignore"):  # i > j cells are masked anyway
            out[o] = float(np.max(np.where(upper, 2 * tp / (pred + cum[-1]), 0.0)))
    return out


def _geometry(case) -> dict:
    return {"depth": int(case.label.shape[0]), "spacing": list(case.spacing)}


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez without the wall-clock timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


@contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A fresh sibling folder to build a dataset in, renamed to out_dir when the block succeeds.

    An existing out_dir is moved aside, then deleted, so an interrupted or failed build never
    leaves a half-written dataset there (and the old one survives it); the staging folder is
    removed on any error.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an existing dataset is moved aside, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
