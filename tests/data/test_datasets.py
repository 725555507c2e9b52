"""Dataset forms: the official Synapse layout, 2D image folders, ACDC, and the split files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from helpers import bench_cli, read_only
from PIL import Image

from bench.data import acdc
from bench.data.organs import SYNAPSE_ORGANS
from bench.data.resolve import resolve_dataset
from bench.data.splits import read_splits, split_dataset, validation_view
from bench.data.synapse import case_of, load_volume
from bench.errors import BenchError

quiet = dict(say=lambda *_: None)


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


# --- the official Synapse layout: checked up front ----------------------------------------------

@pytest.fixture()
def official(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset (same layout as the official files) to break."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "Synapse"))


def test_synapse_adapter_reads_the_official_layout(official):
    ds = resolve_dataset("synapse", data_root=official, **quiet)
    assert ds.name == "synapse" and ds.organs == SYNAPSE_ORGANS and ds.test_cases == ["case0001"]
    with pytest.raises(BenchError) as e:
        resolve_dataset("synapse", **quiet)
    _one_line(e, "--dataset synapse needs --data-root DIR")
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(official), data_root=official, **quiet)
    _one_line(e, "--data-root is only used with --dataset synapse")


def _break(root: Path, kind: str) -> tuple[Path, str]:
    """Damage one file of a Synapse-layout folder; returns (the file, the expected message)."""
    npz = root / "train_npz" / "case0005_slice003.npz"
    h5 = root / "test_vol_h5" / "case0001.npy.h5"
    with np.load(npz) as f:
        image, label = f["image"], f["label"]
    if kind == "missing":
        npz.unlink()
        return npz, "listed in train.txt but missing"
    if kind == "key":
        np.savez(npz, image=image, mask=label)
        return npz, "no 'label' array"
    if kind == "label-range":
        label = label.copy()
        label[0, 0] = 9
        np.savez(npz, image=image, label=label)
        return npz, "label values 0..9 are outside 0..8"
    if kind == "shape":
        np.savez(npz, image=image, label=label[:-1])
        return npz, "must be equal 2D"
    if kind == "dtype":
        np.savez(npz, image=(image * 255).astype(np.uint8), label=label)
        return npz, "image has dtype uint8, expected float"
    if kind == "truncated":
        data = npz.read_bytes()
        npz.write_bytes(data[: len(data) // 2])
        return npz, "unreadable training slice"
    if kind == "volume-shape":
        with h5py.File(h5, "a") as f:
            lab = f["label"][:]
            del f["label"]
            f["label"] = lab[:, :-2]
        return h5, "must be equal 3D"
    if kind == "nan":
        image = image.copy()
        image[5, 7] = np.nan
        np.savez(npz, image=image, label=label)
        return npz, "image has NaN or infinite values"
    if kind == "volume-inf":  # would have become a background slice
        with h5py.File(h5, "a") as f:
            f["image"][7, 3, 3] = np.inf
        return h5, "slice 7 of the image has NaN or infinite values"
    if kind == "volume-empty":  # would have been a case scoring Dice 0 for every organ
        with h5py.File(h5, "a") as f:
            for key in ("image", "label"):
                empty = f[key][:0]
                del f[key]
                f[key] = empty
        return h5, "empty test volume (0x64x64)"
    if kind in ("list-traversal", "list-absolute", "list-unprintable"):
        name = {"list-traversal": "..", "list-absolute": "/tmp/x", "list-unprintable": "case\x1b[2J"}[kind]
        listed = root / "lists" / "lists_Synapse" / "test_vol.txt"
        listed.write_text(f"case0001\n\n{name}\n")
        return listed, f"test_vol.txt, line 3: case name {name!r}"
    raise ValueError(kind)


def test_a_bad_synapse_file_is_named_through_the_cli(official, tmp_path):
    bad, needle = _break(official, "label-range")
    res = bench_cli("run", "--models", "unet", "--dataset", "synapse", "--data-root", str(official),
                    "--results", str(tmp_path / "r"))
    assert res.returncode == 2
    assert str(bad) in res.stderr and needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("kind", ["missing", "key", "shape", "dtype", "truncated", "volume-shape", "nan", "volume-inf",
                                  "volume-empty", "list-traversal", "list-absolute", "list-unprintable"])
def test_each_bad_synapse_file_is_named(official, kind):
    resolve_dataset("synapse", data_root=official, **quiet)  # passes (and is remembered) ...
    bad, needle = _break(official, kind)
    with pytest.raises(BenchError) as e:  # ... until a file changes
        resolve_dataset("synapse", data_root=official, **quiet)
    _one_line(e, str(bad), needle)


def test_a_case_name_that_leaves_the_results_folder_is_refused_before_anything_is_written(official, tmp_path):
    (official / "lists" / "lists_Synapse" / "test_vol.txt").write_text("case0001\n../../escaped\n")
    shutil.copy(official / "test_vol_h5" / "case0001.npy.h5", tmp_path / "escaped.npy.h5")  # where it is read from
    res = bench_cli("run", "--models", "unet", "--protocol", "smoke", "--dataset", str(official),
                    "--results", str(tmp_path / "r" / "results"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{official / 'lists' / 'lists_Synapse' / 'test_vol.txt'}, line 2: case name '../../escaped' " \
        "contains a path separator" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not list(tmp_path.rglob("escaped.npz")) and not list(tmp_path.rglob("manifest.json"))


# --- 2D image folders -------------------------------------------------------------------------

def make_folder(root: Path, n: int = 6, size: int = 512, binary255: bool = True, ext: str = ".png") -> Path:
    """Gray images with one bright ellipse each, and its binary mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.08, 0.2, 2) * size
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img = np.clip(60 + 120 * m + rng.normal(0, 20, m.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"img{i:02d}{ext}")
        Image.fromarray((m * (255 if binary255 else 1)).astype(np.uint8)).save(root / "masks" / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    """`bench run --dataset PATH --models unet,swinunet` on a binary 512 x 512 PNG folder."""
    base = tmp_path_factory.mktemp("run2d")
    folder = make_folder(base / "scans")
    res = bench_cli("run", "--dataset", str(folder), "--models", "unet,swinunet", "--protocol", "smoke",
                    "--results", str(base / "results"), "--reports", str(base / "reports"), "--drop-weights")
    assert res.returncode == 0, res.stdout + res.stderr
    return base, folder, res


def test_a_2d_png_folder_trains_and_evaluates_with_two_models(run2d):
    base, folder, res = run2d
    split = json.loads((folder / "splits.json").read_text())
    assert len(split["train"]) == 5 and len(split["test"]) == 1
    for model in ("unet", "swinunet"):
        run = base / "results" / "scans" / "smoke" / model / "seed0"
        df = pd.read_parquet(run / "metrics.parquet")
        assert set(df["organ"]) == {"foreground"} and set(df["case"]) == set(split["test"])
        assert df.query("metric == 'dice'")["value"].between(0, 1).all()
        with np.load(run / "predictions" / f"{split['test'][0]}.npz") as f:
            assert f["pred"].shape == (1, 512, 512)  # evaluated at the native size
    assert "foreground" in res.stdout


def test_the_split_is_made_once_and_reused(run2d):
    base, folder, _ = run2d
    before = (folder / "splits.json").read_bytes()
    ds = resolve_dataset(str(folder), **quiet)
    assert (folder / "splits.json").read_bytes() == before
    assert sorted(case_of(s) for s in ds.train_slices) == json.loads(before)["train"]
    image, label, spacing = load_volume(ds, ds.test_cases[0])
    assert image.shape == (1, 512, 512) and set(np.unique(label)) == {0, 1} and spacing is None
    assert 0 <= image.min() and image.max() <= 1


def test_grayscale_rgb_tiff_multiclass_and_class_names(tmp_path):
    root = tmp_path / "mc"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        mask = np.zeros((40, 50), np.uint8)
        mask[5:15, 5:20], mask[20:30, 25:45] = 1, 2
        rgb = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
        if i % 2:
            Image.fromarray(rgb).save(root / "images" / f"s{i}.jpg")
        else:
            Image.fromarray((rng.random((40, 50)) * 4000).astype(np.uint16)).save(root / "images" / f"s{i}.tif")
        Image.fromarray(mask).save(root / "masks" / f"s{i}_mask.png")
    (root / "classes.txt").write_text("background\nkidney\ntumour\n")
    said: list[str] = []
    ds = resolve_dataset(str(root), say=said.append)
    assert ds.organs == {1: "kidney", 2: "tumour"} and ds.num_classes == 3
    # two colour JPEGs and two 16-bit gray TIFFs: a tie converts all to colour, said once
    assert ds.channels == 3 and sum("2 colour and 2 gray images" in s for s in said) == 1
    image, label, _ = load_volume(ds, ds.test_cases[0])
    assert image.shape == (1, 40, 50, 3) and set(np.unique(label)) == {0, 1, 2}
    (root / "classes.txt").unlink()
    assert resolve_dataset(str(root), **quiet).organs == {1: "class_1", 2: "class_2"}


def _bad_folder(tmp: Path, kind: str) -> tuple[Path, str]:
    root = make_folder(tmp / kind, n=3, size=32)
    mask = root / "masks" / "img01.png"
    if kind == "empty":
        for f in (root / "images").iterdir():
            f.unlink()
        return root / "images", "no images"
    if kind == "unpaired-image":
        mask.unlink()
        return root / "images" / "img01.png", "no mask"
    if kind == "unpaired-mask":
        (root / "images" / "img01.png").unlink()
        return mask, "no image with this name"
    if kind == "mask-values":
        Image.fromarray(np.full((32, 32), 128, np.uint8)).save(mask)
        return mask, "values [128]"
    if kind == "size":
        Image.fromarray(np.zeros((16, 32), np.uint8)).save(mask)
        return mask, "mask is 32 x 16, image is 32 x 32"
    if kind == "truncated":
        img = root / "images" / "img01.png"
        img.write_bytes(img.read_bytes()[:100])
        return img, "unreadable image"
    if kind == "constant":
        img = root / "images" / "img01.png"
        Image.fromarray(np.full((32, 32), 9, np.uint8)).save(img)
        return img, "image is constant"
    if kind == "jpeg-mask":
        mask.unlink()
        m = np.zeros((32, 32), np.uint8)
        m[5:19, 7:22] = 255  # not on the 8 x 8 JPEG blocks: edges ring
        Image.fromarray(m).save(root / "masks" / "img01.jpg", quality=50)
        return root / "masks" / "img01.jpg", "JPEG masks are lossy"
    raise ValueError(kind)


def test_an_unpaired_image_through_the_cli(tmp_path):
    bad, needle = _bad_folder(tmp_path, "unpaired-image")
    res = bench_cli("run", "--models", "unet", "--dataset", str(bad.parents[1]), "--results", str(tmp_path / "r"))
    assert res.returncode == 2 and str(bad) in res.stderr and needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("kind", ["empty", "unpaired-mask", "mask-values", "size", "truncated", "constant",
                                  "jpeg-mask"])
def test_each_bad_image_folder_is_named_and_nothing_is_converted(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    bad, needle = _bad_folder(tmp_path, kind)
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(tmp_path / kind), **quiet)
    _one_line(e, str(bad), needle)
    assert not list((tmp_path / "cache").glob("images2d/*"))
    assert not (tmp_path / kind / "splits.json").exists()


def test_a_split_file_that_no_longer_fits_is_refused(tmp_path):
    root = make_folder(tmp_path / "f", n=4, size=32)
    resolve_dataset(str(root), **quiet)
    (root / "images" / "img03.png").rename(root / "images" / "img09.png")
    (root / "masks" / "img03.png").rename(root / "masks" / "img09.png")
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(root), **quiet)
    _one_line(e, "splits.json", "img03", "delete splits.json to split again")


def test_a_read_only_folder_keeps_its_split_in_the_cache(tmp_path):
    root = make_folder(tmp_path / "ro", n=4, size=32)
    with read_only(root):  # really read-only (a read-only bind mount when running as root)
        ds = resolve_dataset(str(root), **quiet)
        assert not (root / "splits.json").exists()
        stored = read_splits(ds.root)
        assert stored is not None and sorted(stored["train"] + stored["test"]) == [f"img{i:02d}" for i in range(4)]
        assert resolve_dataset(str(root), **quiet).test_cases == ds.test_cases


# --- splits: folds and validation from training cases only --------------------------------------

def test_folds_partition_the_training_cases_and_never_touch_test(tmp_path):
    root = make_folder(tmp_path / "k", n=8, size=32)
    ds = resolve_dataset(str(root), **quiet)
    res = bench_cli("data", "split", str(root), "--folds", "3", "--seed", "1")
    assert res.returncode == 0, res.stderr
    doc = json.loads((root / "splits.json").read_text())
    train = {case_of(s) for s in ds.train_slices}
    vals = [set(f["val"]) for f in doc["folds"]]
    assert set().union(*vals) == train and sum(map(len, vals)) == len(train)
    for k in range(3):
        view = resolve_dataset(str(root), fold=k, **quiet)
        assert view.name == f"k-fold{k}" and set(view.test_cases) == vals[k]
        assert {case_of(s) for s in view.train_slices} == train - vals[k]
        assert not set(view.test_cases) & set(ds.test_cases)
        load_volume(view, view.test_cases[0])
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(root), fold=3, **quiet)
    _one_line(e, "--fold 3", "has 3 folds")
    with pytest.raises(BenchError) as e:
        split_dataset(ds, folds=9, val_fraction=None, seed=0)
    _one_line(e, "--folds 9")


def test_validation_subset_is_stored_and_drawn_from_training_cases(tiny_dataset, tmp_path):
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "tiny"))
    ds = resolve_dataset(str(root), **quiet)
    assert validation_view(ds).eval_split == "val"  # no stored subset: the seeded carve
    split_dataset(ds, folds=None, val_fraction=0.5, seed=0)
    view = validation_view(resolve_dataset(str(root), **quiet))
    assert view.test_cases == read_splits(root)["val"] and set(view.test_cases) <= {"case0005", "case0006"}
    assert not {case_of(s) for s in view.train_slices} & set(view.test_cases)
    image, label, _ = load_volume(view, view.test_cases[0])  # stacked from its training slices
    assert image.shape == label.shape and image.ndim == 3


# --- ACDC ---------------------------------------------------------------------------------------

def _fake_acdc(raw: Path) -> None:
    rng = np.random.default_rng(0)
    for p in acdc.ALL_PATIENTS:
        folder = raw / "training" / f"patient{p:03d}"
        folder.mkdir(parents=True)
        for frame in (1, 12):
            img = sitk.GetImageFromArray(rng.integers(0, 300, (2, 6, 6)).astype(np.int16))
            img.SetSpacing((1.5, 1.5, 10.0))
            lab = sitk.GetImageFromArray(rng.integers(0, 4, (2, 6, 6)).astype(np.uint8))
            lab.CopyInformation(img)
            sitk.WriteImage(img, str(folder / f"patient{p:03d}_frame{frame:02d}.nii.gz"))
            sitk.WriteImage(lab, str(folder / f"patient{p:03d}_frame{frame:02d}_gt.nii.gz"))


def test_prepare_acdc_stores_the_70_10_20_split(tmp_path):
    _fake_acdc(tmp_path / "raw")
    out = acdc.prepare_acdc(tmp_path / "raw", tmp_path / "ACDC", **quiet)
    ds = resolve_dataset(str(out), **quiet)
    assert ds.organs == {1: "RV", 2: "Myo", 3: "LV"}
    doc = read_splits(out)
    patients = {k: {c[:10] for c in doc[k]} for k in ("train", "val", "test")}
    assert [len(patients[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    assert sorted(ds.test_cases) == sorted(doc["test"]) and "patient001_frame12" in ds.test_cases
    assert {case_of(s) for s in ds.train_slices} == set(doc["train"])
    view = validation_view(ds)
    assert sorted(view.test_cases) == sorted(doc["val"]) and view.eval_split == "test"
    _, _, spacing = load_volume(view, view.test_cases[0])
    assert spacing == (10.0, 1.5, 1.5)
    shutil.rmtree(tmp_path / "raw" / "training" / "patient042")
    res = bench_cli("data", "prepare-acdc", str(tmp_path / "raw"), "--out", str(tmp_path / "again"))
    assert res.returncode == 2 and "patient042: missing" in res.stderr
    assert not (tmp_path / "again").exists()


def test_a_stray_mask_value_beyond_the_classes_is_refused_not_a_class(tmp_path, monkeypatch):
    """Masks of classes 0..3 with one value 200 (a stray pixel, a wrong export): refused, naming the mask,
    instead of training a 201-class dataset; classes.txt declaring 200 classes makes it valid."""
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "classids"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[2:10, 2:10], mask[12:20, 2:10], mask[4:28, 20:30] = 1, 2, 3
        if i == 2:
            mask[0, 0] = 200
        Image.fromarray((40 + 50 * mask % 200 + rng.integers(0, 20, mask.shape)).astype(np.uint8)).save(
            root / "images" / f"p{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(root), **quiet)
    _one_line(e, str(root / "masks" / "p2.png"), "mask value 200", "0..3", "classes.txt")
    assert not list((tmp_path / "cache").glob("images2d/*")) and not (root / "splits.json").exists()
    (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(1, 201)) + "\n")  # declared: a class
    assert resolve_dataset(str(root), **quiet).num_classes == 201
