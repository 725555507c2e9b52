"""nnU-Net v2 raw datasets: read as ``--dataset PATH`` (bench.data.nnunet), and ours written in that
format and read back (bench.data.nnunet_export). No nnunetv2 needed: these read and write files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import SHARED
from PIL import Image

from bench.data import nnunet_raw
from bench.data.ct_import import import_case
from bench.data.labelmaps import TOTALSEGMENTATOR
from bench.data.nnunet_export import case_arrays
from bench.data.preprocessing import describe
from bench.data.resolve import resolve_dataset
from bench.data.splits import read_splits
from bench.data.synapse import Dataset, case_of, load_volume, volume_grid
from bench.engine.validation import held_out_view
from bench.errors import BenchError
from bench.experiments.nnunet import export_nnunet
from bench.protocol import load_protocol

quiet = dict(say=lambda *_: None)
CT = SHARED / "data" / "totalseg-example"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))


def _one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def _disc(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(10, size - 10, 2)
    label = (((yy - cy) ** 2 + (xx - cx) ** 2) < 36).astype(np.uint8)
    label[2:5, 2:8] = 2 if seed % 2 else 0
    image = (40 + 150 * (label == 1) + 60 * (label == 2) + rng.integers(0, 30, (size, size))).astype(np.uint8)
    return image, label


def make_2d(root: Path, train: int = 4, test: int = 2, **doc) -> Path:
    """A gray 2D nnU-Net dataset: disc (1) and bar (2) on noise, PNG."""
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(train + test):
        image, label = _disc(i)
        split = "Tr" if i < train else "Ts"
        Image.fromarray(image).save(root / f"images{split}" / f"la_{i:03d}_0000.png")
        Image.fromarray(label).save(root / f"labels{split}" / f"la_{i:03d}.png")
    desc = {"channel_names": {"0": "microscopy"}, "labels": {"background": 0, "disc": 1, "bar": 2},
            "numTraining": train, "file_ending": ".png", **doc}
    (root / "dataset.json").write_text(json.dumps(desc))
    return root


def _volume(array: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def make_mr(root: Path, cases: int = 3) -> Path:
    """Two MR channels per case on an oblique-free but RAS-stored grid, 2 classes, no labelsTs."""
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    grid = dict(spacing=(1.5, 1.25, 4.0), origin=(10.0, -20.0, 30.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    for i in range(cases):
        rng = np.random.default_rng(i)
        label = np.zeros((5, 24, 20), np.uint8)
        label[1:4, 5:15, 4:12] = 1
        label[2, 16:20, 10:16] = 2
        for c, scale in enumerate((300.0, 1200.0)):
            image = (scale * (label + 1) + rng.normal(0, 10, label.shape)).astype(np.float32)
            sitk.WriteImage(_volume(image, **grid), str(root / "imagesTr" / f"mr_{i}_{c:04d}.nii.gz"))
        sitk.WriteImage(_volume(label, **grid), str(root / "labelsTr" / f"mr_{i}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "numTraining": cases,
                                                   "labels": {"background": 0, "edema": 1, "core": 2},
                                                   "file_ending": ".nii.gz"}))
    return root


# --- reading ------------------------------------------------------------------------------------

def test_a_2d_dataset_reads_with_its_classes_voxels_and_labelsTs_as_test(tmp_path):
    root = make_2d(tmp_path / "Dataset011_Discs")
    ds = resolve_dataset(str(root), **quiet)
    assert ds.name == "Dataset011_Discs" and ds.organs == {1: "disc", 2: "bar"} and ds.channels == 1
    assert ds.test_cases == ["la_004", "la_005"]
    assert sorted({case_of(s) for s in ds.train_slices}) == ["la_000", "la_001", "la_002", "la_003"]
    image, label, spacing = load_volume(ds, "la_005")
    raw_image, raw_label = _disc(5)
    assert spacing is None and np.array_equal(label[0], raw_label)
    assert np.array_equal(image[0], raw_image.astype(np.float32) / 255)
    assert describe(ds).kind == "image2d"
    meta = json.loads((ds.root / "dataset.json").read_text())
    assert meta["organs"] and meta["source"]["kind"] == "nnunet"  # the converted folder is ours, never nnU-Net's


def test_conversion_happens_once_and_again_when_a_file_changes(tmp_path):
    root = make_2d(tmp_path / "Dataset011_Discs")
    said: list[str] = []
    first = resolve_dataset(str(root), say=said.append).root
    assert resolve_dataset(str(root), say=said.append).root == first
    assert sum("converting" in s for s in said) == 1
    image, _ = _disc(9)
    Image.fromarray(image).save(root / "imagesTr" / "la_000_0000.png")
    assert resolve_dataset(str(root), say=said.append).root != first


def test_ct_reads_as_bench_data_import_keeps_it_with_nnunets_window(tmp_path):
    if not (CT / "ct.nii.gz").is_file():
        pytest.skip(f"real CT example not found at {CT}")
    root = tmp_path / "Dataset012_CT"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    ct = sitk.ReadImage(str(CT / "ct.nii.gz"))
    cases = (("ct_a", "seg-total", "Tr"), ("ct_b", "seg-total-fast", "Tr"), ("ct_c", "seg-total", "Ts"))
    for name, seg, split in cases:
        shutil.copy(CT / "ct.nii.gz", root / f"images{split}" / f"{name}_0000.nii.gz")
        raw = sitk.ReadImage(str(CT / f"{seg}.nii.gz"))
        label = sitk.GetImageFromArray(TOTALSEGMENTATOR.apply(sitk.GetArrayFromImage(raw), seg))
        label.CopyInformation(raw)
        sitk.WriteImage(label, str(root / f"labels{split}" / f"{name}.nii.gz"))
    names = {"background": 0, **{v: k for k, v in TOTALSEGMENTATOR.organs.items()}}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": names, "numTraining": 2,
                                                   "file_ending": ".nii.gz"}))
    ds = resolve_dataset(str(root), **quiet)
    prep = describe(ds)
    # nnU-Net's CT bounds: percentiles 0.5 / 99.5 of the labelled voxels of the training cases
    fg = np.concatenate([sitk.GetArrayFromImage(ct)[sitk.GetArrayFromImage(sitk.ReadImage(str(
        root / "labelsTr" / f"{c}.nii.gz"))) > 0] for c in ("ct_a", "ct_b")])
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert prep.kind == "volume" and prep.orient and prep.window == pytest.approx((lo, hi))
    imported = tmp_path / "imported"
    import_case(CT / "ct.nii.gz", CT / "seg-total.nii.gz", TOTALSEGMENTATOR, "case0001", imported, prep.window, "test")
    ref = Dataset("imported", imported, [], ["case0001"], TOTALSEGMENTATOR.organs)
    ours, theirs = load_volume(ds, "ct_c"), load_volume(ref, "case0001")
    assert np.array_equal(ours[1], theirs[1]) and np.array_equal(ours[0], theirs[0]) and ours[2] == theirs[2]
    assert volume_grid(ds, "ct_c") == volume_grid(ref, "case0001")  # spacing, origin, direction after LPS


def test_several_mr_channels_become_input_channels_min_max_each(tmp_path):
    root = make_mr(tmp_path / "Dataset013_MR")
    ds = resolve_dataset(str(root), **quiet)
    doc = read_splits(root)  # no labelsTs: a seeded split, written once beside the data
    assert doc is not None and ds.test_cases == doc["test"] and len(doc["test"]) == 1
    image, label, spacing = load_volume(ds, ds.test_cases[0])
    assert image.shape == (5, 24, 20, 2) and ds.channels == 2 and spacing == (4.0, 1.25, 1.5)
    for c in range(2):
        assert image[..., c].min() == 0 and image[..., c].max() == 1
    grid = volume_grid(ds, ds.test_cases[0])
    assert grid["origin"] == (10.0, -20.0, 30.0) and grid["direction"] == (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # as stored
    prep = describe(ds)
    assert prep.window is None and not prep.orient and "one-channel volumes" in prep.problem


def test_an_rgb_2d_dataset_has_three_channels_from_one_file(tmp_path):
    root = make_2d(tmp_path / "Dataset014_RGB", channel_names={"0": "R", "1": "G", "2": "B"})
    for f in (root / "imagesTr").glob("*.png"):
        gray = np.asarray(Image.open(f))
        Image.fromarray(np.stack([gray, 255 - gray, gray // 2], axis=2)).save(f)
    for f in (root / "imagesTs").glob("*.png"):
        f.unlink()
    shutil.rmtree(root / "labelsTs")
    ds = resolve_dataset(str(root), **quiet)
    assert ds.channels == 3 and describe(ds).channels == 3
    image, _, _ = load_volume(ds, ds.test_cases[0])
    assert image.shape == (1, 32, 32, 3)


def test_splits_final_json_folds_and_a_declared_split_decide_the_test_cases(tmp_path):
    root = make_2d(tmp_path / "Dataset015_Folds", train=5, test=0)
    shutil.rmtree(root / "labelsTs")
    folds = [{"train": ["la_000", "la_001", "la_002"], "val": ["la_003", "la_004"]},
             {"train": ["la_002", "la_003", "la_004"], "val": ["la_000", "la_001"]}]
    (root / nnunet_raw.NNUNET_SPLITS).write_text(json.dumps(folds))
    ds = resolve_dataset(str(root), fold=1, **quiet)
    assert ds.name.endswith("-fold1") and ds.test_cases == ["la_000", "la_001"]
    assert sorted({case_of(s) for s in ds.train_slices}) == ["la_002", "la_003", "la_004"]
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(root), **quiet)
    _one_line(e, "no labelsTs/", "give --fold K")
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(root), fold=2, **quiet)
    _one_line(e, "--fold 2", "2 fold(s)")
    folds[0]["val"].append("la_009")
    (root / nnunet_raw.NNUNET_SPLITS).write_text(json.dumps(folds))
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(root), fold=0, **quiet)
    _one_line(e, "fold 0 lists 'la_009'")


def _break(root: Path, kind: str) -> str:
    doc = json.loads((root / "dataset.json").read_text())
    if kind == "regions":
        doc["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
        doc["regions_class_order"] = [1, 2]
        needle = "region labels"
    elif kind == "ignore":
        doc["labels"]["ignore"] = 3
        needle = "'ignore' label"
    elif kind == "numTraining":
        doc["numTraining"] = 9
        needle = "numTraining is 9, labelsTr holds 4"
    elif kind == "gap":
        doc["labels"] = {"background": 0, "disc": 1, "bar": 3}
        needle = "consecutive"
    elif kind == "ending":
        doc["file_ending"] = ".jpg"
        needle = "file_ending '.jpg'"
    elif kind == "no-label":
        (root / "labelsTr" / "la_001.png").unlink()
        doc["numTraining"] = 3
        needle = "no label for 1 training case(s): la_001"
    elif kind == "channel-name":
        (root / "imagesTr" / "la_001_0000.png").rename(root / "imagesTr" / "la_001.png")
        needle = "la_001.png: not named <case>_<XXXX>.png"
    elif kind == "slice":
        for sub, suffix in (("imagesTr", "_0000.png"), ("labelsTr", ".png")):
            (root / sub / f"la_001{suffix}").rename(root / sub / f"la_slice1{suffix}")
        needle = "contains '_slice'"
    elif kind == "label-value":
        Image.fromarray(np.full((32, 32), 5, np.uint8)).save(root / "labelsTr" / "la_002.png")
        needle = "la_002.png: label values 5"
    else:
        raise ValueError(kind)
    (root / "dataset.json").write_text(json.dumps(doc))
    return needle


@pytest.mark.parametrize("kind", ["regions", "ignore", "numTraining", "gap", "ending", "no-label", "channel-name",
                                  "slice", "label-value"])
def test_bad_nnunet_dataset_is_one_line(kind, tmp_path):
    root = make_2d(tmp_path / "Dataset016_Bad")
    needle = _break(root, kind)
    with pytest.raises(BenchError) as e:
        resolve_dataset(str(root), **quiet)
    _one_line(e, needle)
    assert not list((tmp_path / "cache" / "nnunet").glob("Dataset016*"))  # nothing half-converted


def test_our_dataset_json_and_nnunets_are_never_mistaken(tiny_dataset, tmp_path):
    ours = {"organs": {"1": "liver"}, "labels": {"background": 0}, "channel_names": {"0": "CT"}}
    theirs = {"labels": {"background": 0, "liver": 1}, "channel_names": {"0": "CT"}, "numTraining": 1}
    from bench.data.layout import is_nnunet_meta

    assert not is_nnunet_meta(ours) and is_nnunet_meta(theirs) and is_nnunet_meta({**theirs, "modality": {}})
    assert resolve_dataset(str(tiny_dataset), **quiet).organs  # a folder made before still reads as ours
    imported = tmp_path / "imported"
    shutil.copytree(tiny_dataset, imported)
    (imported / "dataset.json").write_text(json.dumps({"organs": {str(k): f"o{k}" for k in range(1, 9)}}))
    assert resolve_dataset(str(imported), **quiet).organs[1] == "o1"
    root = make_mr(tmp_path / "Dataset017_X")
    with pytest.raises(BenchError) as e:  # `bench data import` never adds a case to nnU-Net's folder
        import_case(root / "imagesTr" / "mr_0_0000.nii.gz", root / "labelsTr" / "mr_0.nii.gz", TOTALSEGMENTATOR,
                    "case0001", root)
    _one_line(e, "not a dataset made by `bench data import`")


# --- export and read back ----------------------------------------------------------------------

def _round_trip(ds, tmp_path, dataset_id: int = 42):
    """Export ``ds``, read it back: same classes, channels, preprocessing, split, voxels and geometry."""
    protocol = load_protocol("smoke")
    export = export_nnunet(ds, protocol, dataset_id, tmp_path / "nnUNet_raw", **quiet)
    view = held_out_view(ds, protocol)
    fold0 = json.loads(export.splits_file.read_text())
    assert fold0 == [{"train": sorted({case_of(s) for s in view.train_slices}), "val": sorted(view.test_cases)}]
    back = resolve_dataset(str(export.folder), **quiet)
    assert back.organs == ds.organs and back.channels == ds.channels and back.test_cases == sorted(ds.test_cases)
    assert sorted({case_of(s) for s in back.train_slices}) == sorted({case_of(s) for s in ds.train_slices})
    assert describe(back).to_dict() == describe(ds).to_dict()
    folded = resolve_dataset(str(export.folder), fold=0, **quiet)  # nnU-Net's fold 0 is our validation split
    assert folded.test_cases == sorted(view.test_cases)
    assert {case_of(s) for s in folded.train_slices} == {case_of(s) for s in view.train_slices}
    for case in sorted({case_of(s) for s in ds.train_slices} | set(ds.test_cases)):
        image, label, grid = case_arrays(ds, case)
        image2, label2, grid2 = case_arrays(back, case)
        assert image.dtype == image2.dtype and np.array_equal(image, image2) and np.array_equal(label, label2), case
        assert grid.get("shape", label.shape) == grid2["shape"]
        for key in ("spacing", "origin", "direction"):  # NIfTI keeps geometry as float32
            if key in grid:
                assert np.allclose(grid[key], grid2[key], rtol=1e-6, atol=1e-5), (case, key, grid[key], grid2[key])
    return export, back


def test_round_trip_of_the_synthetic_abdomen(tiny_dataset, tmp_path):
    ds = resolve_dataset(str(tiny_dataset), **quiet)
    export, _ = _round_trip(ds, tmp_path)
    doc = json.loads((export.folder / "dataset.json").read_text())
    assert doc["channel_names"] == {"0": "CT"} and doc["numTraining"] == 2 and doc["file_ending"] == ".nii.gz"
    assert doc["labels"]["background"] == 0 and doc["labels"][ds.organs[3]] == 3
    assert sorted(p.name for p in (export.folder / "imagesTs").iterdir()) == ["case0001_0000.nii.gz"]
    assert export.commands == (f'mkdir -p "$nnUNet_preprocessed/{export.dataset_name}"',
                               f'cp {export.splits_file.resolve()} "$nnUNet_preprocessed/{export.dataset_name}"'
                               f'/splits_final.json')


def test_round_trip_of_imported_real_ct_keeps_its_geometry(tmp_path):
    if not (CT / "ct.nii.gz").is_file():
        pytest.skip(f"real CT example not found at {CT}")
    root = tmp_path / "myct"
    for case, seg, split in (("case0001", "seg-total", "train"), ("case0002", "seg-total-fast", "train"),
                             ("case0003", "seg-total", "test")):
        import_case(CT / "ct.nii.gz", CT / f"{seg}.nii.gz", TOTALSEGMENTATOR, case, root, split=split)
    ds = resolve_dataset(str(root), **quiet)
    assert "origin" in volume_grid(ds, "case0003")
    _round_trip(ds, tmp_path)


@pytest.mark.parametrize("colour", [False, True])
def test_round_trip_of_a_2d_image_folder(colour, tmp_path):
    src = tmp_path / "polyps"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for i in range(6):
        image, label = _disc(i)
        pixels = np.stack([image, 255 - image, image // 3], axis=2) if colour else image
        Image.fromarray(pixels).save(src / "images" / f"p{i}.png")
        Image.fromarray(label).save(src / "masks" / f"p{i}.png")
    ds = resolve_dataset(str(src), **quiet)
    export, back = _round_trip(ds, tmp_path)
    names = json.loads((export.folder / "dataset.json").read_text())["channel_names"]
    assert names == ({"0": "R", "1": "G", "2": "B"} if colour else {"0": "gray"})
    assert len(list((export.folder / "imagesTr").iterdir())) == 5  # one file per case, colour or not


def test_export_never_overwrites_and_refuses_a_taken_id(tiny_dataset, tmp_path):
    ds = resolve_dataset(str(tiny_dataset), **quiet)
    out = tmp_path / "nnUNet_raw"
    (out / "Dataset042_Other").mkdir(parents=True)
    (out / "Dataset042_Other" / "dataset.json").write_text("{}")
    protocol = load_protocol("smoke")
    with pytest.raises(BenchError) as e:
        export_nnunet(ds, protocol, 42, out, name="tiny", **quiet)
    _one_line(e, "--id 42", "Dataset042_Other")
    export_nnunet(ds, protocol, 43, out, name="tiny", **quiet)
    before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    with pytest.raises(BenchError) as e:
        export_nnunet(ds, protocol, 43, out, name="tiny", **quiet)
    _one_line(e, "--id 43")
    with pytest.raises(BenchError) as e:
        export_nnunet(ds, protocol, 1000, out, **quiet)
    _one_line(e, "--id 1000", "1..999")
    with pytest.raises(BenchError) as e:
        export_nnunet(ds, protocol, 44, out, name="a/b", **quiet)
    _one_line(e, "--name 'a/b'")
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
