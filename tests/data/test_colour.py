"""Colour 2D folders: the channel count of a folder, the majority rule for mixed folders, and
colour slices through sampling (H x W x 3 on disk, 3 x S x S to the model)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bench.data.layout import read_meta
from bench.data.resolve import resolve_dataset
from bench.data.sampling import TrainSlices, resize_pair
from bench.data.synapse import load_slice, load_volume


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))


def _folder(root: Path, kinds: list[str], size=(20, 24)) -> Path:
    """One image per kind: 'rgb' (colour content), 'gray' (mode L) or 'grayrgb' (gray saved as RGB)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    h, w = size
    for i, kind in enumerate(kinds):
        mask = np.zeros(size, np.uint8)
        mask[4:12, 5:15] = 1
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if kind == "gray":
            Image.fromarray(rgb[..., 0]).save(root / "images" / f"i{i}.png")
        elif kind == "grayrgb":
            Image.fromarray(np.repeat(rgb[..., :1], 3, axis=2)).save(root / "images" / f"i{i}.png")
        else:
            Image.fromarray(rgb).save(root / "images" / f"i{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"i{i}.png")
    return root


def test_a_colour_folder_keeps_three_channels_and_says_nothing(tmp_path):
    root = _folder(tmp_path / "c", ["rgb", "rgb", "rgb"])
    said: list[str] = []
    ds = resolve_dataset(str(root), say=said.append)
    assert ds.channels == 3 and read_meta(ds.root)["channels"] == 3
    assert not any("gray" in s for s in said)
    image, label = load_slice(ds, ds.train_slices[0])
    cid = ds.train_slices[0].rsplit("_slice", 1)[0]
    source = np.asarray(Image.open(root / "images" / f"{cid}.png"), np.float32) / 255
    assert image.shape == (20, 24, 3) and np.array_equal(image, source)  # the channels as they were
    x, y = TrainSlices(ds, 16, None, seed=0)[(0, 0)]
    assert tuple(x.shape) == (3, 16, 16) and tuple(y.shape) == (16, 16)
    for c in range(3):  # each channel resized on its own, in its own plane
        expected = ndimage.zoom(image[..., c], (16 / 20, 16 / 24), order=3)
        np.testing.assert_allclose(x[c].numpy(), expected, rtol=0, atol=1e-6)
    gray = resolve_dataset(str(_folder(tmp_path / "g", ["gray", "gray", "gray"])), say=said.append)
    # same case lists, other channels: runs on the two never look alike
    assert gray.channels == 1 and gray.train_slices == ds.train_slices and gray.fingerprint() != ds.fingerprint()


def test_a_mixed_folder_goes_to_the_majority_once(tmp_path):
    root = _folder(tmp_path / "m", ["gray", "gray", "grayrgb", "rgb"])
    said: list[str] = []
    ds = resolve_dataset(str(root), say=said.append)
    # a gray scan saved as RGB counts as gray: three gray, one colour -> gray, said once
    assert ds.channels == 1
    assert sum("1 colour and 3 gray images; converting all to gray (1 channel), the majority" in s
               for s in said) == 1
    rgb = np.asarray(Image.open(root / "images" / "i3.png"), np.float32)
    cases = {c: load_volume(ds, c)[0] for c in ds.test_cases} | {
        s.rsplit("_slice", 1)[0]: load_slice(ds, s)[0][None] for s in ds.train_slices}
    np.testing.assert_allclose(cases["i3"][0], rgb @ np.array([0.299, 0.587, 0.114], np.float32) / 255, atol=1e-6)
    said.clear()
    assert resolve_dataset(str(root), say=said.append).channels == 1 and not any("colour" in s for s in said)
    assert json.loads((ds.root / "dataset.json").read_text())["mask_values"] == "class ids"


def test_resize_pair_keeps_a_gray_slice_as_before():
    rng = np.random.default_rng(1)
    image, label = rng.random((30, 40)).astype(np.float32), rng.integers(0, 3, (30, 40))
    out, lab = resize_pair(image, label, 16)
    np.testing.assert_array_equal(out, ndimage.zoom(image, (16 / 30, 16 / 40), order=3).astype(np.float32))
    np.testing.assert_array_equal(lab, ndimage.zoom(label, (16 / 30, 16 / 40), order=0))
