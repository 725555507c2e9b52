"""What an nnU-Net v2 raw dataset folder is, checked up front (read by ``bench.data.nnunet``, written
by ``bench.data.nnunet_export``).

    dataset.json                  channel_names, labels, numTraining, file_ending (nnU-Net's keys)
    imagesTr/<case>_<XXXX><end>   one file per channel (a 2D colour file holds three channels)
    labelsTr/<case><end>          class ids 0..K, consecutive, on the image's grid
    imagesTs/, labelsTs/          optional; cases with a label in labelsTs are test cases
    splits_final.json             optional: nnU-Net's folds, a list of {"train": [...], "val": [...]}

Refused with one line, not approximated: region labels (``regions_class_order`` or a label that is
a list of ids; their voxels carry no single class) and an ``ignore`` label (partly annotated
images: this harness trains and scores every voxel). Case names stay as nnU-Net wrote them; they
follow the name rule (bench.names) and may not contain ``_slice``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.data.layout import META, is_nnunet_meta
from bench.data.names import check_case_name
from bench.errors import BenchError

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
IMAGE_ENDINGS = (".png", ".bmp", ".tif")  # nnU-Net's NaturalImage2DIO; JPEG is lossy, nnU-Net refuses it too
# readers that read the pixels SimpleITK / PIL read (NibabelIOWithReorient only reorients to RAS)
READERS = {"SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient", "NaturalImage2DIO"}
NNUNET_SPLITS = "splits_final.json"
CT = "ct"  # nnU-Net's channel name for its CT normalisation (compared casefolded, as nnU-Net does)
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class RawCase:
    images: tuple[Path, ...]  # channel files _0000, _0001, ...
    label: Path


@dataclass(frozen=True)
class RawDataset:
    root: Path
    doc: dict  # dataset.json as written
    channel_names: tuple[str, ...]
    organs: dict[int, str]  # class id -> name, from ``labels``
    file_ending: str
    training: dict[str, RawCase]
    test: dict[str, RawCase]  # labelled cases of imagesTs / labelsTs
    unlabelled_test: tuple[str, ...] = field(default=())

    @property
    def image2d(self) -> bool:
        return self.file_ending in IMAGE_ENDINGS

    def ct_channels(self) -> list[int]:
        return [i for i, name in enumerate(self.channel_names) if name.casefold() == CT]


def is_nnunet_folder(root: Path) -> bool:
    """A folder whose dataset.json is nnU-Net's (``layout.is_nnunet_meta``), never one of ours."""
    path = Path(root) / META
    if not path.is_file():
        return False
    try:
        return is_nnunet_meta(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset004_Hippocampus``: nnU-Net's folder name for an id and a name."""
    return f"Dataset{dataset_id:03d}_{name}"


def _labels(doc: dict, path: Path) -> dict[int, str]:
    labels = doc["labels"]
    if not isinstance(labels, dict) or not labels:
        raise BenchError(f"{path}: 'labels' must map class names to ids")
    if "regions_class_order" in doc or any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        raise BenchError(f"{path}: region labels (regions_class_order, or a label that is a list of ids) are not "
                         "supported; give every class one id")
    if "ignore" in labels:
        raise BenchError(f"{path}: an 'ignore' label (partly annotated images) is not supported: every voxel is "
                         "trained and scored here")
    try:
        ids = {int(v[0] if isinstance(v, (list, tuple)) else v): str(k) for k, v in labels.items()}
    except (TypeError, ValueError, IndexError):
        raise BenchError(f"{path}: 'labels' values must be integer class ids") from None
    if len(ids) != len(labels) or sorted(ids) != list(range(len(ids))) or len(ids) < 2:
        raise BenchError(f"{path}: 'labels' ids must be 0 (background) and 1..K, each once, consecutive; "
                         f"got {sorted(ids)}")
    if len(ids) > 256:
        raise BenchError(f"{path}: {len(ids) - 1} classes; at most 255")
    return {i: name for i, name in ids.items() if i != 0}


def read_description(root: Path) -> dict:
    """dataset.json, checked: nnU-Net's keys present, a known file ending and reader."""
    path = Path(root) / META
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}: unreadable dataset description ({type(e).__name__}: {e})") from None
    if not is_nnunet_meta(doc):
        raise BenchError(f"{path}: not an nnU-Net v2 dataset.json (it needs labels and channel_names)")
    if "channel_names" not in doc:
        doc["channel_names"] = doc["modality"]  # nnU-Net v1's name, still read by v2
    for key in ("numTraining", "file_ending"):
        if key not in doc:
            raise BenchError(f"{path}: no '{key}' (nnU-Net v2 needs channel_names, labels, numTraining, file_ending)")
    channels = doc["channel_names"]
    if not isinstance(channels, dict) or {str(k) for k in channels} != {str(i) for i in range(len(channels))}:
        raise BenchError(f"{path}: 'channel_names' must map 0..C-1 to names")
    doc["channel_names"] = {str(k): v for k, v in channels.items()}
    ending = doc["file_ending"]
    if ending not in VOLUME_ENDINGS + IMAGE_ENDINGS:
        raise BenchError(f"{path}: file_ending {ending!r} is not read here (volumes: {', '.join(VOLUME_ENDINGS)}; "
                         f"2D images: {', '.join(IMAGE_ENDINGS)})")
    reader = doc.get("overwrite_image_reader_writer")
    if reader is not None and reader not in READERS:
        raise BenchError(f"{path}: overwrite_image_reader_writer {reader!r} is not read here "
                         f"(readable: {', '.join(sorted(READERS))})")
    return doc


def _case_name(name: str, where: Path) -> str:
    check_case_name(name, str(where))
    if "_slice" in name:
        raise BenchError(f"{where}: case name {name!r} contains '_slice' (slice names here are <case>_sliceNNN)")
    return name


def _images(folder: Path, ending: str) -> dict[str, tuple[Path, ...]]:
    """case -> its channel files in order; a gap in the channel numbers is an error."""
    found: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file() or not f.name.endswith(ending):
            continue  # nnU-Net reads only files with the dataset's ending, so do we
        m = _CHANNEL_FILE.match(f.name[: -len(ending)])
        if m is None:
            raise BenchError(f"{f}: not named <case>_<XXXX>{ending} (XXXX: the channel, 0000 for the first)")
        found.setdefault(_case_name(m["case"], f), {})[int(m["channel"])] = f
    out = {}
    for case, files in found.items():
        if sorted(files) != list(range(len(files))):
            missing = min(set(range(max(files) + 1)) - set(files))
            raise BenchError(f"{folder / f'{case}_{missing:04d}{ending}'}: missing (case {case} has channel files "
                             f"{', '.join(f'{k:04d}' for k in sorted(files))})")
        out[case] = tuple(files[k] for k in sorted(files))
    return out


def _pairs(root: Path, images_dir: str, labels_dir: str, ending: str, n_channels: int,
           image2d: bool) -> tuple[dict[str, RawCase], list[str]]:
    """(labelled cases, cases without a label) of one images / labels folder pair."""
    images = _images(root / images_dir, ending) if (root / images_dir).is_dir() else {}
    labels = {}
    if (root / labels_dir).is_dir():
        for f in sorted((root / labels_dir).iterdir()):
            if not f.name.startswith(".") and f.is_file() and f.name.endswith(ending):
                labels[_case_name(f.name[: -len(ending)], f)] = f
    for case, f in labels.items():
        if case not in images:
            raise BenchError(f"{f}: no image (expected {root / images_dir / f'{case}_0000{ending}'})")
    cases = {}
    for case, files in images.items():
        if not image2d and len(files) != n_channels:
            raise BenchError(f"{root / images_dir}: case {case} has {len(files)} channel file(s), dataset.json "
                             f"names {n_channels} channels")
        if case in labels:
            cases[case] = RawCase(files, labels[case])
    return cases, sorted(set(images) - set(labels))


def read_raw(root: Path) -> RawDataset:
    """The checked description and file listing of an nnU-Net v2 raw dataset folder."""
    root = Path(root)
    doc = read_description(root)
    path = root / META
    organs = _labels(doc, path)
    ending = doc["file_ending"]
    names = tuple(str(doc["channel_names"][str(i)]) for i in range(len(doc["channel_names"])))
    image2d = ending in IMAGE_ENDINGS
    if not (root / "imagesTr").is_dir() or not (root / "labelsTr").is_dir():
        raise BenchError(f"{root}: an nnU-Net dataset needs imagesTr/ and labelsTr/ beside dataset.json")
    training, unlabelled = _pairs(root, "imagesTr", "labelsTr", ending, len(names), image2d)
    if unlabelled:
        raise BenchError(f"{root / 'labelsTr'}: no label for {len(unlabelled)} training case(s): "
                         f"{', '.join(unlabelled[:5])} (expected {root / 'labelsTr' / (unlabelled[0] + ending)})")
    if len(training) != doc["numTraining"]:
        raise BenchError(f"{path}: numTraining is {doc['numTraining']}, labelsTr holds {len(training)} case(s)")
    test, unlabelled_test = _pairs(root, "imagesTs", "labelsTs", ending, len(names), image2d)
    clash = sorted(set(training) & set(test))
    if clash:
        raise BenchError(f"{root}: case {clash[0]} is both in imagesTr and in imagesTs; case names must be unique")
    return RawDataset(root, doc, names, organs, ending, training, test, tuple(unlabelled_test))


def read_nnunet_splits(path: Path, cases: set[str]) -> list[dict[str, list[str]]]:
    """nnU-Net's splits_final.json, checked against the training cases."""
    try:
        folds = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}: unreadable split file ({type(e).__name__}: {e})") from None
    if not isinstance(folds, list) or not folds:
        raise BenchError(f"{path}: nnU-Net's split file is a list of folds, each {{'train': [...], 'val': [...]}}")
    for k, fold in enumerate(folds):
        if not isinstance(fold, dict) or not all(isinstance(fold.get(key), list) for key in ("train", "val")):
            raise BenchError(f"{path}: fold {k} must be an object with 'train' and 'val' lists")
        train, val = set(fold["train"]), set(fold["val"])
        stray = sorted((train | val) - cases)
        if stray:
            raise BenchError(f"{path}: fold {k} lists '{stray[0]}', which is not a training case of {path.parent}")
        if train & val or not train or not val:
            raise BenchError(f"{path}: fold {k} must have training and validation cases, disjoint")
    return folds
