"""Splits are files: ``splits.json`` next to the data, read by every model in a comparison.

Schema (case ids, never slice names)::

    {"seed": 0,
     "train": ["case0005", ...], "test": ["case0001", ...],
     "val": ["case0009", ...],                               # optional, disjoint from both
     "folds": [{"train": [...], "val": [...]}, ...]}         # optional, K-fold over "train"

Validation subsets and folds are drawn from the training cases only, never from test cases.
The file lives in the dataset folder, or in the cache when that folder is read-only (the
official data on a shared disk, say).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from bench.data import layout
from bench.data.layout import read_meta
from bench.data.names import check_case_name
from bench.data.synapse import Dataset, case_of, validation_split
from bench.errors import BenchError
from bench.files import atomic_text
from bench.paths import cache_dir

SPLITS = "splits.json"


def splits_path(root: Path) -> Path:
    """root/splits.json, or its stand-in in the cache when root is read-only.

    A converted dataset (a 2D image folder) names its split file in dataset.json, so the split
    stays with the user's folder rather than with the cached conversion.
    """

    root = Path(root).resolve()
    meta = read_meta(root)
    if meta and meta.get("splits_file"):
        return Path(meta["splits_file"])
    local = root / SPLITS
    alt = cache_dir() / "splits" / f"{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}.json"
    if local.exists() or not alt.exists() and os.access(root, os.W_OK):
        return local
    return alt


def read_splits(root: Path) -> dict | None:
    """The split file of a dataset folder, checked; None if it has none."""
    path = splits_path(root)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}: unreadable split file ({type(e).__name__}); delete it to split again") from None
    check_splits(doc, path)
    return doc


def check_splits(doc, path: Path) -> None:
    def ids(value, what: str) -> set[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BenchError(f"{path}: '{what}' must be a list of case ids")
        if len(set(value)) != len(value):
            raise BenchError(f"{path}: '{what}' lists a case twice")
        for name in value:
            check_case_name(name, f"{path}, '{what}'")
        return set(value)

    if not isinstance(doc, dict):
        raise BenchError(f"{path}: a split file is a JSON object with 'train' and 'test' lists")
    train, test = ids(doc.get("train"), "train"), ids(doc.get("test"), "test")
    if train & test:
        raise BenchError(f"{path}: case '{sorted(train & test)[0]}' is both a training and a test case")
    if "val" in doc:
        val = ids(doc["val"], "val")
        if val & (train | test):
            raise BenchError(f"{path}: validation case '{sorted(val & (train | test))[0]}' is also in train or test")
    seen: set[str] = set()
    for k, fold in enumerate(doc.get("folds", [])):
        if not isinstance(fold, dict):
            raise BenchError(f"{path}: fold {k} must be an object with 'train' and 'val'")
        f_train, f_val = ids(fold.get("train"), f"folds[{k}].train"), ids(fold.get("val"), f"folds[{k}].val")
        if f_val & seen or f_train | f_val != train or f_train & f_val:
            raise BenchError(f"{path}: fold {k} does not partition the training cases; "
                             "run `bench data split` again")
        seen |= f_val


def write_splits(root: Path, doc: dict) -> Path:
    path = splits_path(root)
    check_splits(doc, path)
    atomic_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def random_split(cases: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(kept, drawn): a seeded draw of round(fraction * n) cases, at least one, never all."""
    cases = sorted(cases)
    if len(cases) < 2:
        raise BenchError(f"need at least two cases to split, got {len(cases)}")
    n = min(len(cases) - 1, max(1, round(fraction * len(cases))))
    drawn = set(np.random.default_rng([seed, 7919]).choice(cases, size=n, replace=False).tolist())
    return [c for c in cases if c not in drawn], sorted(drawn)


def stored_split(root: Path, ids: list[str], where: Path, what: str = "case", fraction: float = 0.2, seed: int = 0,
                 say=print) -> dict:
    """The split file of a folder of cases (``ids``, found in ``where``), drawn (seeded, ``fraction`` to
    test) and written on first use; a stored one must list exactly these ids."""
    doc = read_splits(root)
    path = splits_path(root)
    if doc is None:
        train, test = random_split(ids, fraction, seed)
        doc = {"seed": seed, "train": train, "test": test}
        write_splits(root, doc)
        say(f"split {len(train)} training / {len(test)} test {what}s (seed {seed}) -> {path}")
        return doc
    listed = set(doc["train"]) | set(doc["test"]) | set(doc.get("val", []))
    if listed - set(ids):
        raise BenchError(f"{path}: lists '{sorted(listed - set(ids))[0]}', which is not in {where}; "
                         f"delete {SPLITS} to split again")
    if set(ids) - listed:
        raise BenchError(f"{path}: {what} '{sorted(set(ids) - listed)[0]}' is in no split; "
                         f"add it or delete {SPLITS} to split again")
    return doc


def make_folds(cases: list[str], k: int, seed: int) -> list[dict]:
    """K folds over the cases: a seeded permutation dealt round-robin."""
    cases = sorted(cases)
    if not 2 <= k <= len(cases):
        raise BenchError(f"--folds {k}: need 2 <= K <= the number of training cases ({len(cases)})")
    perm = np.random.default_rng([seed, 104729]).permutation(len(cases))
    vals = [sorted(cases[i] for i in perm[j::k]) for j in range(k)]
    return [{"train": [c for c in cases if c not in set(v)], "val": v} for v in vals]


def _train_cases(ds: Dataset) -> list[str]:
    return sorted({case_of(s) for s in ds.train_slices})


def matches(doc: dict, ds: Dataset) -> bool:
    """Was this split made for the dataset's current lists? (val may be carved from train.txt.)"""
    listed = set(_train_cases(ds))
    return (set(doc["train"]) <= listed <= set(doc["train"]) | set(doc.get("val", []))
            and sorted(doc["test"]) == sorted(ds.test_cases))


def split_dataset(ds: Dataset, folds: int | None, val_fraction: float | None, seed: int) -> Path:
    """``bench data split``: add K folds and/or a validation subset to the dataset's split file.

    A new validation subset is drawn from all training cases and replaces a stored one; folds
    are dealt over the training cases that are not validation cases.
    """
    if folds is None and val_fraction is None:
        raise BenchError("nothing to do: give --folds K and/or --val-fraction F")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise BenchError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    doc = read_splits(ds.root)
    if doc is None or not matches(doc, ds):
        doc = {"train": _train_cases(ds), "test": sorted(ds.test_cases)}
    doc["seed"] = seed
    if val_fraction is not None:
        doc["train"], doc["val"] = random_split(_train_cases(ds), val_fraction, seed)
    if folds is not None:
        doc["folds"] = make_folds(doc["train"], folds, seed)
    return write_splits(ds.root, doc)


def _view(ds: Dataset, name: str, train: set[str], val: list[str]) -> Dataset:
    slices = [s for s in ds.train_slices if case_of(s) in train]
    # volumes written next to the slices (every dataset made here has them) keep their spacing
    h5 = all(layout.files(ds.root).volume(c).exists() for c in val)
    if not h5 and not set(val) <= {case_of(s) for s in ds.train_slices}:
        raise BenchError(f"{ds.root}: validation cases have neither volumes nor listed slices")
    return Dataset(name=name, root=ds.root, train_slices=slices, test_cases=list(val),
                   organs=ds.organs, eval_split="test" if h5 else "val", channels=ds.channels)


def _stored(ds: Dataset) -> dict:
    doc = read_splits(ds.root)
    if doc is None:
        raise BenchError(f"{ds.root}: no split file; run `bench data split {ds.root} --folds K` first")
    if not matches(doc, ds):
        raise BenchError(f"{splits_path(ds.root)}: made for other training cases than "
                         f"{ds.root / 'lists'}; run `bench data split` again")
    return doc


def fold_view(ds: Dataset, k: int) -> Dataset:
    """Fold k of the stored K-fold split: train on the other folds, evaluate on this one."""
    folds = _stored(ds).get("folds", [])
    if not 0 <= k < len(folds):
        raise BenchError(f"--fold {k}: {splits_path(ds.root)} has {len(folds)} folds "
                         f"(valid: 0..{len(folds) - 1}); make them with `bench data split --folds K`")
    return _view(ds, f"{ds.name}-fold{k}", set(folds[k]["train"]), folds[k]["val"])


def validation_view(ds: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Train on the training cases, evaluate on the validation cases (for the learning-rate search).

    The stored ``val`` list when the split file has one (ACDC's ten patients, or
    ``bench data split --val-fraction``); otherwise a seeded draw of training cases.
    """
    doc = read_splits(ds.root)
    if doc is None or "val" not in doc:
        return validation_split(ds, fraction, seed)
    train = set(_train_cases(ds)) - set(doc["val"])
    return _view(ds, f"{ds.name}-val", train, doc["val"])
