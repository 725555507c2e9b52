"""Your own 2D images: ``--dataset PATH`` where PATH holds ``images/`` and ``masks/``.

The folder is checked and converted once into the Synapse layout in the cache (keyed by the
files' content), so the engine and every model see it like any other dataset:

- pairing: ``images/x.png`` goes with ``masks/x.png`` or ``masks/x_mask.png`` (PNG, JPG or TIFF,
  extensions may differ); an unpaired file is an error.
- images: grayscale, or colour (RGB/RGBA/palette, alpha dropped). A folder of colour images
  trains with three input channels, a gray folder with one; a colour file whose three channels
  are equal counts as gray. A folder mixing both is converted to the majority (a tie: colour),
  said once (gray -> colour repeats the channel; colour -> gray uses ITU-R 601 weights).
  8-bit images are divided by 255, deeper ones (16-bit, float) scaled per image to [0, 1].
  Any size; the native size is kept. ``dataset.json`` records ``channels`` and the masks' value
  convention (``mask_values``: ``0/255`` or ``class ids``) so predictions can be written back in it.
- masks: binary 0/255 or 0/1 (-> 0/1), or class indices 0..K (grayscale or palette PNG). An
  optional ``classes.txt`` names the classes 1..K, one per line (a first line "background" is
  skipped); without it the classes are ``foreground`` (binary) or ``class_1`` ... ``class_K``, and
  each of 1..K must be in some mask (a stray 200 among 0..3 is refused, not a 201-class dataset).
- each image becomes a training slice ``<id>_slice000.npz`` and a one-slice test volume
  ``<id>.npy.h5`` (no spacing: distances are in pixels). Training resizes to the protocol's
  input size; evaluation predicts at the native size.
- the train / test split is drawn once (seed 0, 20 % test) into ``PATH/splits.json`` (or the
  cache when PATH is read-only) and reused by every run; delete it to split again.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import layout
from bench.data.labelmaps import label_values
from bench.data.splits import splits_path, stored_split
from bench.data.synapse import Dataset, open_synapse
from bench.errors import BenchError
from bench.paths import cache_dir

VERSION = 2  # 2: colour kept as three channels; dataset.json records channels and mask_values
EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
CLASS_FILE = "classes.txt"
TEST_FRACTION, SPLIT_SEED = 0.2, 0
IGNORED = {"thumbs.db", "desktop.ini"}


def file_channels(path: Path) -> int:
    """3 for a file in a colour mode (RGB, RGBA, palette...: three channels once read), else 1."""
    return 3 if _open(path).mode in COLOUR_MODES else 1


def is_image_folder(root: Path) -> bool:
    return (Path(root) / "images").is_dir() or (Path(root) / "masks").is_dir()


def _listing(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise BenchError(f"{folder}: folder not found (an image dataset holds images/ and masks/)")
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.name.lower() in IGNORED or f.is_dir():
            continue
        if f.suffix.lower() not in EXTS:
            raise BenchError(f"{f}: unsupported file type (use PNG, JPG or TIFF)")
        if f.stem in out:
            raise BenchError(f"{f}: same name as {out[f.stem].name}; names must be unique")
        out[f.stem] = f
    if not out:
        raise BenchError(f"{folder}: no images (PNG, JPG or TIFF)")
    return out


def case_id(stem: str) -> str:
    """A file stem made safe for the layout's file names and list files."""
    cid = re.sub(r"[^A-Za-z0-9.-]+", "-", stem).strip("-.") or "image"
    return cid.replace("_slice", "-slice")


def pair(root: Path) -> dict[str, tuple[Path, Path]]:
    """case id -> (image, mask); every image needs a mask and every mask an image."""
    images, masks = _listing(root / "images"), _listing(root / "masks")
    pairs: dict[str, tuple[Path, Path]] = {}
    used: set[str] = set()
    for stem, img in images.items():
        mask_stem = stem if stem in masks else f"{stem}_mask" if f"{stem}_mask" in masks else None
        if mask_stem is None:
            raise BenchError(f"{img}: no mask (expected masks/{stem}.png or masks/{stem}_mask.png)")
        cid = case_id(stem)
        if cid in pairs:
            raise BenchError(f"{img}: its name clashes with {pairs[cid][0].name} once made file-safe ('{cid}')")
        pairs[cid] = (img, masks[mask_stem])
        used.add(mask_stem)
    for stem, mask in masks.items():
        if stem not in used:
            raise BenchError(f"{mask}: no image with this name in {root / 'images'}")
    if len(pairs) < 2:
        raise BenchError(f"{root}: need at least two image/mask pairs (one to train, one to test)")
    return pairs


def _open(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except Exception as e:  # truncated, not an image, unsupported TIFF compression...
        raise BenchError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    n_frames = getattr(im, "n_frames", 1)  # only multi-frame formats (TIFF, GIF) have it
    if n_frames > 1:
        raise BenchError(f"{path}: {n_frames} frames; one 2D image per file please")
    return im


COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV")
MASK_255, MASK_IDS = "0/255", "class ids"


def is_colour(path: Path) -> bool:
    """True for colour content: a colour mode whose channels differ (a gray scan saved as RGB is gray)."""
    im = _open(path)
    if im.mode not in COLOUR_MODES:
        return False
    rgb = np.asarray(im.convert("RGB"))
    return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def read_image(path: Path, channels: int = 1) -> np.ndarray:
    """Float32 in [0, 1]: H x W (``channels`` 1: colour converted to gray) or H x W x 3
    (``channels`` 3: gray repeated into the three channels)."""
    if channels == 3:
        im = _open(path)
        if im.mode in COLOUR_MODES:
            arr = np.asarray(im.convert("RGB"), np.float32) / 255.0
        else:
            arr = np.repeat(read_image(path, 1)[..., None], 3, axis=2)
        if arr.min() == arr.max():
            raise BenchError(f"{path}: image is constant; nothing to segment")
        return arr.astype(np.float32)
    if channels != 1:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    im = _open(path)
    if im.mode in COLOUR_MODES:
        rgb = np.asarray(im.convert("RGB"), np.float32)
        arr = rgb @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    elif im.mode in ("L", "LA", "1"):
        arr = np.asarray(im.convert("L"), np.float32) / 255.0
    else:  # I;16, I, F: no fixed range, so per image
        arr = np.asarray(im, np.float32)
        if arr.ndim == 2 and np.all(np.isfinite(arr)) and arr.max() > arr.min():
            arr = (arr - arr.min()) / (arr.max() - arr.min())
    if arr.ndim != 2:
        raise BenchError(f"{path}: unsupported image mode {im.mode}")
    if not np.all(np.isfinite(arr)):
        raise BenchError(f"{path}: image contains NaN or infinite values")
    if arr.min() == arr.max():
        raise BenchError(f"{path}: image is constant; nothing to segment")
    return arr.astype(np.float32)


def read_mask(path: Path) -> np.ndarray:
    """Integer class map, H x W (raw values: 0/255 not yet folded to 0/1)."""
    im = _open(path)
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im)[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise BenchError(f"{path}: colour mask; save masks as class indices (grayscale or palette PNG)")
        return rgb[..., 0].astype(np.int64)
    if im.mode == "LA":
        im = im.getchannel("L")
    arr = np.asarray(im)
    if arr.ndim != 2:
        raise BenchError(f"{path}: unsupported mask mode {im.mode}")
    if arr.dtype.kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise BenchError(f"{path}: mask values are not integers")
    return arr.astype(np.int64)


def _class_names(root: Path) -> list[str] | None:
    path = root / CLASS_FILE
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"{path}: unreadable class names ({e})") from None
    names = [s.strip() for s in text.splitlines() if s.strip() and not s.startswith("#")]
    if names and names[0].lower() in ("background", "bg"):
        names = names[1:]
    if not names or len(names) > 255:
        raise BenchError(f"{path}: name the classes 1..K, one per line (1 <= K <= 255)")
    return names


def class_encoding(root: Path, masks: dict[str, Path], values: dict[str, set[int]]) -> tuple[dict[int, str], bool]:
    """(organs, fold 255 -> 1) from every mask's values; names the first mask that breaks it."""
    names = _class_names(root)
    union = set().union(*values.values())
    if union <= {0}:
        raise BenchError(f"{root / 'masks'}: every mask is empty (no foreground anywhere)")
    single = names is None or len(names) == 1
    binary255 = single and 255 in union and union <= {0, 1, 255} and not {1, 255} <= union
    if names is None and 255 in union and not binary255:
        first = next(c for c, v in values.items() if 255 in v)
        other = next(c for c, v in values.items() if v - {0, 255})
        raise BenchError(f"{masks[other]}: values {sorted(values[other] - {0, 255})[:5]} while "
                         f"{masks[first].name} uses 255; binary masks are 0/255 or 0/1, class masks 0..K"
                         + _jpeg_hint(masks[other]))
    k = len(names) if names is not None else (1 if binary255 else max(union))
    if names is None and not binary255:
        _check_no_gap(masks, values, k)
    if k > 255:
        first = next(c for c, v in values.items() if max(v) > 255)
        raise BenchError(f"{masks[first]}: mask value {max(values[first])}; at most 255 classes")
    allowed = set(range(k + 1)) | ({255} if binary255 else set())
    for cid, vals in values.items():
        bad = sorted(vals - allowed)
        if bad:
            raise BenchError(f"{masks[cid]}: mask values {bad[:5]} are not classes 0..{k}"
                             + (f" ({CLASS_FILE} names {k})" if names else "") + _jpeg_hint(masks[cid]))
    if names is None:
        names = ["foreground"] if k == 1 else [f"class_{i}" for i in range(1, k + 1)]
    return {i + 1: n for i, n in enumerate(names)}, binary255


def _check_no_gap(masks: dict[str, Path], values: dict[str, set[int]], k: int) -> None:
    """Classes read from the masks alone must each be in some mask: one stray value (200 among
    0..3) would otherwise make a 201-class dataset. classes.txt declares classes no mask holds."""
    union = set().union(*values.values())
    missing = sorted(set(range(1, k + 1)) - union)
    if not missing:
        return
    gap = missing[0]
    above = {v for v in union if v > gap}
    cid = next(c for c, v in values.items() if v & above)
    stray = sorted(values[cid] & above)
    held = "background 0" if gap == 1 else f"the classes 0..{gap - 1}"
    run = [v for v in missing if v < min(above)]
    hole = str(run[0]) if len(run) == 1 else f"{run[0]}..{run[-1]}"
    raise BenchError(f"{masks[cid]}: mask value{'s' if len(stray) > 1 else ''} {', '.join(map(str, stray[:5]))} "
                     f"beyond {held} that the masks hold (no mask holds {hole}); class masks hold 0..K with every "
                     f"class in some mask: fix the mask, or name the K classes in {CLASS_FILE}"
                     + _jpeg_hint(masks[cid]))


def _jpeg_hint(path: Path) -> str:
    return "; JPEG masks are lossy, save masks as PNG" if path.suffix.lower() in (".jpg", ".jpeg") else ""


def fingerprint(root: Path, pairs: dict[str, tuple[Path, Path]]) -> str:
    h = hashlib.sha256(f"images2d v{VERSION}|{root.resolve()}".encode())
    extra = [root / CLASS_FILE] if (root / CLASS_FILE).exists() else []
    for f in [p for pr in pairs.values() for p in pr] + extra:
        h.update(f"|{f.relative_to(root)}|".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def folder_channels(root: Path, images: list[Path], say=print) -> int:
    """3 when most images are colour (a tie too: nothing is lost), else 1; a mix is said once."""
    colour = sum(is_colour(p) for p in images)
    channels = 3 if 2 * colour >= len(images) else 1
    if 0 < colour < len(images):
        say(f"{root / 'images'}: {colour} colour and {len(images) - colour} gray images; converting all to "
            + ("colour (3 channels)" if channels == 3 else "gray (1 channel)") + ", the majority")
    return channels


def convert(root: Path, pairs: dict[str, tuple[Path, Path]], out: Path, say=print) -> None:
    """Check every pair and write the converted dataset to out (all or nothing)."""
    say(f"checking and converting {len(pairs)} image/mask pairs from {root} ...")
    masks = {cid: m for cid, (_, m) in pairs.items()}
    values = {cid: set(label_values(read_mask(m))) for cid, m in masks.items()}
    organs, fold255 = class_encoding(root, masks, values)
    channels = folder_channels(root, [img for img, _ in pairs.values()], say)
    try:
        with layout.building(out) as tmp:
            for cid, (img_path, mask_path) in pairs.items():
                image, mask = read_image(img_path, channels), read_mask(mask_path)
                if image.shape[:2] != mask.shape:
                    raise BenchError(f"{mask_path}: mask is {mask.shape[1]} x {mask.shape[0]}, "
                                     f"image is {image.shape[1]} x {image.shape[0]}")
                if fold255:
                    mask = np.where(mask == 255, 1, mask)
                layout.write_case(tmp, cid, image[None], mask[None].astype(np.uint8), spacing=None)
            layout.write_lists(tmp, [], [])
            layout.write_meta(tmp, organs, source=str(root.resolve()), version=VERSION, channels=channels,
                              mask_values=MASK_255 if fold255 else MASK_IDS,
                              files={cid: [str(p.relative_to(root)) for p in pr] for cid, pr in pairs.items()})
    except OSError:
        if not layout.files(out).meta.exists():  # another process converting the same folder won
            raise


def open_folder(root: Path, say=print) -> Dataset:
    """The Dataset for an images/ + masks/ folder (converted into the cache on first use)."""

    root = Path(root).expanduser()
    pairs = pair(root)
    out = cache_dir() / "images2d" / f"{case_id(root.resolve().name)}-{fingerprint(root, pairs)}"
    if layout.read_meta(out) is None:
        convert(root, pairs, out, say=say)
    doc = stored_split(root, sorted(pairs), root / "images", "image", TEST_FRACTION, SPLIT_SEED, say)
    meta = layout.read_meta(out)
    assert meta is not None  # present before, or written by convert()
    split_file = str(splits_path(root).resolve())
    if meta.get("splits_file") != split_file:
        layout.write_meta(out, meta["organs"], **{k: v for k, v in meta.items() if k != "organs"}
                          | {"splits_file": split_file})
    train = sorted(doc["train"] + doc.get("val", []))
    want = ("".join(f"{layout.slice_name(c, 0)}\n" for c in train), "".join(f"{c}\n" for c in doc["test"]))
    if (_text(layout.files(out).train_list), _text(layout.files(out).test_list)) != want:
        layout.atomic_text(layout.files(out).train_list, want[0])
        layout.atomic_text(layout.files(out).test_list, want[1])
    return replace(open_synapse(out, root.resolve().name, meta["organs"]), channels=int(meta.get("channels", 1)))


def _text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None
