"""New images for a trained model (``bench predict``): finding them, reading them as the training
data were read, and writing masks back in the input's own geometry and value convention.

- Volumes (NIfTI, MHA, NRRD file or DICOM series folder) are read and reoriented exactly as
  ``bench data import`` does (``bench.data.ct_import``), scaled with the dataset's CT window (or
  min-max for MR), and their masks are written as NIfTI on the input's own grid: same size,
  spacing, origin and direction, so they overlay in 3D Slicer or ITK-SNAP without resampling.
- 2D images (PNG, JPG, TIFF) are read as the 2D converter reads them (``bench.data.folders2d``),
  gray or colour as the training images; their masks are PNGs at the input's size, 0/255 for a
  dataset whose masks were 0/255, class ids otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from bench.data import folders2d
from bench.data.ct_import import (
    canonical,
    check_image,
    check_same_grid,
    ct_window,
    on_grid,
    read_volume,
    restore_grid,
)
from bench.data.preprocessing import Preprocessing
from bench.errors import BenchError
from bench.files import atomic_write

VOLUME_EXTS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
IMAGE_EXTS = tuple(sorted(folders2d.EXTS))


@dataclass(frozen=True)
class Input:
    name: str  # the output's stem: <name>.nii.gz or <name>.png
    path: Path
    kind: str  # "volume" or "image2d"

    @property
    def output(self) -> str:
        return f"{self.name}.nii.gz" if self.kind == "volume" else f"{self.name}.png"


def _kind(path: Path) -> tuple[str, str] | None:
    """(kind, name) of a file by its extension; None for a file that is no input."""
    low = path.name.lower()
    for ext in VOLUME_EXTS:
        if low.endswith(ext) and len(low) > len(ext):
            return "volume", path.name[: -len(ext)]
    if path.suffix.lower() in IMAGE_EXTS:
        return "image2d", path.stem
    return None


def _visible(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir())
            if not p.name.startswith(".") and p.name.lower() not in folders2d.IGNORED]


def find_inputs(path: Path) -> tuple[list[Input], list[Path]]:
    """The inputs at ``path`` and the files skipped there (neither an image nor a volume).

    PATH: an image or volume file; a DICOM series folder; or a folder of image / volume files,
    whose sub-folders are DICOM series (one input each).
    """
    path = Path(path)
    if not path.exists():
        raise BenchError(f"--input {path}: not found")
    if path.is_file():
        found = _kind(path)
        if found is None:
            if path.suffix.lower() in ("", ".dcm", ".ima"):
                raise BenchError(f"--input {path}: a single DICOM file; pass the folder holding the series")
            raise BenchError(f"--input {path}: not an image (NIfTI, MHA, NRRD, PNG, JPG, TIFF) or DICOM series folder")
        return [Input(found[1], path, found[0])], []
    entries = _visible(path)
    if not entries:
        raise BenchError(f"--input {path}: empty folder")
    files = [p for p in entries if p.is_file()]
    typed = [(p, _kind(p)) for p in files]
    if files and not any(k for _, k in typed):  # the folder is one DICOM series, named as the folder
        return [Input(path.resolve().name, path, "volume")], []  # (`--input .` names the current folder)
    inputs = [Input(k[1], p, k[0]) for p, k in typed if k]
    inputs += [Input(d.name, d, "volume") for d in entries if d.is_dir() and _visible(d)]
    skipped = [p for p, k in typed if not k]
    if not inputs:
        raise BenchError(f"--input {path}: no images, volumes or DICOM series in it")
    return inputs, skipped


def read_volume_input(path: Path, prep: Preprocessing) -> tuple[np.ndarray, sitk.Image, sitk.Image]:
    """(scaled z, y, x array, the image it came from after reorientation, the image as read)."""
    original = read_volume(path)
    oriented = canonical(original) if prep.orient else original
    array = sitk.GetArrayFromImage(oriented)
    check_image(array, path)
    if prep.window is not None:
        return ct_window(array, prep.window, path), oriented, original
    v = array.astype(np.float32)
    return (v - v.min()) / (v.max() - v.min()), oriented, original  # MR: min-max per volume, as ACDC


def write_volume_mask(label: np.ndarray, oriented: sitk.Image, original: sitk.Image, out: Path) -> None:
    """The (z, y, x) label of the reoriented image, written as NIfTI on the original grid."""
    image = restore_grid(label.astype(np.uint8), oriented, original) if oriented is not original else \
        on_grid(label.astype(np.uint8), original)
    write_nifti(image, out)


def image_on_grid(array: np.ndarray, grid: dict) -> sitk.Image:
    """A (z, y, x) array (or z, y, x, c: a vector image) on a test volume's recorded grid
    (``bench.data.synapse.volume_grid``); what the grid does not record stays ITK's default."""
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    if "spacing" in grid:
        image.SetSpacing(tuple(reversed(grid["spacing"])))  # (z, y, x) -> ITK's (x, y, z)
    if "origin" in grid:
        image.SetOrigin(grid["origin"])
    if "direction" in grid:
        image.SetDirection(grid["direction"])
    return image


def write_nifti(image: sitk.Image, out: Path) -> None:
    """sitk.WriteImage, whole or not at all (the writer is chosen by the temporary name's suffix)."""
    def write(tmp: Path) -> None:
        named = tmp.with_name(tmp.name + ".nii.gz")
        try:
            sitk.WriteImage(image, str(named), True)
            named.replace(tmp)
        finally:
            named.unlink(missing_ok=True)

    atomic_write(out, write)


def read_image_input(path: Path, channels: int) -> np.ndarray:
    """H x W (gray) or H x W x 3 (colour) in [0, 1], as the training images were read.

    A colour image for a model trained on gray images, or a gray one for a colour model, is
    refused: its channels are not what the model learnt from.
    """
    if channels == 1 and folders2d.is_colour(path):
        raise BenchError(f"{path}: a colour image; the model was trained on gray images (1 channel)")
    if channels == 3 and folders2d._open(path).mode not in folders2d.COLOUR_MODES:
        raise BenchError(f"{path}: a gray image; the model was trained on colour images (3 channels)")
    return folders2d.read_image(path, channels)


def mask_png(label: np.ndarray, mask_values: str) -> np.ndarray:
    """The label map in the training masks' convention: 0/255 for binary 0/255 masks, else class ids."""
    label = label.astype(np.uint8)
    return np.where(label > 0, 255, 0).astype(np.uint8) if mask_values == folders2d.MASK_255 else label


def write_png(array: np.ndarray, out: Path) -> None:
    atomic_write(out, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def busiest_slice(label: np.ndarray) -> int:
    """The axial slice with the most foreground (for a volume's overlay)."""
    return int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(axis=1)))


def match_references(inputs: list[Input], reference: Path) -> dict[str, Path]:
    """``--reference``: the reference mask of each input, by name; a mask file for a single input, or a folder
    holding ``<name>.png`` / ``<name>.nii.gz`` (any image or volume extension) for every input."""
    reference = Path(reference)
    if not reference.exists():
        raise BenchError(f"--reference {reference}: not found")
    if reference.is_file():
        if len(inputs) != 1:
            raise BenchError(f"--reference {reference}: one mask for {len(inputs)} inputs; give a folder of "
                             "masks named like the inputs (<name>.png, <name>.nii.gz)")
        return {inputs[0].name: reference}
    found: dict[str, Path] = {}
    for path in _visible(reference):
        kind = _kind(path)
        if kind is not None:
            found.setdefault(kind[1], path)
    missing = [inp.name for inp in inputs if inp.name not in found]
    if missing:
        raise BenchError(f"--reference {reference}: no mask for {len(missing)} input(s): {', '.join(missing[:10])} "
                         "(expected <name>.png or <name>.nii.gz beside the others)")
    return {inp.name: found[inp.name] for inp in inputs}


def read_reference(path: Path, inp: Input, prep: Preprocessing, like: sitk.Image | None, shape: tuple[int, ...],
                   num_classes: int) -> np.ndarray:
    """A reference mask of ``inp`` as class ids in the layout of its image array: a volume reoriented as the
    input was (and refused off its grid, ``like``: the reoriented input), a 2D mask in the training masks'
    convention (0/255 read as class 1)."""
    if inp.kind == "volume":
        mask = read_volume(path)
        mask = canonical(mask) if prep.orient else mask
        if like is not None:
            check_same_grid(like, mask, path, ("reference", "input"))
        arr = sitk.GetArrayFromImage(mask).astype(np.int64)
    else:
        arr = folders2d.read_mask(path)
        if prep.mask_values == folders2d.MASK_255 or set(np.unique(arr)) <= {0, 255}:
            arr = (arr > 0).astype(np.int64)
    if arr.shape != tuple(shape):
        raise BenchError(f"--reference {path}: {'x'.join(map(str, arr.shape))}, the input {inp.path} is "
                         f"{'x'.join(map(str, shape))}")
    bad = sorted(int(v) for v in np.unique(arr) if not 0 <= v < num_classes)
    if bad:
        raise BenchError(f"--reference {path}: label values {bad[:8]} are not classes 0..{num_classes - 1} "
                         "of the model")
    return arr
