"""nnU-Net v2 raw datasets as ``--dataset PATH`` (the folder holding dataset.json, imagesTr/, labelsTr/).

The folder is checked (bench.data.nnunet_raw) and converted once into the Synapse layout in the
cache, keyed by a fingerprint of its files' content, built in a hidden folder and renamed into
place; the engine then reads it like any other dataset. Reading the files directly is no option:
training reads single slices at random, and a compressed NIfTI must be decompressed whole for each.

- Volumes (.nii.gz, .nii, .nrrd, .mha) are read with SimpleITK and keep their geometry as ``bench
  data import`` keeps it: spacing, origin and direction of the grid go into each volume's attributes.
  Datasets whose channels are all CT are reoriented to DICOM LPS (axial slices first), as import
  does; any other keeps the voxel order of its files (MR stacks are oblique), as ``prepare-acdc``
  does. 2D files (.png, .bmp, .tif) are read as image folders are (bench.data.folders2d).
- Channels: every ``_XXXX`` file is a channel (a colour 2D file gives three); several become
  the input channels of the models, D x H x W x C.
- Intensities, per channel by nnU-Net's channel name: ``CT`` is clipped to the 0.5 and 99.5
  percentiles of the foreground voxels of the training cases (imagesTr), the bounds nnU-Net's own CT
  normalisation uses, and scaled to [0, 1] (nnU-Net then z-scores with the foreground mean and
  standard deviation: a linear map of the same values). Any other name is min-max scaled per
  volume to [0, 1], as ACDC is (nnU-Net z-scores each image: again linear per image, up to the
  clipping of outliers a min-max does not do). 2D images: 8-bit / 255, deeper per image. A dataset
  this harness exported (its dataset.json carries a ``segbench`` entry) was normalised already: its
  values are read as stored and its recorded preprocessing carried on. What was done goes into the
  converted dataset.json (``source.normalization``, ``source.preprocessing``).
- Classes come from ``labels``. Test cases: those of ``labelsTs`` when it has any. Otherwise
  ``splits.json`` (drawn once, seed 0, 20 % test, when absent, as for image folders); or, with
  ``--fold K``, nnU-Net's ``splits_final.json`` beside dataset.json: train on fold K's ``train``,
  test on its ``val``, the cases nnU-Net's cross-validation scores. Without that file ``--fold K``
  is fold K of ``splits.json``, as for every other folder.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench.data import folders2d, layout
from bench.data.acdc import minmax
from bench.data.ct_import import canonical, check_image, check_same_grid, ct_window, grid_of, read_volume
from bench.data.labelmaps import LabelMap
from bench.data.nnunet_raw import NNUNET_SPLITS, RawCase, RawDataset, read_nnunet_splits, read_raw
from bench.data.preprocessing import Preprocessing
from bench.data.splits import fold_view, read_splits, splits_path, stored_split
from bench.data.synapse import Dataset, open_synapse
from bench.errors import BenchError
from bench.files import atomic_text
from bench.paths import cache_dir

VERSION = 1
MARKER = "segbench"  # the dataset.json entry of a dataset this harness exported (bench.data.nnunet_export)
CT_PERCENTILES = (0.5, 99.5)
STATS_VOXELS = 100_000  # foreground voxels sampled per training case for the CT window
TEST_FRACTION, SPLIT_SEED = 0.2, 0


def _files(raw: RawDataset) -> list[Path]:
    cases = [*raw.training.values(), *raw.test.values()]
    return [raw.root / layout.META] + [f for c in cases for f in (*c.images, c.label)]


def fingerprint(raw: RawDataset) -> str:
    """A hash of the folder's path and of its files' content. Hashing every byte on every open would
    cost minutes on a large CT set, so the hash is remembered under the files' sizes and times."""
    files = _files(raw)
    stat = hashlib.sha256(f"nnunet v{VERSION}|{raw.root.resolve()}".encode())
    for f in files:
        st = f.stat()
        stat.update(f"|{f.relative_to(raw.root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    memo = cache_dir() / "nnunet" / "fingerprints" / stat.hexdigest()[:32]
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256(f"nnunet v{VERSION}|{raw.root.resolve()}".encode())
    for f in files:
        h.update(f"|{f.relative_to(raw.root)}|".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    out = h.hexdigest()[:16]
    try:
        atomic_text(memo, out + "\n")
    except OSError:
        pass  # a read-only cache only costs the hash next time
    return out


def ct_windows(raw: RawDataset, say=print) -> dict[int, tuple[float, float]]:
    """channel -> (lo, hi): the CT_PERCENTILES of the training cases' foreground intensities."""
    channels = raw.ct_channels()
    if not channels or MARKER in raw.doc:
        return {}
    say(f"computing the CT window of {len(raw.training)} training cases (nnU-Net's foreground percentiles) ...")
    rng = np.random.default_rng(SPLIT_SEED)
    samples: dict[int, list[np.ndarray]] = {c: [] for c in channels}
    for case in sorted(raw.training):
        rc = raw.training[case]
        fg = sitk.GetArrayFromImage(read_volume(rc.label)) > 0
        for c in channels:
            values = sitk.GetArrayFromImage(read_volume(rc.images[c]))
            if values.shape != fg.shape:
                raise BenchError(f"{rc.label}: label is {fg.shape}, image {rc.images[c].name} is {values.shape}")
            values = values[fg] if fg.any() else values.ravel()
            samples[c].append(values if values.size <= STATS_VOXELS else
                              values[rng.choice(values.size, STATS_VOXELS, replace=False)])
    out = {}
    for c, parts in samples.items():
        lo, hi = (float(v) for v in np.percentile(np.concatenate(parts), CT_PERCENTILES))
        if not lo < hi:
            raise BenchError(f"{raw.root}: CT channel {c} has one intensity ({lo:g}) in the labelled voxels")
        out[c] = (lo, hi)
    return out


Normalize = Callable[[np.ndarray, Path], np.ndarray]


def _normalizers(raw: RawDataset, windows: dict[int, tuple[float, float]]) -> tuple[list[Normalize], list[dict]]:
    """One function per channel (array, path -> float32) and what each does, for the dataset.json."""
    funcs: list[Normalize] = []
    notes: list[dict] = []
    for c, name in enumerate(raw.channel_names):
        if raw.image2d:
            notes.append({"channel": name, "scheme": "8-bit / 255, deeper images per image to [0, 1]"})
        elif MARKER in raw.doc:
            funcs.append(_as_stored)
            notes.append({"channel": name, "scheme": "as stored (normalised when segbench exported it)"})
        elif c in windows:
            funcs.append(partial(_windowed, window=windows[c]))
            notes.append({"channel": name, "scheme": "CT window to [0, 1]", "window": list(windows[c]),
                          "from": f"percentiles {CT_PERCENTILES} of the training cases' foreground"})
        else:
            funcs.append(minmax)
            notes.append({"channel": name, "scheme": "min-max per volume to [0, 1]"})
    return funcs, notes


def _windowed(array: np.ndarray, path: Path, window: tuple[float, float]) -> np.ndarray:
    return ct_window(array, window, path)


def _as_stored(array: np.ndarray, path: Path) -> np.ndarray:
    check_image(array, path)
    return array.astype(np.float32)


def _volume_case(rc: RawCase, label_map: LabelMap, orient: bool,
                 normalize: list[Normalize]) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], dict]:
    images = [read_volume(p) for p in rc.images]
    label = read_volume(rc.label)
    if orient:
        images, label = [canonical(im) for im in images], canonical(label)
    for p, im in zip(rc.images[1:], images[1:], strict=True):
        check_same_grid(images[0], im, p, ("channel", "first channel"))
    check_same_grid(images[0], label, rc.label)
    arrays = [f(sitk.GetArrayFromImage(im), p) for f, im, p in zip(normalize, images, rc.images, strict=True)]
    image = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)
    lab = label_map.apply(sitk.GetArrayFromImage(label), str(rc.label))
    return image, lab, tuple(float(s) for s in reversed(images[0].GetSpacing())), grid_of(images[0])


def _image_case(rc: RawCase, channels: int, label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    counts = [folders2d.file_channels(p) for p in rc.images]
    if sum(counts) != channels:
        raise BenchError(f"{rc.images[0]}: case {rc.label.name[: -len(rc.label.suffix)]} has {sum(counts)} "
                         f"channel(s) in {len(counts)} file(s), dataset.json names {channels}")
    planes = [folders2d.read_image(p, n) for p, n in zip(rc.images, counts, strict=True)]
    for p, im in zip(rc.images[1:], planes[1:], strict=True):
        if im.shape[:2] != planes[0].shape[:2]:
            raise BenchError(f"{p}: {im.shape[1]} x {im.shape[0]}, the first channel is "
                             f"{planes[0].shape[1]} x {planes[0].shape[0]}")
    image = planes[0] if len(planes) == 1 else np.concatenate([p.reshape(*p.shape[:2], -1) for p in planes], axis=2)
    label = label_map.apply(folders2d.read_mask(rc.label), str(rc.label))
    if label.shape != image.shape[:2]:
        raise BenchError(f"{rc.label}: mask is {label.shape[1]} x {label.shape[0]}, image is "
                         f"{image.shape[1]} x {image.shape[0]}")
    return image[None], label[None]


def preprocessing_of(raw: RawDataset, windows: dict[int, tuple[float, float]]) -> Preprocessing:
    """What ``bench predict`` must repeat on new images of this dataset."""
    n = len(raw.channel_names)
    if MARKER in raw.doc and isinstance(raw.doc[MARKER].get("preprocessing"), dict):
        return Preprocessing.from_dict(raw.doc[MARKER]["preprocessing"])
    if raw.image2d:
        return Preprocessing("image2d", n, None, False, problem=None if n in (1, 3) else (
            f"{raw.root}: {n} channels per image; bench predict reads gray or colour images"))
    orient = bool(raw.ct_channels()) and len(raw.ct_channels()) == n
    if n > 1:
        return Preprocessing("volume", n, None, orient, problem=(
            f"{raw.root}: {n} channels per case ({', '.join(raw.channel_names)}); bench predict reads "
            "one-channel volumes"))
    return Preprocessing("volume", 1, windows.get(0), orient)


def convert(raw: RawDataset, out: Path, say=print) -> None:
    """Check and convert every labelled case into the Synapse layout at out (all or nothing)."""
    windows = ct_windows(raw, say)
    prep = preprocessing_of(raw, windows)
    orient = prep.orient and MARKER not in raw.doc  # an export is stored in the layout's own voxel order
    normalize, notes = _normalizers(raw, windows)
    label_map = LabelMap("nnunet", {i: i for i in raw.organs}, frozenset(range(max(raw.organs) + 1)), raw.organs)
    cases = [(c, rc, "imagesTr") for c, rc in sorted(raw.training.items())]
    cases += [(c, rc, "imagesTs") for c, rc in sorted(raw.test.items())]
    say(f"checking and converting {len(cases)} cases of {raw.root} ...")
    info = {}
    with layout.building(out) as tmp:
        for i, (case, rc, folder) in enumerate(cases):
            if i % 10 == 0 and len(cases) > 10:
                say(f"[{i + 1}/{len(cases)}] {case}")
            if raw.image2d:
                image, label = _image_case(rc, len(raw.channel_names), label_map)
                names = layout.write_case(tmp, case, image, label, spacing=None)
            else:
                image, label, spacing, grid = _volume_case(rc, label_map, orient, normalize)
                names = layout.write_case(tmp, case, image, label, spacing, grid)  # type: ignore[arg-type]
            info[case] = {"slices": len(names), "folder": folder}
        layout.write_lists(tmp, [], [])
        layout.write_meta(tmp, raw.organs, version=VERSION, channels=len(raw.channel_names), nnunet_cases=info,
                          source={"kind": "nnunet", "raw": str(raw.root.resolve()), "name": raw.doc.get("name"),
                                  "channel_names": list(raw.channel_names), "file_ending": raw.file_ending,
                                  "orientation": "LPS" if orient else "as stored", "normalization": notes,
                                  "preprocessing": prep.to_dict(), "dataset_json": raw.doc})


def _base_split(raw: RawDataset, say=print) -> tuple[list[str], list[str]]:
    """(training, test) cases: labelsTs when it has cases, else the folder's splits.json."""
    root = raw.root
    if raw.test:
        test = sorted(raw.test)
        doc = read_splits(root)
        if doc is not None and sorted(doc["test"]) != test:
            raise BenchError(f"{splits_path(root)}: its test cases are not those of {root / 'labelsTs'}, "
                             "which decide the test cases; delete it or make it match")
        return sorted(raw.training), test
    doc = stored_split(root, sorted(raw.training), root / "imagesTr", "case", TEST_FRACTION, SPLIT_SEED, say)
    return sorted(doc["train"] + doc.get("val", [])), sorted(doc["test"])


def _sync(out: Path, meta: dict, root: Path, train_slices: list[str], test: list[str]) -> None:
    """Point the converted folder at the source's split file and write its lists (when they changed)."""
    split_file = str(splits_path(root).resolve())
    if meta.get("splits_file") != split_file:
        layout.write_meta(out, meta["organs"], **{k: v for k, v in meta.items() if k != "organs"}
                          | {"splits_file": split_file})
    want = ("".join(f"{s}\n" for s in train_slices), "".join(f"{c}\n" for c in test))
    have = tuple((out / f).read_text() if (out / f).exists() else None for f in (layout.TRAIN_LIST, layout.TEST_LIST))
    if have != want:
        atomic_text(out / layout.TRAIN_LIST, want[0])
        atomic_text(out / layout.TEST_LIST, want[1])


def open_nnunet(root: Path, fold: int | None = None, say=print) -> Dataset:
    """The Dataset of an nnU-Net v2 raw folder (converted into the cache on first use); ``fold``: fold K
    of its splits_final.json when it has one, else of its splits.json."""
    root = Path(root).expanduser()
    raw = read_raw(root)
    out = cache_dir() / "nnunet" / f"{folders2d.case_id(root.resolve().name)}-{fingerprint(raw)}"
    if layout.read_meta(out) is None:
        try:
            convert(raw, out, say=say)
        except (OSError, BenchError):
            if layout.read_meta(out) is None:
                raise
            # another process converting the same folder finished first: its result is ours
    meta = layout.read_meta(out)
    assert meta is not None
    slices = {c: [layout.slice_name(c, k) for k in range(v["slices"])] for c, v in meta["nnunet_cases"].items()}
    channels, name = int(meta["channels"]), root.resolve().name
    nn_splits = root / NNUNET_SPLITS
    if fold is not None and nn_splits.is_file():
        folds = read_nnunet_splits(nn_splits, set(raw.training))
        if not 0 <= fold < len(folds):
            raise BenchError(f"--fold {fold}: {nn_splits} has {len(folds)} fold(s) (valid: 0..{len(folds) - 1})")
        train, val = sorted(folds[fold]["train"]), sorted(folds[fold]["val"])
        return Dataset(f"{name}-fold{fold}", out, [s for c in train for s in slices[c]], val, meta["organs"],
                       channels=channels)
    if fold is None and not raw.test and nn_splits.is_file():
        raise BenchError(f"{root}: no labelsTs/ to test on, and it has nnU-Net's {NNUNET_SPLITS}: give --fold K "
                         "(train on fold K's train cases, test on its val cases)")
    train, test = _base_split(raw, say)
    _sync(out, meta, root, [s for c in train for s in slices[c]], test)
    ds = replace(open_synapse(out, name, meta["organs"]), channels=channels)
    return ds if fold is None else fold_view(ds, fold)
