"""``bench data ...``: create, import, prepare and split datasets."""
from __future__ import annotations

from pathlib import Path

import typer

from bench.cli.app import data_app
from bench.cli.options import FROM_FLAGS, console, run_options
from bench.errors import BenchError
from bench.experiments.options import RunOptions
from bench.paths import cache_dir


@data_app.command("synth")
def data_synth(
    out: Path | None = typer.Option(None, help="Output folder (default: the cache folder `bench run` uses)."),
    seed: int = typer.Option(0, help="Generator seed."),
) -> None:
    """Generate the built-in synthetic abdomen in the Synapse layout."""
    from bench.data.synthetic import generate as synth

    target = out or cache_dir() / f"synthetic-seed{seed}"
    if target.exists() and any(target.iterdir()):
        raise BenchError(f"{target} already exists and is not empty; choose another --out")
    synth.generate(target, seed=seed)
    console.print(f"wrote the synthetic abdomen (seed {seed}) to {target}")


@data_app.command("import")
def data_import(
    image: Path = typer.Option(..., help="CT image: a NIfTI file or a DICOM series folder."),
    label: Path = typer.Option(..., help="Label map on the same physical grid: NIfTI file or DICOM folder."),
    label_map: str = typer.Option(..., help="btcv, totalsegmentator, or a YAML file (see bench/data/labelmaps.py)."),
    case_id: str = typer.Option(..., help="Case name in the dataset, e.g. case0041."),
    out: Path = typer.Option(..., help="Dataset folder (created, or extended case by case)."),
    window: tuple[float, float] = typer.Option((-125.0, 275.0), help="CT window LO HI in HU, scaled to [0, 1]."),
    split: str = typer.Option("train", help="List the case for training (train) or testing (test)."),
) -> None:
    """Import one CT case (image + label) into a dataset in the Synapse layout."""
    from bench.data.ct_import import import_case
    from bench.data.labelmaps import load_label_map

    info = import_case(image, label, load_label_map(label_map), case_id, out, window, split)
    counts = ", ".join(f"{k} {v}" for k, v in info["voxels"].items())
    console.print(f"{info['case']}: {info['slices']} slices {'x'.join(map(str, info['shape'][1:]))}, spacing "
                  f"{'/'.join(f'{s:g}' for s in info['spacing'])} mm, listed for {split} in {out}\n"
                  f"voxels per class: {counts}", soft_wrap=True)


@data_app.command("prepare-btcv")
def data_prepare_btcv(
    raw_dir: Path = typer.Argument(..., help="Raw BTCV data (RawData/Training/img, label)."),
    out: Path = typer.Option(..., help="New dataset folder."),
) -> None:
    """The official Synapse preprocessing of the 30 labelled BTCV scans (18 train / 12 test)."""
    from bench.data.ct_import import prepare_btcv

    prepare_btcv(raw_dir, out, say=console.print)
    console.print(f"wrote the Synapse dataset to {out}; run it with: bench run --dataset {out}")


@data_app.command("prepare-acdc")
def data_prepare_acdc(
    raw_dir: Path = typer.Argument(..., help="ACDC training set (patient001/ ... patient100/)."),
    out: Path = typer.Option(..., help="New dataset folder."),
) -> None:
    """ACDC cardiac MRI (RV, Myo, LV) with the 70 / 10 / 20 patient split."""
    from bench.data.acdc import prepare_acdc

    prepare_acdc(raw_dir, out, say=console.print)
    console.print(f"wrote the ACDC dataset to {out}; run it with: bench run --dataset {out}")


@data_app.command("split")
def data_split(
    dataset: str = typer.Argument(..., help="A dataset folder (Synapse layout or images/ + masks/)."),
    folds: int | None = typer.Option(None, help="K-fold cross-validation over the training cases."),
    val_fraction: float | None = typer.Option(None, help="Carve this fraction of training cases for validation."),
    seed: int = typer.Option(0, help="Seed of the draw."),
) -> None:
    """Store K folds and/or a validation subset in the dataset's splits.json (training cases only)."""
    from bench.data.resolve import resolve_dataset
    from bench.data.splits import split_dataset

    path = split_dataset(resolve_dataset(dataset, say=console.print), folds, val_fraction, seed)
    console.print(f"wrote {path}" + (f"; run a fold with: bench run --dataset {dataset} --fold 0" if folds else ""))


@data_app.command("export-nnunet")
@run_options("protocol", "sets", "data_root", "fold", executor=False)
def data_export_nnunet(
    dataset: str = typer.Argument(..., help="Any dataset the harness reads (as `bench run --dataset`)."),
    dataset_id: int = typer.Option(..., "--id", help="nnU-Net dataset id, 1..999 (refused if DIR already holds it)."),
    name: str | None = typer.Option(None, help="The DatasetNNN_NAME part (default: the dataset's name)."),
    out: Path = typer.Option(..., help="nnU-Net raw folder to write into (e.g. $nnUNet_raw)."),
    opts: RunOptions = FROM_FLAGS,
) -> None:
    """Write a dataset as an nnU-Net v2 raw dataset with our split (test cases in imagesTs / labelsTs), and
    print the commands that put the split where nnU-Net's training reads it."""
    import json

    from bench.data.resolve import resolve_dataset
    from bench.experiments.nnunet import export_nnunet, training_fold

    protocol = opts.load_protocol()
    ds = resolve_dataset(dataset, say=console.print, data_root=opts.data_root, fold=opts.fold)
    export = export_nnunet(ds, protocol, dataset_id, out, name, say=console.print)
    fold, split = training_fold(protocol), json.loads(export.splits_file.read_text())[0]
    console.print(f"wrote {export.folder}: {len(split['train']) + len(split['val'])} training case(s) in imagesTr, "
                  f"{len(ds.test_cases)} test case(s) in imagesTs and labelsTs; fold 0 of {export.splits_file.name} "
                  f"holds out the protocol's {len(split['val'])} validation case(s)", markup=False)
    console.print("put the split where nnU-Net's training reads it (before or after plan_and_preprocess):",
                  markup=False)
    for line in export.commands:
        console.print(f"    {line}", markup=False, highlight=False)
    why = ("every training case, as `bench run` trains under this protocol" if fold == "all" else
           "the training cases without the hold-out, as `bench run` trains under this protocol")
    console.print(f"then `nnUNetv2_train {dataset_id} 2d {fold}` trains on {why}", markup=False)
