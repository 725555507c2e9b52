"""The ``bench`` command line. Bad input: one clear line on stderr, exit status 2."""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from bench.cli_executor import executor_options
from bench.errors import BenchError
from bench.experiments.options import ExecutorOptions, RunOptions
from bench.paths import cache_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and ablation harness for medical image segmentation models.")
data_app = typer.Typer(no_args_is_help=True, help="Create or import datasets.")
app.add_typer(data_app, name="data")
protocol_app = typer.Typer(no_args_is_help=True, help="The shipped protocols, and any protocol resolved with --set.")
app.add_typer(protocol_app, name="protocol")
console = Console()
console.soft_wrap = not console.is_terminal  # log files get whole lines, not 80-column pieces
err_console = Console(stderr=True)


# one option, three commands (run, ablate, paper)
KEEP_WEIGHTS = typer.Option(True, "--keep-weights/--drop-weights",
                            help="Keep each completed run's trained weights (model.pt); "
                            "--drop-weights keeps only metrics, logs and predictions.")
# and two more, four commands (run, tune, ablate, paper)
SETS = typer.Option([], "--set", metavar="KEY=VALUE",
                    help="Override a protocol key, e.g. batch_size=4 or evaluation.convention=strict (repeatable). "
                    "The result is another protocol (cpu@batch_size=4), with its own hash and run folders.")
TRACK = typer.Option(None, "--track", help="Follow training live: tensorboard, mlflow, or tensorboard,mlflow "
                     "(pip install 'segbench[track]').")


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _seeds(value: str | None) -> list[int]:
    """``--seeds 0,1`` as integers; empty means the protocol's (or a spec's) seeds."""
    try:
        seeds = [int(v) for v in _csv(value)]
    except ValueError:
        raise BenchError(f"--seeds expects comma-separated integers, got '{value}'") from None
    if any(s < 0 for s in seeds):
        raise BenchError(f"--seeds: seeds are integers >= 0, got '{value}'")
    return seeds


def _parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise BenchError(f"--weights expects MODEL=PATH, got '{item}'")
        out[model] = path
    return out


@app.command()
@executor_options()
def run(
    models: str = typer.Option(..., help="Comma-separated model names (see `bench models`)."),
    dataset: str = typer.Option("synthetic", help="'synthetic', 'synapse' (with --data-root), a folder in the "
                                "Synapse layout, or a folder with images/ and masks/."),
    data_root: Path | None = typer.Option(None, help="With --dataset synapse: the official preprocessed data "
                                             "(train_npz/, test_vol_h5/, lists/lists_Synapse/)."),
    fold: int | None = typer.Option(None, help="Train and evaluate on fold K of the dataset's stored split "
                                       "(make folds with `bench data split DIR --folds K`)."),
    protocol: str = typer.Option("cpu", help="Protocol name (paper, cpu, smoke) or a YAML file."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds; default: the protocol's."),
    results: Path = typer.Option(Path("results"), help="Results folder."),
    reports: Path = typer.Option(Path("reports"), help="Where the report goes (<reports>/<dataset>/<protocol>/)."),
    lr: str | None = typer.Option(None, help="Base learning rate for every model (default: the protocol's), "
                                     "or 'tuned': each model's best trial from its `bench tune` study."),
    storage: str | None = typer.Option(None, help="With --lr tuned: the Optuna storage URL "
                                          "(default: sqlite under <results>/tune/)."),
    study: str | None = typer.Option(None, help="With --lr tuned: the study name, comma-separated one per "
                                        "model (default: <dataset>-<model>-<protocol>-<hash>)."),
    iterations: int | None = typer.Option(None, help="Override the protocol's iteration budget."),
    checkpoint_every: int | None = typer.Option(None, help="Override the checkpoint interval."),
    weights: list[str] = typer.Option([], help="MODEL=PATH: start MODEL from a local weights file."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    force: bool = typer.Option(False, help="Redo runs that already completed."),
    keep_weights: bool = KEEP_WEIGHTS,
    sets: list[str] = SETS,
    track: str | None = TRACK,
    report: bool = typer.Option(True, "--report/--no-report", help="Write the full report (HTML, plots, "
                                "statistics) after the runs; the summary table is printed either way."),
    executor: ExecutorOptions = None,
) -> None:
    """Train and evaluate every model under one protocol, then print the per-organ table."""
    from bench.experiments.sweep import sweep

    opts = RunOptions(protocol=protocol, sets=sets, dataset=dataset, data_root=data_root, fold=fold,
                      seeds=_seeds(seeds), results=results, reports=reports, iterations=iterations,
                      checkpoint_every=checkpoint_every, device=device, force=force, keep_weights=keep_weights,
                      track=_csv(track), report=report, console=console, executor=executor)
    raise typer.Exit(sweep(_csv(models), opts, lr=lr, weights=_parse_weights(weights), storage=storage,
                           studies=_csv(study)))


@app.command()
@executor_options(workers=True)
def tune(
    model: str | None = typer.Option(None, help="The model whose learning rate to search."),
    models: str | None = typer.Option(None, help="Comma-separated models: one study each, with the same "
                                         "protocol and number of trials (equal budgets)."),
    trials: int = typer.Option(10, help="Trials this process adds to each study (workers sharing a storage add up)."),
    timeout: float | None = typer.Option(None, help="Stop starting new trials of a study after S seconds."),
    protocol: str = typer.Option("cpu", help="Protocol name (paper, cpu, smoke) or a YAML file."),
    dataset: str = typer.Option("synthetic", help="As for `bench run`; tuning reads its training cases only."),
    data_root: Path | None = typer.Option(None, help="With --dataset synapse: the official preprocessed data."),
    fold: int | None = typer.Option(None, help="Tune on fold K's training cases."),
    storage: str | None = typer.Option(None, help="Optuna storage: sqlite:///FILE, postgresql://USER:PASS@HOST/DB "
                                          "or journal:FILE (default: sqlite under <results>/tune/)."),
    study: str | None = typer.Option(None, help="Study name, comma-separated one per model "
                                        "(default: <dataset>-<model>-<protocol>-<hash>)."),
    results: Path = typer.Option(Path("results"), help="Results folder (trial folders go to <results>/tune/)."),
    lr_min: float | None = typer.Option(None, help="Lower end of the LR range (default: tuning.lr_min)."),
    lr_max: float | None = typer.Option(None, help="Upper end of the LR range (default: tuning.lr_max)."),
    search: str = typer.Option("lr", help="Parameters to search: lr, plus optionally weight_decay and batch_size."),
    iterations: int | None = typer.Option(None, help="Override the protocol's iteration budget."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    sets: list[str] = SETS,
    track: str | None = TRACK,
    executor: ExecutorOptions = None,
) -> None:
    """Search each model's base learning rate with Optuna, scored on held-out training cases."""
    from bench.experiments.tune.launch import launch as run_tune

    if model and models:
        raise BenchError("give either --model or --models, not both")
    opts = RunOptions(protocol=protocol, sets=sets, dataset=dataset, data_root=data_root, fold=fold, results=results,
                      iterations=iterations, device=device, track=_csv(track), console=console,
                      executor=executor)
    raise typer.Exit(run_tune(_csv(model or models), opts, n_trials=trials, timeout=timeout, search_space=search,
                              lr_min=lr_min, lr_max=lr_max, storage=storage, studies=_csv(study)))


@app.command("models")
def models_cmd(
    pattern: str = typer.Argument("*", help="Shell-style filter, e.g. 'swinunet*', or any smp-<arch>-<encoder>."),
    img_size: int = typer.Option(224, help="Input size for the counts."),
    num_classes: int = typer.Option(9),
    measure: bool = typer.Option(False, help="Also time training steps (images/s) and peak memory."),
    batch: int = typer.Option(4, help="Batch size for --measure."),
    device: str = typer.Option("auto", help="Device for --measure: auto, cpu or cuda."),
    protocol: str | None = typer.Option(None, help="With --measure: train at this protocol's precision "
                                           "(default: fp32)."),
    sets: list[str] = SETS,
) -> None:
    """List registered models with parameters and forward GFLOPs per image (and, with --measure,
    training step time, speed and peak memory). A multiply-add counts as 2 FLOPs. Exit status 1 if
    a model cannot be built."""
    from rich.table import Table

    from bench.engine.numerics import check_precision
    from bench.env import pick_device
    from bench.protocol import resolve_protocol
    from models import create_model, is_model, list_models
    from models.compute import count_parameters, gflops, measure_training

    names = list_models(pattern) or ([pattern] if is_model(pattern) else [])
    if not names:
        raise BenchError(f"no model matches '{pattern}'; valid models: {', '.join(list_models())}")
    on = pick_device(device)
    precision = resolve_protocol(protocol, sets).precision if protocol or sets else "fp32"
    if measure:
        check_precision(precision, on)
    where = f", training batch {batch} on {on} in {precision}" if measure else ""
    memory = "peak MB" if on.type == "cuda" else "peak RSS MB (+training)"
    table = Table(title=f"models at {img_size} x {img_size}, {num_classes} classes{where}")
    for column in ["name", "parameters", "GFLOPs", *(["step ms", "images/s", memory] if measure else [])]:
        table.add_column(column, justify="left" if column == "name" else "right")
    failed = 0
    for name in names:
        try:
            model = create_model(name, num_classes=num_classes, img_size=img_size)
            row = [name, f"{count_parameters(model):,}", f"{gflops(model, img_size):.2f}"]
            if measure:
                speed = measure_training(model, img_size, batch=batch, device=on, precision=precision)
                growth = "" if on.type == "cuda" else f" (+{speed.memory_growth_mb:,.0f})"
                row += [f"{1000 * speed.step_seconds:,.0f}", f"{speed.images_per_second:.2f}",
                        f"{speed.peak_memory_mb:,.0f}{growth}"]
            table.add_row(*row)
        except Exception as e:  # a model that can't be built at this size is a row, not a crash
            table.add_row(name, f"[red]{type(e).__name__}: {e}[/]")
            failed += 1
        finally:
            model = None  # free it before the next one
    console.print(table)
    if failed:
        err_console.print(f"[red]{failed} of {len(names)} models could not be built[/]", highlight=False)
        raise typer.Exit(1)


@app.command()
def evaluate(
    run_dir: Path | None = typer.Argument(None, help="A run folder: <results>/<dataset>/<protocol>/<model>/seed<k> "
                                          "(or <results>/<dataset>/external/<name>); or use --pred."),
    convention: str | None = typer.Option(None, help="synapse or strict (default: the run's; with --pred: synapse)."),
    nsd_tolerance: float | None = typer.Option(None, help="NSD tolerance in mm (default: the run's; with --pred: 2)."),
    pred: Path | None = typer.Option(None, help="Another tool's predictions: a folder with one <case>.nii.gz "
                                     "(.nii, .npz or .png) per test case of --ref."),
    ref: str | None = typer.Option(None, help="With --pred: the dataset they predict (as `bench run --dataset`)."),
    data_root: Path | None = typer.Option(None, help="With --ref synapse: the official preprocessed data."),
    name: str | None = typer.Option(None, help="With --pred: the external run's name (e.g. nnunet)."),
    label_map: str | None = typer.Option(None, help="With --pred: translate the tool's label ids (btcv, "
                                         "totalsegmentator or a YAML file, as `bench data import`)."),
    allow_missing: bool = typer.Option(False, help="With --pred: score a missing case as an empty prediction "
                                       "(listed) and ignore files that are no test case."),
    results: Path = typer.Option(Path("results"), help="With --pred: the results folder to add the external run to."),
    force: bool = typer.Option(False, help="With --pred: replace an external run of that name from other predictions."),
) -> None:
    """Re-score a finished run from its saved predictions (no retraining), or score another tool's
    predictions (--pred) as an external run that `bench report` compares with trained ones."""
    from bench.report.console import render_rich, summary_table

    if pred is None:
        if run_dir is None:
            raise BenchError("give a run folder to re-score, or --pred DIR --ref DATASET --name NAME")
        extra = [f"--{k}" for k, v in (("ref", ref), ("name", name), ("label-map", label_map)) if v]
        if extra:
            raise BenchError(f"{', '.join(extra)} go with --pred")
        from bench.engine.rescore import rescore_run

        rows = rescore_run(run_dir, convention, nsd_tolerance)
        conv = rows["convention"].iloc[0]
        console.print(render_rich(summary_table(rows), f"{run_dir} re-scored, convention {conv}", console.width))
        console.print(f"rows for convention {conv} written to {run_dir / 'metrics.parquet'}")
        return
    if run_dir is not None:
        raise BenchError("give either a run folder or --pred, not both")
    if ref is None or name is None:
        raise BenchError("--pred needs --ref DATASET and --name NAME")
    from bench.data.labelmaps import load_label_map
    from bench.data.resolve import resolve_dataset
    from bench.engine.external import evaluate_external
    from bench.protocol import Evaluation

    conv = convention or "synapse"
    if conv not in ("synapse", "strict"):
        raise BenchError(f"--convention must be synapse or strict, got '{conv}'")
    ev = Evaluation(convention=conv, **({"nsd_tolerance_mm": nsd_tolerance} if nsd_tolerance is not None else {}))
    lmap = load_label_map(label_map) if label_map else None
    ds = resolve_dataset(ref, say=console.print, data_root=data_root)
    out, rows = evaluate_external(pred, ds, name, results, ev, lmap, allow_missing, force, say=console.print)
    console.print(render_rich(summary_table(rows), f"{name} (external) on {ds.name}, convention {conv}",
                              console.width))
    console.print(f"external run written to {out}; `bench report --results {results}` compares it with trained runs")


@app.command()
def predict(
    run_dir: Path | None = typer.Argument(None, help="A run folder (its model.pt and manifest); or use --weights."),
    input: Path = typer.Option(..., "--input", help="A NIfTI / MHA / NRRD file, a DICOM series folder, a PNG / JPG / "
                               "TIFF file, or a folder of these (sub-folders: DICOM series)."),
    out: Path = typer.Option(..., help="Output folder: <name>.nii.gz for volumes, <name>.png for 2D images."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int | None = typer.Option(None, help="Slices per forward pass (default: the protocol's)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <name>_overlay.png: contours on the image "
                                 "(for a volume, its axial slice with the most foreground)."),
    resize: str = typer.Option("bilinear-logits", help="bilinear-logits (smooth edges at the native size) or "
                               "nearest-label (the official procedure)."),
    weights: str | None = typer.Option(None, help="MODEL=PATH: weights from elsewhere instead of a run folder "
                                       "(with --protocol, and --dataset for its classes and preprocessing)."),
    protocol: str | None = typer.Option(None, help="With --weights: the protocol the weights were trained under."),
    dataset: str | None = typer.Option(None, help="With --weights: the dataset whose classes, channels and "
                                       "preprocessing apply (default: Synapse's eight organs, CT, one channel)."),
    window: tuple[float, float] | None = typer.Option(None, help="CT window LO HI in HU (default: the training "
                                                      "data's)."),
) -> None:
    """Segment new scans or images with a trained model, in the input's own geometry."""
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.data.inputs import find_inputs
    from bench.engine.predict import from_run, from_weights, predict_inputs
    from bench.env import pick_device
    from bench.protocol import load_protocol

    if (run_dir is None) == (weights is None):
        raise BenchError("give a run folder or --weights MODEL=PATH (with --protocol), not both or neither")
    if resize not in ("bilinear-logits", "nearest-label"):
        raise BenchError(f"--resize must be bilinear-logits or nearest-label, got '{resize}'")
    if batch_size is not None and batch_size <= 0:
        raise BenchError(f"--batch-size must be positive, got {batch_size}")
    inputs, skipped = find_inputs(input)
    if run_dir is not None:
        if protocol or dataset:
            raise BenchError("--protocol and --dataset go with --weights; a run folder records its own")
        predictor = from_run(run_dir, window)
    else:
        from bench.data.preprocessing import describe
        from bench.data.resolve import resolve_dataset

        if protocol is None:
            raise BenchError("--weights needs --protocol (the input size the weights were trained at)")
        (model, path), = _parse_weights([weights]).items()
        ds = resolve_dataset(dataset, say=console.print) if dataset else None
        predictor = from_weights(model, Path(path), load_protocol(protocol), ds.organs if ds else None,
                                 describe(ds) if ds else None, window)
    predictor = replace(predictor, resize=resize, batch_size=batch_size or predictor.batch_size)
    if skipped:
        console.print(f"skipping {len(skipped)} other file(s) in {input} (e.g. {skipped[0].name})")
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    with progress:
        summary = predict_inputs(predictor, inputs, out, pick_device(device), overlay, progress,
                                 say=lambda s: err_console.print(s, markup=False, highlight=False, soft_wrap=True))
    done = len(inputs) - len(summary.failed)
    console.print(f"{predictor.label}: {done} of {len(inputs)} input(s) segmented into {out}")
    if summary.failed:
        err_console.print(f"{len(summary.failed)} input(s) failed: "
                          + ", ".join(str(inp.path) for inp, _ in summary.failed), markup=False, soft_wrap=True)
        raise typer.Exit(2)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run folder (trained or external)."),
    format: str = typer.Option("nifti", "--format", help="nifti: <case>.nii.gz per saved test prediction."),
    out: Path | None = typer.Option(None, help="Output folder (default: RUN_DIR/nifti)."),
    images: bool = typer.Option(False, "--images", help="Also write each test image as <case>_image.nii.gz."),
) -> None:
    """Write a run's saved test predictions as NIfTI on the test volumes' grid (opens in any viewer)."""
    from bench.engine.export import export_run

    files = export_run(run_dir, format, out, images, say=console.print)
    console.print(f"wrote {len(files)} file(s) to {files[0].parent}")


@app.command()
def report(
    results: Path = typer.Option(Path("results"), help="Results folder to read."),
    out: Path | None = typer.Option(None, help="Output folder (default: reports/<dataset>/<protocol>/)."),
    baseline: str | None = typer.Option(None, help="Model the others are tested against (default: unet, "
                                                      "else the first model)."),
    allow_mixed: bool = typer.Option(False, help="Report runs of different protocol hashes, conventions or "
                                                 "datasets side by side, marked, instead of stopping."),
    dataset: str | None = typer.Option(None, help="Only runs on this dataset."),
    protocol: str | None = typer.Option(None, help="Only runs of this protocol name."),
    convention: str | None = typer.Option(None, help="Metric rows of this convention (default: each run's)."),
) -> None:
    """Write tables, statistics, plots and one HTML page from finished runs (never trains)."""
    from bench.report import build_report

    rep = build_report(results, out, baseline=baseline, allow_mixed=allow_mixed, dataset=dataset,
                       protocol=protocol, convention=convention)
    for note in rep.notes:
        console.print(f"[yellow]note[/]: {note}")
    console.print(f"report written to {rep.html} ({len(rep.files)} files in {rep.out})")


@app.command()
def status(results: Path = typer.Option(Path("results"), help="Results folder to read.")) -> None:
    """Every run under a results folder with its state (pending, running, complete, failed, diverged,
    interrupted) and, for runs handed to Slurm or Ray, the job; asks squeue / sacct when they exist."""
    from bench.experiments.status import collect, render

    if not results.is_dir():
        raise BenchError(f"results folder not found: {results}")
    console.print(render(collect(results), results))


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


@app.command()
@executor_options()
def ablate(
    spec: Path = typer.Argument(..., help="An ablation spec, e.g. ablations/swinunet-skips.yaml."),
    protocol: str | None = typer.Option(None, help="Protocol (default: the spec's, else cpu)."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds (default: the spec's, else the protocol's)."),
    dataset: str | None = typer.Option(None, help="Dataset (default: the spec's, else synthetic)."),
    results: Path = typer.Option(Path("results"), help="Results folder."),
    out: Path | None = typer.Option(None, help="Reports folder (default: reports)."),
    iterations: int | None = typer.Option(None, help="Override the protocol's iteration budget."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    force: bool = typer.Option(False, help="Redo runs that already completed."),
    keep_weights: bool = KEEP_WEIGHTS,
    sets: list[str] = SETS,
    track: str | None = TRACK,
    executor: ExecutorOptions = None,
) -> None:
    """Run every value of one knob through `bench run` machinery; table with the published rows."""
    from bench.experiments.ablation import ablate as run_ablate

    opts = RunOptions(protocol=protocol, sets=sets, dataset=dataset, seeds=_seeds(seeds), results=results,
                      reports=out or Path("reports"), iterations=iterations, device=device, force=force,
                      keep_weights=keep_weights, track=_csv(track), console=console,
                      executor=executor)
    raise typer.Exit(run_ablate(spec, opts))


@app.command()
@executor_options()
def paper(
    name: str = typer.Argument(..., help="swin-unet-synapse, swin-unet-skips or swin-unet-acdc."),
    protocol: str | None = typer.Option(None, help="Protocol (default: cpu)."),
    dataset: str = typer.Option("synthetic", help="Dataset for our rows."),
    data_root: Path | None = typer.Option(None, help="With --dataset synapse: the official preprocessed data."),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds (default: the protocol's)."),
    models: str | None = typer.Option(None, help="Extra models to add as our rows."),
    results: Path = typer.Option(Path("results"), help="Results folder."),
    out: Path | None = typer.Option(None, help="Reports folder (default: reports)."),
    iterations: int | None = typer.Option(None, help="Override the protocol's iteration budget."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    force: bool = typer.Option(False, help="Redo runs that already completed."),
    keep_weights: bool = KEEP_WEIGHTS,
    sets: list[str] = SETS,
    track: str | None = TRACK,
    executor: ExecutorOptions = None,
) -> None:
    """Regenerate a published table with our rows (from runs, trained if missing) beside it."""
    from bench.experiments.paper import paper_table

    opts = RunOptions(protocol=protocol, sets=sets, dataset=dataset, data_root=data_root, seeds=_seeds(seeds),
                      results=results, reports=out or Path("reports"), iterations=iterations, device=device,
                      force=force, keep_weights=keep_weights, track=_csv(track), console=console,
                      executor=executor)
    raise typer.Exit(paper_table(name, opts, _csv(models)))


@protocol_app.command("list")
def protocol_list() -> None:
    """The shipped protocols: name, hash and what each is for."""
    from bench.protocol import list_protocols, load_protocol

    for name in list_protocols():
        p = load_protocol(name)
        typer.echo(f"{name:8s} {p.hash()}  {p.description}")


@protocol_app.command("show")
def protocol_show(
    name: str = typer.Argument(..., help="A shipped protocol (paper, cpu, smoke) or a YAML file."),
    sets: list[str] = SETS,
) -> None:
    """Print the resolved protocol as YAML (runnable: save it and pass it to --protocol) and its hash."""
    from bench.protocol import protocol_yaml, resolve_protocol

    typer.echo(protocol_yaml(resolve_protocol(name, sets)), nl=False)


def _user_error(e: BaseException) -> bool:
    """The project's own errors: ``BenchError``, and the model registry's unknown-name error
    (looked up only if the registry was imported, so that `bench --help` does not load torch)."""
    registry = sys.modules.get("models.registry")
    return isinstance(e, BenchError) or (registry is not None and isinstance(e, registry.UnknownModelError))


def main() -> None:
    """The ``bench`` entry point: usage errors as click prints them (exit 2); the project's own
    errors and OS errors on a named file as one line (exit 2); anything else is a bug and keeps
    its traceback."""
    try:
        app()  # standalone: click prints usage errors with their hint and exits 2
    except Exception as e:
        if _user_error(e):
            err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(e, OSError) and e.filename is not None:
            # A file the user named or a folder the user pointed at (read-only, missing, full disk):
            # one line naming it. An OSError without a file name is not about user input: a bug.
            err_console.print(f"[red]error:[/] {e.filename}: {e.strerror or e}", highlight=False, soft_wrap=True)
            sys.exit(2)
        raise
