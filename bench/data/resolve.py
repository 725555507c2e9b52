"""Turning a ``--dataset`` value into a dataset on disk.

Forms: ``synthetic`` and ``synthetic-cardiac`` (generated into the cache), ``synapse`` with ``--data-root DIR`` (the
official preprocessed files), a folder in the Synapse layout (made by ``bench data import``,
``prepare-btcv``, ``prepare-acdc`` or by hand), a folder of 2D images with ``images/`` and
``masks/``, or an nnU-Net v2 raw dataset (its dataset.json is nnU-Net's: ``layout.is_nnunet_meta``;
bench.data.nnunet). Folders are checked up front (bench.data.validate); class names come from the
folder's ``dataset.json`` when it has one, else they are the Synapse organs.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.data.layout import LIST_DIR, files
from bench.data.organs import SYNAPSE_ORGANS
from bench.data.synapse import Dataset, open_synapse
from bench.errors import BenchError
from bench.paths import cache_dir


def synthetic(seed: int = 0, say=print) -> Dataset:
    """The built-in synthetic abdomen, generated into the cache on first use."""
    from bench.data.synthetic import generate as synth

    root = cache_dir() / f"synthetic-seed{seed}"
    if not synth.is_current(root, seed):
        say(f"generating the synthetic abdomen (seed {seed}) into {root} ...")
        synth.generate(root, seed=seed)
    return open_synapse(root, "synthetic", SYNAPSE_ORGANS)


def synthetic_cardiac(seed: int = 0, say=print) -> Dataset:
    """The built-in synthetic cardiac MR (ACDC's classes and layout), generated into the cache on first use."""
    from bench.data.acdc import ACDC
    from bench.data.synthetic import cardiac

    root = cache_dir() / f"synthetic-cardiac-seed{seed}"
    if not cardiac.is_current(root, seed):
        say(f"generating the synthetic cardiac MR (seed {seed}) into {root} ...")
        cardiac.generate(root, seed=seed)
    return open_synapse(root, "synthetic-cardiac", ACDC.organs)


def open_layout(root: Path, name: str | None = None, say=print) -> Dataset:
    """A checked Synapse-layout folder, with its own class names if it has a dataset.json."""
    from bench.data.layout import read_meta
    from bench.data.validate import validate_layout

    if not files(root).list_dir.is_dir():
        raise BenchError(f"{root}: not a dataset in the Synapse layout (no {LIST_DIR}/) "
                         "and not an image folder (no images/ and masks/)")
    meta = read_meta(root)
    organs = meta["organs"] if meta else SYNAPSE_ORGANS
    validate_layout(root, max(organs) + 1, say=say)
    ds = open_synapse(root, name or root.resolve().name, organs)
    return replace(ds, channels=int(meta.get("channels", 1))) if meta else ds


def resolve_dataset(spec: str, say=print, data_root: Path | str | None = None, fold: int | None = None) -> Dataset:
    """``synthetic``, ``synthetic-cardiac``, ``synapse`` (with data_root), or a dataset folder; fold k of its
    stored K-fold split (for an nnU-Net folder with a splits_final.json, fold k of that file)."""
    from bench.data import folders2d, nnunet, nnunet_raw, splits

    if data_root is not None and spec != "synapse":
        raise BenchError("--data-root is only used with --dataset synapse; pass other folders as --dataset PATH")
    if spec == "synthetic":
        ds = synthetic(say=say)
    elif spec == "synthetic-cardiac":
        ds = synthetic_cardiac(say=say)
    elif spec == "synapse":
        if data_root is None:
            raise BenchError("--dataset synapse needs --data-root DIR (the folder holding train_npz/, "
                             "test_vol_h5/ and lists/lists_Synapse/)")
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise BenchError(f"--data-root: folder not found: {root}")
        ds = open_layout(root, "synapse", say=say)
    else:
        root = Path(spec).expanduser()
        if not root.exists():
            raise BenchError(f"dataset folder not found: {root}")
        if not root.is_dir() or not any(root.iterdir()):
            raise BenchError(f"dataset folder is empty or not a folder: {root}")
        if nnunet_raw.is_nnunet_folder(root):
            return nnunet.open_nnunet(root, fold, say=say)
        ds = folders2d.open_folder(root, say=say) if folders2d.is_image_folder(root) else open_layout(root, say=say)
    return ds if fold is None else splits.fold_view(ds, fold)
