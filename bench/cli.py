"""The ``bench`` command line. Bad input: one clear line on stderr, exit status 2."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and ablation harness for medical image segmentation models.")
data_app = typer.Typer(no_args_is_help=True, help="Create or import datasets.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
    )


def _parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise BenchError(f"--weights expects MODEL=PATH, got '{item}'")
        out[model] = path
    return out


@app.command()
def run(
    models: str = typer.Option(..., help="Comma-separated model names (see `bench models`)."),
    dataset: str = typer.Option("synthetic", help="'synthetic', 'synapse' (with --data-root), a folder in the "
                                "Synapse layout, or a folder with images/ and masks/."),
    data_root: Optional[Path] = typer.Option(None, help="With --dataset synapse: the official preprocessed data "
                                             "(train_npz/, test_vol_h5/, lists/lists_Synapse/)."),
    fold: Optional[int] = typer.Option(None, help="Train and evaluate on fold K of the dataset's stored split "
                                       "(make folds with `bench data split DIR --folds K`)."),
    protocol: str = typer.Option("cpu", help="Protocol name (paper, cpu, smoke) or a YAML file."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds; default: the protocol's."),
    results: Path = typer.Option(Path("results"), help="Results folder."),
    reports: Path = typer.Option(Path("reports"), help="Where the summary table goes."),
    lr: Optional[float] = typer.Option(None, help="Base learning rate for every model (default: the protocol's)."),
    iterations: Optional[int] = typer.Option(None, help="Override the protocol's iteration budget."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Override the checkpoint interval."),
    weights: list[str] = typer.Option([], help="MODEL=PATH: start MODEL from a local weights file."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    force: bool = typer.Option(False, help="Redo runs that already completed."),
) -> None:
    """Train and evaluate every model under one protocol, then print the per-organ table."""
    from bench.sweep import sweep

    code = sweep(
        models=_csv(models), dataset=dataset, protocol=protocol, seeds=_csv(seeds), results=results,
        reports=reports, lr=lr, iterations=iterations, checkpoint_every=checkpoint_every,
        weights=_parse_weights(weights), device=device, force=force, console=console, progress=_progress(),
        data_root=data_root, fold=fold,
    )
    raise typer.Exit(code)


@app.command("models")
def models_cmd(
    pattern: str = typer.Argument("*", help="Shell-style filter, e.g. 'swinunet*'."),
    img_size: int = typer.Option(224, help="Input size for the counts."),
    num_classes: int = typer.Option(9),
) -> None:
    """List registered models with their parameter counts."""
    from rich.table import Table

    from models import create_model, list_models

    names = list_models(pattern)
    if not names:
        raise BenchError(f"no model matches '{pattern}'; valid models: {', '.join(list_models())}")
    table = Table(title=f"models at {img_size} x {img_size}, {num_classes} classes")
    table.add_column("name")
    table.add_column("parameters", justify="right")
    for name in names:
        try:
            model = create_model(name, num_classes=num_classes, img_size=img_size)
            table.add_row(name, f"{sum(p.numel() for p in model.parameters()):,}")
        except Exception as e:  # a model that can't be built at this size is a row, not a crash
            table.add_row(name, f"[red]{type(e).__name__}: {e}[/]")
    console.print(table)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder: <results>/<dataset>/<protocol>/<model>/seed<k>."),
    convention: Optional[str] = typer.Option(None, help="synapse or strict (default: the run's)."),
    nsd_tolerance: Optional[float] = typer.Option(None, help="NSD tolerance in mm (default: the run's)."),
) -> None:
    """Re-score a finished run from its saved predictions (no retraining)."""
    from bench.rescore import rescore_run
    from bench.summary import render_rich, summary_table

    rows = rescore_run(run_dir, convention, nsd_tolerance)
    conv = rows["convention"].iloc[0]
    console.print(render_rich(summary_table(rows), f"{run_dir} re-scored, convention {conv}"))
    console.print(f"rows for convention {conv} written to {run_dir / 'metrics.parquet'}")


@data_app.command("synth")
def data_synth(
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the cache folder `bench run` uses)."),
    seed: int = typer.Option(0, help="Generator seed."),
) -> None:
    """Generate the built-in synthetic abdomen in the Synapse layout."""
    from bench import synth
    from bench.datasets import cache_dir

    target = out or cache_dir() / f"synthetic-seed{seed}"
    if target.exists() and any(target.iterdir()):
        raise BenchError(f"{target} already exists and is not empty; choose another --out")
    synth.generate(target, seed=seed)
    console.print(f"wrote the synthetic abdomen (seed {seed}) to {target}")


@data_app.command("import")
def data_import(
    image: Path = typer.Option(..., help="CT image: a NIfTI file or a DICOM series folder."),
    label: Path = typer.Option(..., help="Label map on the same physical grid: NIfTI file or DICOM folder."),
    label_map: str = typer.Option(..., help="btcv, totalsegmentator, or a YAML file (see bench/labelmaps.py)."),
    case_id: str = typer.Option(..., help="Case name in the dataset, e.g. case0041."),
    out: Path = typer.Option(..., help="Dataset folder (created, or extended case by case)."),
    window: tuple[float, float] = typer.Option((-125.0, 275.0), help="CT window LO HI in HU, scaled to [0, 1]."),
    split: str = typer.Option("train", help="List the case for training (train) or testing (test)."),
) -> None:
    """Import one CT case (image + label) into a dataset in the Synapse layout."""
    from bench.importers import import_case
    from bench.labelmaps import load_label_map

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
    from bench.importers import prepare_btcv

    prepare_btcv(raw_dir, out, say=console.print)
    console.print(f"wrote the Synapse dataset to {out}; run it with: bench run --dataset {out}")


@data_app.command("prepare-acdc")
def data_prepare_acdc(
    raw_dir: Path = typer.Argument(..., help="ACDC training set (patient001/ ... patient100/)."),
    out: Path = typer.Option(..., help="New dataset folder."),
) -> None:
    """ACDC cardiac MRI (RV, Myo, LV) with the 70 / 10 / 20 patient split."""
    from bench.acdc import prepare_acdc

    prepare_acdc(raw_dir, out, say=console.print)
    console.print(f"wrote the ACDC dataset to {out}; run it with: bench run --dataset {out}")


@data_app.command("split")
def data_split(
    dataset: str = typer.Argument(..., help="A dataset folder (Synapse layout or images/ + masks/)."),
    folds: Optional[int] = typer.Option(None, help="K-fold cross-validation over the training cases."),
    val_fraction: Optional[float] = typer.Option(None, help="Carve this fraction of training cases for validation."),
    seed: int = typer.Option(0, help="Seed of the draw."),
) -> None:
    """Store K folds and/or a validation subset in the dataset's splits.json (training cases only)."""
    from bench.datasets import resolve_dataset
    from bench.splits import split_dataset

    path = split_dataset(resolve_dataset(dataset, say=console.print), folds, val_fraction, seed)
    console.print(f"wrote {path}" + (f"; run a fold with: bench run --dataset {dataset} --fold 0" if folds else ""))


def main() -> None:
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int):
            sys.exit(code)
    except BenchError as e:
        err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyError as e:  # unknown model names from the registry
        err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise
