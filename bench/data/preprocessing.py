"""What a dataset's images went through before training, so new images can go through the same.

``describe(ds)`` reads it from the dataset folder (``dataset.json`` written by import, the
adapters, the 2D converter and the nnU-Net converter, which records its own decision;
``synth.json`` of the synthetic abdomen; neither for the official preprocessed Synapse files)
and every run records it in its manifest (``dataset.preprocessing``); ``bench predict`` applies
it to new scans and images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from bench.data import layout
from bench.data.ct_import import CT_WINDOW
from bench.data.synapse import Dataset


@dataclass(frozen=True)
class Preprocessing:
    kind: str  # "volume": CT / MR volumes, axial slices; "image2d": PNG / JPG / TIFF images
    channels: int = 1
    # volumes: HU window clipped and scaled to [0, 1]; None: min-max scaled per volume (MR)
    window: tuple[float, float] | None = CT_WINDOW
    orient: bool = True  # volumes reoriented to DICOM LPS, as `bench data import` does
    mask_values: str = "class ids"  # image2d: how the training masks were written ("0/255" or "class ids")
    problem: str | None = None  # why it cannot be repeated as is (e.g. cases imported with several windows)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window) if self.window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        d = dict(d)
        d["window"] = tuple(d["window"]) if d.get("window") is not None else None
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def describe(ds: Dataset) -> Preprocessing:
    """The preprocessing of ``ds``'s images, from what its folder records."""
    return describe_folder(Path(ds.root), ds.channels)


def describe_folder(root: Path, channels: int = 1) -> Preprocessing:
    """``describe`` for a dataset folder (in the Synapse layout) given by its path."""
    meta = layout.read_meta(root)
    if meta is None:
        # synth.json (the synthetic abdomen) or the official preprocessed files: the Synapse CT window
        return Preprocessing("volume", channels)
    source = meta.get("source")
    if isinstance(source, dict) and source.get("kind") == "nnunet":  # decided when converted (bench.data.nnunet)
        return Preprocessing.from_dict(source["preprocessing"])
    if "mask_values" in meta or "files" in meta:  # a converted 2D image folder (bench.data.folders2d)
        return Preprocessing("image2d", int(meta.get("channels", channels)), None, False,
                             meta.get("mask_values", "class ids"))
    if isinstance(source, dict) and source.get("kind") == "acdc":
        return Preprocessing("volume", channels, None, False)
    if isinstance(source, dict) and source.get("window"):
        return Preprocessing("volume", channels, tuple(source["window"]))
    windows = {tuple(c["window"]) for c in (meta.get("cases") or {}).values() if c.get("window")}
    if len(windows) > 1:
        return Preprocessing("volume", channels, None, True, problem=(
            f"{root}: its cases were imported with different CT windows "
            f"({', '.join(f'{lo:g} {hi:g}' for lo, hi in sorted(windows))}); pass --window LO HI"))
    return Preprocessing("volume", channels, windows.pop() if windows else CT_WINDOW)
