"""CT import (NIfTI / DICOM) and BTCV preparation: physical-space matching, voxel counts, bad input."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import SHARED, bench_cli

from bench.data import layout
from bench.data.ct_import import BTCV_TEST, BTCV_TRAIN, import_case, prepare_btcv
from bench.data.labelmaps import BTCV, TOTALSEGMENTATOR, load_label_map
from bench.errors import BenchError

EXAMPLE = SHARED / "data" / "totalseg-example"
needs_example = pytest.mark.skipif(not (EXAMPLE / "ct.nii.gz").exists(),
                                   reason=f"shared example data not found at {EXAMPLE}")
# README of the example: Synapse id <- TotalSegmentator id
TOTALSEG_TO_SYNAPSE = {52: 1, 4: 2, 3: 3, 2: 4, 5: 5, 7: 6, 1: 7, 6: 8}


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _volume(path: Path):
    with h5py.File(path, "r") as f:
        return f["image"][:], f["label"][:], tuple(f.attrs["spacing"])


def _remapped_counts(raw: np.ndarray) -> np.ndarray:
    counts = np.zeros(9, np.int64)
    for src, dst in TOTALSEG_TO_SYNAPSE.items():
        counts[dst] += int((raw == src).sum())
    return counts


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def ct_pair(folder: Path, flip_label: bool = False, shape=(4, 16, 12)) -> tuple[Path, Path, np.ndarray]:
    """A small CT (HU) and a BTCV-id label on its grid; the label file may store its rows flipped."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    hu = rng.integers(-300, 400, size=shape).astype(np.int16)  # (z, y, x)
    lab = np.zeros(shape, np.uint8)
    lab[1:3, 2:9, 2:7] = 6  # liver
    lab[2, 10:14, 6:10] = 1  # spleen
    lab[0, 0:3, 0:3] = 5  # oesophagus: known to the map, becomes background
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((0.8, 0.7, 2.5))
    img.SetOrigin((10.0, 20.0, 30.0))
    out = sitk.GetImageFromArray(lab[:, ::-1, :].copy() if flip_label else lab)
    out.SetSpacing(img.GetSpacing())
    if flip_label:  # same voxels in physical space, rows stored bottom-up
        out.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
        out.SetOrigin((10.0, 20.0 + (shape[1] - 1) * 0.7, 30.0))
    else:
        out.SetOrigin(img.GetOrigin())
    sitk.WriteImage(img, str(folder / "ct.nii.gz"))
    sitk.WriteImage(out, str(folder / "label.nii.gz"))
    return folder / "ct.nii.gz", folder / "label.nii.gz", lab


# --- the shared real CT example: every labelled voxel kept, image and label aligned ----------

@needs_example
def test_nifti_import_keeps_every_voxel_and_the_physical_alignment(tmp_path):
    import nibabel as nib

    out = tmp_path / "ds"
    res = bench_cli("data", "import", "--image", str(EXAMPLE / "ct.nii.gz"), "--label",
                    str(EXAMPLE / "seg-total.nii.gz"), "--label-map", "totalsegmentator",
                    "--case-id", "case0100", "--out", str(out))
    assert res.returncode == 0, res.stderr
    image, label, spacing = _volume(out / "test_vol_h5" / "case0100.npy.h5")
    raw = np.asarray(nib.load(EXAMPLE / "seg-total.nii.gz").dataobj)
    assert np.array_equal(np.bincount(label.ravel(), minlength=9)[1:], _remapped_counts(raw)[1:])
    # an independent route to the same voxel order: nibabel's RAS canonical, flipped to LPS, (z, y, x)
    def lps(path):
        return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)[::-1, ::-1, :].transpose(2, 1, 0)
    ref_label = np.zeros_like(label)
    for src, dst in TOTALSEG_TO_SYNAPSE.items():
        ref_label[lps(EXAMPLE / "seg-total.nii.gz") == src] = dst
    assert np.array_equal(label, ref_label)
    hu = lps(EXAMPLE / "ct.nii.gz").astype(np.float32)
    np.testing.assert_allclose(image, (np.clip(hu, -125, 275) + 125) / 400, atol=1e-6)
    assert spacing == (3.0, 3.0, 3.0)
    # training slices are the volume's axial slices
    with np.load(out / "train_npz" / "case0100_slice012.npz") as f:
        assert np.array_equal(f["label"], label[12]) and np.array_equal(f["image"], image[12])
    assert (out / "lists" / "lists_Synapse" / "train.txt").read_text().splitlines()[0] == "case0100_slice000"


@needs_example
def test_dicom_import_matches_the_mask_in_physical_space_not_by_index(tmp_path):
    info = import_case(EXAMPLE / "ct-dicom", EXAMPLE / "seg-ct-dicom.nii.gz", TOTALSEGMENTATOR,
                       "case0101", tmp_path / "ds", split="test")
    image, label, spacing = _volume(tmp_path / "ds" / "test_vol_h5" / "case0101.npy.h5")
    mask = sitk.ReadImage(str(EXAMPLE / "seg-ct-dicom.nii.gz"))
    raw = sitk.GetArrayFromImage(mask)
    counts = np.bincount(label.ravel(), minlength=9)
    assert np.array_equal(counts[1:], _remapped_counts(raw)[1:])
    assert info["voxels"]["liver"] == counts[5] > 0
    # reference alignment: resample the mask onto the DICOM grid by physical position
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(EXAMPLE / "ct-dicom")))
    ct = reader.Execute()
    on_ct = sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    ref = sitk.GetArrayFromImage(sitk.DICOMOrient(on_ct, "LPS"))
    assert np.array_equal(label > 0, np.isin(ref, list(TOTALSEG_TO_SYNAPSE)))
    # the mask is stored with its rows flipped: pairing by array index would be wrong
    assert not np.array_equal(label > 0, np.isin(raw, list(TOTALSEG_TO_SYNAPSE)))
    hu = sitk.GetArrayFromImage(sitk.DICOMOrient(ct, "LPS"))
    assert 30 < hu[label == 5].mean() < 150  # liver is soft tissue (contrast-enhanced)
    assert hu[np.isin(raw, [5])].mean() < 0  # the index-paired "liver" is mostly fat and air
    assert spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert (tmp_path / "ds" / "lists" / "lists_Synapse" / "test_vol.txt").read_text() == "case0101\n"


# --- physical-space matching on a small volume made here --------------------------------------

def test_a_label_stored_flipped_is_matched_by_position(tmp_path):
    ct, lab, truth = ct_pair(tmp_path / "src", flip_label=True)
    import_case(ct, lab, BTCV, "case0001", tmp_path / "ds")
    _, label, spacing = _volume(tmp_path / "ds" / "test_vol_h5" / "case0001.npy.h5")
    expected = np.zeros_like(truth)
    expected[truth == 6], expected[truth == 1] = 5, 7  # BTCV liver -> 5, spleen -> 7, oesophagus -> 0
    assert np.array_equal(label, expected)
    assert spacing == pytest.approx((2.5, 0.7, 0.8))


def test_cases_accumulate_and_a_failed_commit_leaves_nothing(tmp_path, monkeypatch):
    ct, lab, _ = ct_pair(tmp_path / "src")
    out = tmp_path / "ds"
    import_case(ct, lab, BTCV, "case0001", out)
    import_case(ct, lab, BTCV, "case0002", out, split="test")
    before = {p: (out / p).read_bytes() for p in _files(out) if (out / p).is_file()}

    real = layout.atomic_text

    def failing(path, text):
        if path.name in ("train.txt", "test_vol.txt"):
            raise OSError("disk full")
        real(path, text)

    monkeypatch.setattr(layout, "atomic_text", failing)
    with pytest.raises(OSError):
        import_case(ct, lab, BTCV, "case0003", out)
    assert {p: (out / p).read_bytes() for p in _files(out) if (out / p).is_file()} == before
    monkeypatch.undo()
    with pytest.raises(BenchError, match="case 'case0001' is already there"):
        import_case(ct, lab, BTCV, "case0001", out)
    assert (out / "lists" / "lists_Synapse" / "test_vol.txt").read_text() == "case0002\n"


# --- bad input: one clear line, exit status 2, nothing written ---------------------------------

def _bad_case(kind: str, tmp: Path) -> tuple[Path, Path, str, str]:
    """(image, label, label map, expected message) for one kind of bad input."""
    ct, lab, truth = ct_pair(tmp / "src")
    if kind == "truncated":
        data = ct.read_bytes()
        ct.write_bytes(data[: len(data) // 2])
        return ct, lab, "btcv", "unreadable image file"
    if kind == "grid":
        other = sitk.ReadImage(str(lab))
        other.SetSpacing((0.8, 0.7, 3.0))
        sitk.WriteImage(other, str(lab))
        return ct, lab, "btcv", "label is not on the image's grid (spacing"
    if kind == "values":
        bad = sitk.GetImageFromArray(np.where(truth > 0, 40, 0).astype(np.uint8))
        bad.CopyInformation(sitk.ReadImage(str(ct)))
        sitk.WriteImage(bad, str(lab))
        return ct, lab, "btcv", "label values 40 are outside label map 'btcv'"
    if kind in ("nan", "constant"):
        arr = np.full((4, 16, 12), 7.0, np.float32)
        if kind == "nan":
            arr = np.random.default_rng(0).random(arr.shape).astype(np.float32)
            arr[1, 2, 3] = np.nan
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(sitk.ReadImage(str(ct)))
        sitk.WriteImage(img, str(ct))
        return ct, lab, "btcv", "NaN" if kind == "nan" else "image is constant"
    if kind == "empty-dicom":
        (tmp / "dicom").mkdir()
        return tmp / "dicom", lab, "btcv", "empty folder"
    if kind == "map":
        return ct, lab, "nope", "unknown label map 'nope'"
    if kind == "complex":  # a voxel type no reader of ours handles (ITK's reorientation would raise)
        img = sitk.GetImageFromArray((sitk.GetArrayFromImage(sitk.ReadImage(str(ct))) + 1j).astype(np.complex64))
        img.CopyInformation(sitk.ReadImage(str(ct)))
        sitk.WriteImage(img, str(ct))
        return ct, lab, "btcv", "voxel type complex"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated", "values"])
def test_bad_import_through_the_cli(kind, tmp_path):
    image, label, lmap, needle = _bad_case(kind, tmp_path)
    out = tmp_path / "ds"
    res = bench_cli("data", "import", "--image", str(image), "--label", str(label), "--label-map", lmap,
                    "--case-id", "case0001", "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and str(image if kind == "truncated" else label) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("kind", ["grid", "nan", "constant", "empty-dicom", "map", "complex"])
def test_bad_import_is_one_line_and_writes_nothing(kind, tmp_path):
    image, label, lmap, needle = _bad_case(kind, tmp_path)
    out = tmp_path / "ds"
    import_case(*ct_pair(tmp_path / "ok")[:2], BTCV, "case0009", out)  # an existing dataset
    before = _files(out)
    with pytest.raises(BenchError) as e:
        import_case(image, label, load_label_map(lmap), "case0001", out)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert _files(out) == before


@needs_example
@pytest.mark.parametrize("damage, needle", [("truncate", "unreadable DICOM file"), ("remove", "a missing slice?")])
def test_a_broken_dicom_series_is_named(damage, needle, tmp_path):
    series = tmp_path / "series"
    shutil.copytree(EXAMPLE / "ct-dicom", series)
    files = sorted(series.iterdir())
    if damage == "truncate":
        files[7].write_bytes(files[7].read_bytes()[:2000])
    else:
        files[7].unlink()  # the reader would stack the rest 4 mm apart where the series says 2
    with pytest.raises(BenchError) as e:
        import_case(series, EXAMPLE / "seg-ct-dicom.nii.gz", TOTALSEGMENTATOR, "case0001", tmp_path / "ds")
    assert needle in str(e.value) and str(series) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "ds").exists()


def test_yaml_label_maps(tmp_path):
    good = tmp_path / "liver.yaml"
    good.write_text("organs: {1: liver}\nmap: {6: 1}\nsource_ids: 0-13\n")
    m = load_label_map(str(good))
    assert m.organs == {1: "liver"} and m.name == "liver"
    assert m.apply(np.array([0, 6, 1, 13]), "x").tolist() == [0, 1, 0, 0]
    with pytest.raises(BenchError, match="outside label map 'liver'"):
        m.apply(np.array([14]), "x")
    for text, needle in [("map: {6: 3}\norgans: {1: a}\n", "map targets [3] are not in organs"),
                         ("mapp: {6: 1}\n", "unknown key 'mapp'"), ("map: [\n", "invalid YAML")]:
        good.write_text(text)
        with pytest.raises(BenchError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            load_label_map(str(good))


@pytest.mark.parametrize("window", [(float("-inf"), float("inf")), (-125.0, float("nan")), (0.0, float("inf"))])
def test_a_window_that_is_not_two_finite_numbers_is_refused(window, tmp_path):
    ct, lab, _ = ct_pair(tmp_path / "src")
    with pytest.raises(BenchError) as e:
        import_case(ct, lab, BTCV, "case0001", tmp_path / "ds", window=window)
    assert "--window" in str(e.value) and "finite" in str(e.value)
    assert not (tmp_path / "ds").exists()


@contextmanager
def _memory_limit(extra: int):
    """At most ``extra`` more bytes of address space for this process in the block (Linux)."""
    import resource

    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc/self/status (Linux) to bound the test's memory")
    size = next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith("VmSize:"))
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


@pytest.mark.parametrize("text, needle", [
    ("organs: {1: liver}\nmap: {6: 1}\nsource_ids: 0-3000000000\n", "source_ids"),
    ("organs: {1: liver}\nmap: {6: 1}\nsource_ids: [0, 6, 4000000000]\n", "source_ids"),
    ("organs: {1: liver}\nmap: {3000000000: 1}\n", "'map'"),
    ("organs: {1: liver}\nmap: {6: 1}\nsource_ids: 13-0\n", "source_ids"),
])
def test_label_map_ids_are_bounded_before_anything_is_allocated(text, needle, tmp_path):
    """A range of three billion ids was a MemoryError (a set, then a lookup table, of every id):
    ids are 16-bit label values, checked where the file is read."""
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with _memory_limit(1 << 30), pytest.raises(BenchError) as e:  # a MemoryError, not the machine's memory
        load_label_map(str(path))
    assert str(path) in str(e.value) and needle in str(e.value) and "65535" in str(e.value)


# --- prepare-btcv -----------------------------------------------------------------------------

def test_prepare_btcv_writes_the_official_split(tmp_path):
    raw = tmp_path / "RawData" / "Training"
    ct, lab, _ = ct_pair(tmp_path / "src", shape=(3, 8, 8))
    (raw / "img").mkdir(parents=True)
    (raw / "label").mkdir()
    for cid in BTCV_TRAIN + BTCV_TEST:
        shutil.copy(ct, raw / "img" / f"img{cid}.nii.gz")
        shutil.copy(lab, raw / "label" / f"label{cid}.nii.gz")
    out = prepare_btcv(tmp_path, tmp_path / "synapse", say=lambda *_: None)
    train = (out / "lists" / "lists_Synapse" / "train.txt").read_text().split()
    test = (out / "lists" / "lists_Synapse" / "test_vol.txt").read_text().split()
    assert len(train) == 18 * 3 and {t.split("_")[0] for t in train} == {f"case{c}" for c in BTCV_TRAIN}
    assert test == sorted(f"case{c}" for c in BTCV_TEST)
    assert layout.read_meta(out)["organs"][5] == "liver"
    # a missing scan: nothing written
    (raw / "label" / "label0040.nii.gz").unlink()
    with pytest.raises(BenchError, match="label0040.nii.gz: missing"):
        prepare_btcv(tmp_path, tmp_path / "again", say=lambda *_: None)
    assert not (tmp_path / "again").exists()
