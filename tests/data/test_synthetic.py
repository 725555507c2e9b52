"""The built-in synthetic abdomen: layout, determinism, atomic writes, and that intensity alone
cannot segment it (the window oracle), checked against the same oracle on a real CT."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SHARED

from bench.data.organs import SYNAPSE_ORGANS
from bench.data.synthetic import generate as synth
from bench.data.synthetic.phantom import FOV_MM

TOTALSEG = SHARED / "data" / "totalseg-example"
SMALL = dict(size=64, slice_mm=10.0, train_cases=("0005", "0006"), test_cases=("0001", "0002"))
ORGANS = sorted(SYNAPSE_ORGANS)


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _test_volumes(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for name in (root / "lists" / "lists_Synapse" / "test_vol.txt").read_text().split():
        with h5py.File(root / "test_vol_h5" / f"{name}.npy.h5", "r") as f:
            images.append(f["image"][()])
            labels.append(f["label"][()])
    return images, labels


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "small", seed=7, **SMALL)


@pytest.fixture(scope="module")
def default_test_set(tmp_path_factory) -> Path:
    """The default-sized test volumes (all 12 Synapse test cases), without the training slices."""
    return synth.generate(tmp_path_factory.mktemp("synth") / "default", seed=0, train_cases=())


def test_layout_keys_dtypes_and_ranges(small):
    lists = small / "lists" / "lists_Synapse"
    train = lists.joinpath("train.txt").read_text().splitlines()
    assert lists.joinpath("test_vol.txt").read_text().splitlines() == ["case0001", "case0002"]
    assert sorted(p.stem for p in (small / "train_npz").glob("*.npz")) == sorted(train)
    assert {n.split("_")[0] for n in train} == {"case0005", "case0006"}
    assert train[0] == "case0005_slice000"
    for name in train[::7]:
        with np.load(small / "train_npz" / f"{name}.npz") as z:
            assert sorted(z.files) == ["image", "label"]
            image, label = z["image"], z["label"]
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape == (64, 64)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert label.max() <= max(ORGANS)
    meta = json.loads((small / "synth.json").read_text())
    assert meta["version"] == synth.GENERATOR_VERSION and meta["seed"] == 7
    assert meta["num_train_slices"] == len(train)
    for case in ("0001", "0002"):
        with h5py.File(small / "test_vol_h5" / f"case{case}.npy.h5", "r") as f:
            image, label = f["image"][()], f["label"][()]
            spacing = tuple(f.attrs["spacing"])
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.ndim == 3 and image.shape == label.shape and image.shape[1:] == (64, 64)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert image.shape[0] == meta["cases"][case]["depth"]
        assert spacing == pytest.approx((10.0, FOV_MM / 64, FOV_MM / 64))  # (z, y, x) in mm
    # Training slices outnumber organ-free ones, as in the real data.
    with_organs = [np.load(small / "train_npz" / f"{n}.npz")["label"].any() for n in train]
    assert np.mean(with_organs) > 0.7


def test_cache_check(small):
    assert synth.is_current(small, seed=7, **SMALL)
    assert not synth.is_current(small, seed=8, **SMALL)
    assert not synth.is_current(small, seed=7, **{**SMALL, "size": 96})
    assert not synth.is_current(small.parent / "missing", seed=7, **SMALL)


def test_same_seed_same_bytes_other_seed_other_arrays(small, tmp_path):
    np.random.seed(123)  # global RNG state must not matter
    again = synth.generate(tmp_path / "again", seed=7, **SMALL)
    assert _digests(again) == _digests(small)
    other = synth.generate(tmp_path / "other", seed=8, **SMALL)
    a, b = _test_volumes(small), _test_volumes(other)
    for x, y in zip(a[0], b[0], strict=False):
        assert x.shape != y.shape or not np.array_equal(x, y)


def test_a_case_does_not_depend_on_the_other_cases(small, tmp_path):
    alone = synth.generate(tmp_path / "alone", seed=7, **{**SMALL, "train_cases": (),
                                                          "test_cases": ("0002",)})
    name = "test_vol_h5/case0002.npy.h5"
    assert _digests(alone)[name] == _digests(small)[name]


def test_interrupted_generation_leaves_nothing_behind(small, tmp_path, monkeypatch):
    target = tmp_path / "data"
    real, calls = synth.make_case, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "make_case", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(target, seed=7, **SMALL)
    assert list(tmp_path.iterdir()) == []
    # Replacing an existing dataset is atomic too: the old one survives a failed regeneration.
    monkeypatch.setattr(synth, "make_case", real)
    synth.generate(target, seed=7, **SMALL)
    before = _digests(target)
    calls.clear()
    monkeypatch.setattr(synth, "make_case", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(target, seed=9, **SMALL)
    assert _digests(target) == before and [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize("bad", [
    {"test_cases": ("0005",)},  # overlaps the training cases
    {"train_cases": ("5",)},
    {"size": 8},
    {"slice_mm": 0.0},
])
def test_bad_options_fail_before_writing(tmp_path, bad):
    with pytest.raises(ValueError):
        synth.generate(tmp_path / "x", seed=0, **{**SMALL, **bad})
    assert list(tmp_path.iterdir()) == []


def test_oracle_on_hand_made_volumes():
    image = np.array([[0.0, 0.5, 0.5, 1.0]], np.float32)
    label = np.array([[0, 1, 2, 2]], np.uint8)
    # Organ 1 shares its value with one voxel of organ 2: best window [0.5, 0.5] gives 2*1/(2+1).
    # Organ 2: [0.5, 1.0] gives 2*2/(3+2) = 0.8; [1.0, 1.0] gives 2*1/(1+2) = 0.667.
    got = synth.intensity_oracle_dice([image], [label], [1, 2, 3])
    assert got[1] == pytest.approx(2 / 3) and got[2] == pytest.approx(0.8)
    assert np.isnan(got[3])
    # Volumes are pooled into one Dice; a perfectly separable organ scores 1.
    assert synth.intensity_oracle_dice([image] * 2, [label] * 2, [1])[1] == pytest.approx(2 / 3)
    assert synth.intensity_oracle_dice([image], [image > 0.9], [1])[1] == 1.0


def test_every_organ_in_every_default_test_volume(default_test_set):
    meta = json.loads((default_test_set / "synth.json").read_text())
    assert meta["test_cases"] == list(synth.SYNAPSE_TEST_CASES)
    for label in _test_volumes(default_test_set)[1]:
        assert set(np.unique(label)) == {0, *ORGANS}


def test_intensity_alone_does_not_segment_the_default_test_set(default_test_set):
    dice = synth.intensity_oracle_dice(*_test_volumes(default_test_set), ORGANS)
    assert np.mean(list(dice.values())) <= 0.35, dice
    assert max(dice.values()) < 0.8, dice  # not even the liver


def test_intensity_alone_does_not_segment_the_real_ct_either():
    """Reference: the same oracle on real CT (TotalSegmentator example) scores about 0.16."""
    if not TOTALSEG.is_dir():
        pytest.skip(f"real CT example not found at {TOTALSEG} (the ../shared folder is absent)")
    nib = pytest.importorskip("nibabel", reason="nibabel reads the NIfTI example")
    ct = np.asarray(nib.load(TOTALSEG / "ct.nii.gz").dataobj, np.float32)
    seg = np.asarray(nib.load(TOTALSEG / "seg-total.nii.gz").dataobj)
    to_synapse = {52: 1, 4: 2, 3: 3, 2: 4, 5: 5, 7: 6, 1: 7, 6: 8}  # README of the example
    label = np.zeros(seg.shape, np.uint8)
    for total_id, synapse_id in to_synapse.items():
        label[seg == total_id] = synapse_id
    dice = synth.intensity_oracle_dice([synth.window(ct)], [label], ORGANS)
    assert 0.10 <= np.mean(list(dice.values())) <= 0.22, dice  # measured 0.161
