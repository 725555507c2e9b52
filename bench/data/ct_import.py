"""3D CT into the Synapse layout: ``bench data import`` (one case) and ``bench data prepare-btcv``.

Image and label are matched in physical space, not by array index: both are read with SimpleITK
(NIfTI file or DICOM series folder; the headers give orientation, spacing and origin), both are
reoriented to one canonical voxel order (DICOM LPS: rows run anterior -> posterior, columns patient
right -> left, slices inferior -> superior, so axial slices come first in the D x H x W arrays),
and the label must then lie on exactly the image's grid. Reorienting only permutes and flips
axes, so every labelled voxel is kept; labels on a different grid are refused, not resampled.
CT intensities are clipped to a window (default [-125, 275] HU) and scaled to [0, 1]. Each test
volume records its grid (spacing, and the origin and direction of the reoriented image), so a
prediction can be put back in physical space (``bench export``, ``bench predict``).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import SimpleITK as sitk

from bench.data import layout
from bench.data.labelmaps import BTCV, LabelMap
from bench.data.names import check_case_name
from bench.errors import BenchError

CT_WINDOW = (-125.0, 275.0)
# The official Synapse split of the 30 labelled BTCV scans (lists/lists_Synapse).
BTCV_TRAIN = ("0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026", "0027", "0028",
              "0030", "0031", "0033", "0034", "0037", "0039", "0040")
BTCV_TEST = ("0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038")


def check_case_id(case: str) -> str:
    """The one case-name rule (bench.names), and no '_slice': slice names are made from it."""
    check_case_name(case, "--case-id")
    if "_slice" in case:
        raise BenchError(f"--case-id '{case}': may not contain '_slice' (slice names are <case>_sliceNNN), "
                         "e.g. case0041")
    return case


def read_image(path: Path) -> sitk.Image:
    """A NIfTI (or other ITK-readable) file, or a folder holding one DICOM series."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: not found")
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # problems are raised here, one line each
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        _check_complete(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise BenchError(f"{path}: unreadable image file ({_first_line(e)})") from None
    check_voxel_type(image, path)
    return image


# integer and floating-point voxels (one or more components); complex ones are no CT, MR or label
_VOXEL_TYPES = {getattr(sitk, f"sitk{vector}{kind}") for vector in ("", "Vector")
                for kind in ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
                             "Float32", "Float64")}


def check_voxel_type(image: sitk.Image, path: Path) -> None:
    """Refuse voxels that no reader here handles (complex numbers): one line, not ITK's exception."""
    if image.GetPixelID() not in _VOXEL_TYPES:
        raise BenchError(f"{path}: voxel type {image.GetPixelIDTypeAsString()} is not supported "
                         "(use integer or floating-point voxels)")


def _check_complete(path: Path) -> None:
    """Read NIfTI data once with nibabel: ITK zero-fills a truncated .nii.gz and drops NaNs silently."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return
    import nibabel as nib

    try:
        data = np.asanyarray(cast(nib.Nifti1Image, nib.load(path)).dataobj)  # a .nii(.gz) file: NIfTI-1 or -2
    except Exception as e:  # truncated gzip stream, short file, not a NIfTI header...
        raise BenchError(f"{path}: unreadable image file ({type(e).__name__}: {_first_line(e)})") from None
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise BenchError(f"{path}: contains NaN or infinite values")


def _read_dicom_series(folder: Path) -> sitk.Image:
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    if not files:
        raise BenchError(f"{folder}: empty folder (expected a DICOM series)")
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise BenchError(f"{folder}: no DICOM series found")
    if len(series) > 1:
        raise BenchError(f"{folder}: {len(series)} DICOM series in one folder; pass a folder with one series")
    names = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    candidates = {f.name for f in files if f.suffix.lower() in ("", ".dcm", ".ima")}
    skipped = sorted(candidates - {Path(n).name for n in names})
    if skipped:  # GDCM leaves out files it cannot parse: a truncated slice, or another series
        bad = folder / skipped[0]
        try:
            sitk.ReadImage(str(bad))
            what = "not part of the DICOM series in this folder"
        except RuntimeError:
            what = "unreadable DICOM file (truncated or not DICOM)"
        raise BenchError(f"{bad}: {what}" + (f" ({len(skipped)} such files)" if len(skipped) > 1 else ""))
    _check_slice_positions([Path(n) for n in names])
    reader.SetFileNames(names)
    try:
        return reader.Execute()
    except RuntimeError as e:
        # name the file that breaks the series, not just the folder
        for name in names:
            try:
                sitk.ReadImage(name)
            except RuntimeError:
                raise BenchError(f"{name}: unreadable DICOM file in the series") from None
        raise BenchError(f"{folder}: unreadable DICOM series ({_first_line(e)})") from None


def _check_slice_positions(names: list[Path]) -> None:
    """A missing slice makes ITK stack the rest with a wrong spacing (and only warn): refuse it."""
    positions = []
    for name in names:
        r = sitk.ImageFileReader()
        r.SetFileName(str(name))
        try:
            r.ReadImageInformation()
        except RuntimeError:
            raise BenchError(f"{name}: unreadable DICOM file (truncated or not DICOM)") from None
        if not r.HasMetaDataKey("0020|0032"):
            return  # no positions recorded: nothing to check against
        positions.append([float(v) for v in r.GetMetaData("0020|0032").split("\\")])
    if len(positions) < 3:
        return
    gaps = np.linalg.norm(np.diff(np.array(positions), axis=0), axis=1)
    if gaps.max() - gaps.min() > 0.01 * gaps.max():
        k = int(np.argmax(np.abs(gaps - np.median(gaps))))
        raise BenchError(f"{names[k + 1]}: slice gap of {gaps[k]:.3g} mm where the series has {np.median(gaps):.3g} mm "
                         "(a missing slice?)")


def _first_line(e: Exception) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def canonical(image: sitk.Image) -> sitk.Image:
    """Reorient to DICOM LPS voxel order (a permutation and flips of the axes, nothing else)."""
    return sitk.DICOMOrient(image, "LPS")


def read_volume(path: Path) -> sitk.Image:
    """A single-channel 3D image (NIfTI file or DICOM series folder), as read, not reoriented."""
    image = read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise BenchError(f"{path}: expected a grayscale volume, got "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    if image.GetDimension() != 3:
        raise BenchError(f"{path}: expected a 3D volume, got {image.GetDimension()}D")
    return image


def grid_of(image: sitk.Image) -> dict:
    """Origin (x, y, z) mm and direction (9 cosines, row-major) of an image, as stored with a test volume."""
    return {"origin": [float(v) for v in image.GetOrigin()], "direction": [float(v) for v in image.GetDirection()]}


def on_grid(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """A (z, y, x) array as an image with ``grid``'s size, spacing, origin and direction."""
    out = sitk.GetImageFromArray(array)
    if out.GetSize() != grid.GetSize():
        raise ValueError(f"array {array.shape} does not fit a grid of size {grid.GetSize()}")
    out.CopyInformation(grid)
    return out


def restore_grid(label: np.ndarray, oriented: sitk.Image, original: sitk.Image) -> sitk.Image:
    """A label array in ``oriented``'s (LPS) voxel order, put back on ``original``'s grid.

    Reorienting permutes and flips axes only, so the inverse is exact: every voxel keeps its
    physical position, and the result has the original's size, spacing, origin and direction.
    """
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(original.GetDirection())
    back = sitk.DICOMOrient(on_grid(label, oriented), code)
    try:  # a bug here must never write a shifted mask
        check_same_grid(original, back, Path("restored prediction"))
    except BenchError as e:
        raise RuntimeError(f"reorienting back to {code} failed: {e}") from None
    back.CopyInformation(original)  # the original header, not a recomputation of it (no rounding)
    return back


def check_same_grid(image: sitk.Image, label: sitk.Image, label_path: Path,
                    names: tuple[str, str] = ("label", "image")) -> None:
    """Refuse a label that is not on the image's voxel grid (after reorientation)."""
    lab, img = names
    if image.GetDimension() != label.GetDimension():
        raise BenchError(f"{label_path}: {lab} is {label.GetDimension()}D, {img} is {image.GetDimension()}D")
    size_i, size_l = image.GetSize(), label.GetSize()
    sp_i, sp_l = np.array(image.GetSpacing()), np.array(label.GetSpacing())
    tol = 0.01 * float(sp_i.min())  # 1% of a voxel: header rounding, not a different grid
    problems = []
    if size_i != size_l:
        problems.append(f"size {'x'.join(map(str, size_l))} vs {'x'.join(map(str, size_i))}")
    if not np.allclose(sp_i, sp_l, rtol=1e-3, atol=0):
        problems.append(f"spacing {_fmt(sp_l)} vs {_fmt(sp_i)} mm")
    if not np.allclose(image.GetOrigin(), label.GetOrigin(), rtol=0, atol=tol):
        problems.append(f"origin {_fmt(label.GetOrigin())} vs {_fmt(image.GetOrigin())} mm")
    if not np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-3):
        problems.append("orientation differs")
    if problems:
        raise BenchError(f"{label_path}: {lab} is not on the {img}'s grid ({'; '.join(problems)}: {lab} vs {img})")


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def check_image(array: np.ndarray, path: Path) -> None:
    if array.size == 0:
        raise BenchError(f"{path}: empty image")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise BenchError(f"{path}: image contains NaN or infinite values")
    if array.min() == array.max():
        raise BenchError(f"{path}: image is constant ({array.flat[0]}); nothing to segment")


def check_window(window: tuple[float, float], where: str = "--window") -> tuple[float, float]:
    """(LO, HI) as floats: two finite numbers, LO below HI (an infinite window scales every voxel to NaN or 0)."""
    lo, hi = (float(w) for w in window)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise BenchError(f"{where} {lo:g} {hi:g}: LO and HI must be finite numbers (Hounsfield units)")
    if not lo < hi:
        raise BenchError(f"{where} {lo:g} {hi:g}: LO must be below HI")
    return lo, hi


def ct_window(hu: np.ndarray, window: tuple[float, float], path: Path) -> np.ndarray:
    lo, hi = check_window(window)
    out = ((np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if out.min() == out.max():
        raise BenchError(f"{path}: image is constant inside the window [{lo:g}, {hi:g}]; "
                         "is it in Hounsfield units?")
    return out


def load_pair(image_path: Path, label_path: Path, label_map: LabelMap,
              normalize: Callable[[np.ndarray, Path], np.ndarray], orient: bool = True,
              ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], dict]:
    """Image (float32) and remapped label (uint8), D x H x W on one grid, spacing (z, y, x) mm,
    and the grid's origin and direction (``grid_of``) after reorientation."""
    image, label = read_volume(image_path), read_image(label_path)
    if orient:
        image, label = canonical(image), canonical(label) if label.GetDimension() == 3 else label
    check_same_grid(image, label, label_path)
    hu = sitk.GetArrayFromImage(image)  # (z, y, x)
    check_image(hu, image_path)
    lab = label_map.apply(sitk.GetArrayFromImage(label), str(label_path))
    sz, sy, sx = reversed(image.GetSpacing())  # read_volume checked that it is 3D
    return normalize(hu, image_path), lab, (float(sz), float(sy), float(sx)), grid_of(image)


def import_case(image: Path, label: Path, label_map: LabelMap, case: str, out: Path,
                window: tuple[float, float] = CT_WINDOW, split: str = "train") -> dict:
    """``bench data import``: one CT case into a dataset folder. Returns a short summary."""
    check_case_id(case)
    window = check_window(window)
    if split not in ("train", "test"):
        raise BenchError(f"--split must be train or test, got '{split}'")
    img, lab, spacing, grid = load_pair(image, label, label_map, lambda a, p: ct_window(a, window, p))
    source = {"image": str(Path(image).resolve()), "label": str(Path(label).resolve()),
              "label_map": label_map.name, "window": list(window), "split": split}
    names = layout.add_case(out, case, img, lab, spacing, split, label_map.organs, source, grid)
    counts = np.bincount(lab.ravel(), minlength=max(label_map.organs) + 1)
    return {"case": case, "slices": len(names), "shape": img.shape, "spacing": spacing,
            "voxels": {name: int(counts[i]) for i, name in label_map.organs.items()}}


def find_btcv(raw: Path) -> dict[str, tuple[Path, Path]]:
    """case id -> (image, label) for the 30 labelled BTCV scans under raw (RawData/Training/img...)."""
    raw = Path(raw)
    if not raw.is_dir():
        raise BenchError(f"BTCV folder not found: {raw}")
    for base in (raw, raw / "Training", raw / "RawData" / "Training"):
        if (base / "img").is_dir() and (base / "label").is_dir():
            break
    else:
        raise BenchError(f"{raw}: no img/ and label/ folders (expected RawData/Training/img/img0001.nii.gz ...)")
    pairs = {}
    for cid in BTCV_TRAIN + BTCV_TEST:
        img, lab = base / "img" / f"img{cid}.nii.gz", base / "label" / f"label{cid}.nii.gz"
        for f in (img, lab):
            if not f.is_file():
                raise BenchError(f"{f}: missing (prepare-btcv needs the 30 labelled training scans)")
        pairs[f"case{cid}"] = (img, lab)
    return pairs


def prepare_btcv(raw: Path, out: Path, window: tuple[float, float] = CT_WINDOW, say=print) -> Path:
    """The Synapse preprocessing of raw BTCV: window, remap ids, official 18 / 12 split."""
    window = check_window(window)
    pairs = find_btcv(raw)
    train_slices, test_cases = [], []
    with layout.building(out) as tmp:
        for i, (case, (img_path, lab_path)) in enumerate(pairs.items()):
            say(f"[{i + 1}/{len(pairs)}] {case}")
            img, lab, spacing, grid = load_pair(img_path, lab_path, BTCV, lambda a, p: ct_window(a, window, p))
            names = layout.write_case(tmp, case, img, lab, spacing, grid)
            if case[4:] in BTCV_TRAIN:
                train_slices += names
            else:
                test_cases.append(case)
        layout.write_lists(tmp, train_slices, sorted(test_cases))
        layout.write_meta(tmp, BTCV.organs, source={"kind": "btcv", "raw": str(Path(raw).resolve()),
                                                   "window": list(window), "orientation": "LPS"})
    return Path(out)
