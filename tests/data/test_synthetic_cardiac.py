"""The built-in synthetic cardiac MR: ACDC's layout and split, the cache check, determinism, atomic
writes, `--dataset synthetic-cardiac`, and that intensity alone cannot segment it (the window oracle)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from bench.data.acdc import ACDC
from bench.data.layout import read_meta
from bench.data.splits import read_splits
from bench.data.synthetic import cardiac
from bench.data.synthetic.generate import intensity_oracle_dice

SMALL = dict(size=64, patients=5)  # patients 1, 2, 4 train; 3 test; 5 validation


def _volumes(root: Path, cases: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for name in cases:
        with h5py.File(root / "test_vol_h5" / f"{name}.npy.h5", "r") as f:
            images.append(f["image"][()])
            labels.append(f["label"][()])
    return images, labels


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return cardiac.generate(tmp_path_factory.mktemp("cardiac") / "small", seed=3, **SMALL)


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> tuple[Path, float]:
    """`--dataset synthetic-cardiac` as a user gets it: generated into the cache on first use; and the time taken."""
    from bench.data.resolve import resolve_dataset

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SEGBENCH_CACHE", str(cache))
    try:
        start = time.perf_counter()
        ds = resolve_dataset("synthetic-cardiac", say=lambda *a, **k: None)
        seconds = time.perf_counter() - start
        said: list[str] = []
        again = resolve_dataset("synthetic-cardiac", say=said.append)
    finally:
        mp.undo()
    assert said == [] and again == ds  # the cached copy is current: not generated twice
    assert (ds.name, ds.organs, ds.root) == ("synthetic-cardiac", ACDC.organs, cache / "synthetic-cardiac-seed0")
    return ds.root, seconds


def test_acdc_layout_classes_and_split(small):
    meta = read_meta(small)
    assert meta is not None and meta["organs"] == {1: "RV", 2: "Myo", 3: "LV"} == ACDC.organs
    split = read_splits(small)
    assert split is not None
    patients = {s: sorted({c.split("_")[0] for c in split[s]}) for s in ("train", "val", "test")}
    assert patients == {"train": ["patient001", "patient002", "patient004"], "val": ["patient005"],
                        "test": ["patient003"]}
    for cases in split.values():
        if isinstance(cases, list):  # two frames per patient, end-diastole first, as in ACDC
            assert all(c.split("_")[1].startswith("frame") for c in cases) and len(cases) % 2 == 0
    lists = small / "lists" / "lists_Synapse"
    assert lists.joinpath("test_vol.txt").read_text().split() == split["test"]
    train = lists.joinpath("train.txt").read_text().split()
    assert {t.rsplit("_slice", 1)[0] for t in train} == set(split["train"])  # validation: in neither list
    for name in train[::5]:
        with np.load(small / "train_npz" / f"{name}.npz") as z:
            image, label = z["image"], z["label"]
        assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape == (64, 64)
        assert 0.0 <= image.min() and image.max() <= 1.0 and label.max() <= 3
    images, labels = _volumes(small, split["test"] + split["val"])
    for image, label in zip(images, labels, strict=True):
        assert image.ndim == 3 and image.shape == label.shape and 5 <= image.shape[0] <= 20
        assert image.min() == 0.0 and image.max() == 1.0  # min-max per volume, as prepare-acdc scales MR
        assert set(np.unique(label)) == {0, 1, 2, 3}
    with h5py.File(small / "test_vol_h5" / f"{split['test'][0]}.npy.h5", "r") as f:
        dz, dy, dx = f.attrs["spacing"]
    assert 6.5 <= dz <= 10 and dy == dx and 300 / 64 <= dx <= 380 / 64


def test_cache_check(small):
    assert cardiac.is_current(small, seed=3, **SMALL)
    assert not cardiac.is_current(small, seed=4, **SMALL)
    assert not cardiac.is_current(small, seed=3, **{**SMALL, "size": 96})
    assert not cardiac.is_current(small.parent / "missing", seed=3, **SMALL)


def test_same_seed_same_arrays_other_seed_other_arrays(small, tmp_path):
    np.random.seed(123)  # global RNG state must not matter
    cases = read_splits(small)["test"]
    again = cardiac.generate(tmp_path / "again", seed=3, **SMALL)
    for x, y in zip(*(_volumes(r, cases) for r in (small, again)), strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(x, y, strict=True))
    other = cardiac.generate(tmp_path / "other", seed=4, **SMALL)
    for a, b in zip(_volumes(small, cases)[0], _volumes(other, read_splits(other)["test"])[0], strict=True):
        assert a.shape != b.shape or not np.array_equal(a, b)


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    real, calls = cardiac.make_patient, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cardiac, "make_patient", failing)
    with pytest.raises(KeyboardInterrupt):
        cardiac.generate(tmp_path / "data", seed=0, **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [{"size": 8}, {"patients": 2}, {"seed": -1}])
def test_bad_options_fail_before_writing(tmp_path, bad):
    with pytest.raises(ValueError):
        cardiac.generate(tmp_path / "x", **{"seed": 0, **SMALL, **bad})
    assert list(tmp_path.iterdir()) == []


def test_default_dataset_is_acdc_sized_and_quick(default):
    root, seconds = default
    split = read_splits(root)
    assert [len(split[s]) for s in ("train", "val", "test")] == [42, 6, 12]  # 21 / 3 / 6 patients, 2 frames
    meta = json.loads((root / "synth.json").read_text())
    assert {cardiac.group_of(int(c[7:10]), 30) for c in split["test"]} == set(cardiac.GROUPS)
    assert meta["version"] == cardiac.GENERATOR_VERSION and len(meta["cases"]) == 60
    assert seconds < 120, seconds  # seconds, not minutes, even on a loaded 2-core machine


def test_intensity_alone_does_not_segment_the_default_test_set(default):
    root, _ = default
    images, labels = _volumes(root, read_splits(root)["test"])
    for label in labels:
        assert set(np.unique(label)) == {0, 1, 2, 3}  # every class in every test volume
    dice = intensity_oracle_dice(images, labels, sorted(ACDC.organs))
    assert np.mean(list(dice.values())) <= 0.35, dice
    assert max(dice.values()) < 0.5, dice
