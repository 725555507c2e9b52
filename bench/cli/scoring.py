"""``bench evaluate``, ``bench predict`` and ``bench export``: scores and masks from finished runs."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from bench.cli.app import app
from bench.cli.options import DEVICE, RESULTS, console, err_console
from bench.cli.runs import _parse_weights
from bench.errors import BenchError


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
    results: Path = RESULTS,
    force: bool = typer.Option(False, help="With --pred: replace an external run of that name from other predictions."),
) -> None:
    """Re-score a finished run from its saved predictions (no retraining), or score another tool's
    predictions (--pred) as an external run that `bench report` compares with trained ones."""
    from bench.engine.header import describe_dataset, header
    from bench.engine.progress import progress_display
    from bench.report.console import render_rich, summary_table

    if pred is None:
        if run_dir is None:
            raise BenchError("give a run folder to re-score, or --pred DIR --ref DATASET --name NAME")
        extra = [f"--{k}" for k, v in (("ref", ref), ("name", name), ("label-map", label_map)) if v]
        if extra:
            raise BenchError(f"{', '.join(extra)} go with --pred")
        from bench.engine.rescore import rescore_run

        with _stopped_exits(), progress_display(console) as progress:
            rows = rescore_run(run_dir, convention, nsd_tolerance, progress, console.print)
        conv, tolerance = rows["convention"].iloc[0], rows["nsd_tolerance_mm"].iloc[0]
        console.print(render_rich(summary_table(rows), f"{run_dir} re-scored, convention {conv}", console.width))
        console.print(f"rows for convention {conv}, NSD tolerance {tolerance:g} mm written to "
                      f"{run_dir / 'metrics.parquet'} (rows of other conventions and tolerances kept)")
        return
    if run_dir is not None:
        raise BenchError("give either a run folder or --pred, not both")
    if ref is None or name is None:
        raise BenchError("--pred needs --ref DATASET and --name NAME")
    from bench.data.labelmaps import load_label_map
    from bench.data.resolve import resolve_dataset
    from bench.engine.external import evaluate_external
    from bench.protocol import evaluation_settings

    ev = evaluation_settings(convention=convention, nsd_tolerance_mm=nsd_tolerance)
    conv = ev.convention
    lmap = load_label_map(label_map) if label_map else None
    ds = resolve_dataset(ref, say=console.print, data_root=data_root)
    console.print(header(None, describe_dataset(ds, ev), "none (saved predictions)", "none (trained elsewhere)",
                         f"convention {conv}, external run {name}"))
    with _stopped_exits(), progress_display(console) as progress:
        out, rows = evaluate_external(pred, ds, name, results, ev, lmap, allow_missing, force, say=console.print,
                                      progress=progress)
    console.print(render_rich(summary_table(rows), f"{name} (external) on {ds.name}, convention {conv}",
                              console.width))
    console.print(f"external run written to {out}; `bench report --results {results}` compares it with trained runs")


@app.command()
def predict(
    run_dir: Path | None = typer.Argument(None, help="A run folder (its model.pt and manifest); or use --weights."),
    input: Path = typer.Option(..., "--input", help="A NIfTI / MHA / NRRD file, a DICOM series folder, a PNG / JPG / "
                               "TIFF file, or a folder of these (sub-folders: DICOM series)."),
    out: Path = typer.Option(..., help="Output folder: <name>.nii.gz for volumes, <name>.png for 2D images."),
    device: str = DEVICE,
    batch_size: int | None = typer.Option(None, help="Slices per forward pass (default: the protocol's)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <name>_overlay.png: each class's contour in "
                                 "its colour on the image (for a volume, its axial slice with the most foreground)."),
    fill: bool = typer.Option(False, "--fill", help="With --overlay: fill each class, translucent, in its colour."),
    reference: Path | None = typer.Option(None, help="Draw the reference beside the prediction in the overlay: "
                                          "a mask file (one input), or a folder of masks named like the inputs "
                                          "(<name>.png, <name>.nii.gz); implies --overlay."),
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

    from bench.data.ct_import import check_window
    from bench.data.inputs import find_inputs, match_references
    from bench.engine.header import header
    from bench.engine.predict import predict_inputs
    from bench.engine.progress import progress_display
    from bench.env import pick_device
    from bench.protocol import evaluation_settings

    if (run_dir is None) == (weights is None):
        raise BenchError("give a run folder or --weights MODEL=PATH (with --protocol), not both or neither")
    evaluation_settings(resize=resize, batch_size=batch_size)  # the flags' values, checked by the protocol's rules
    if window is not None:
        check_window(window)
    with _stopped_exits():
        inputs, skipped = find_inputs(input)
        references = match_references(inputs, reference) if reference is not None else None  # all, or nothing
        predictor = _predictor(run_dir, weights, protocol, dataset, window)
        predictor = replace(predictor, resize=resize, batch_size=batch_size or predictor.batch_size)
        dev = pick_device(device)
        console.print(header(predictor.protocol, predictor.dataset, dev, predictor.lr,
                             f"resize {predictor.resize}, {len(inputs)} input(s)"))
        if skipped:
            console.print(f"skipping {len(skipped)} other file(s) in {input} (e.g. {skipped[0].name})", markup=False)
        with progress_display(console) as progress:
            summary = predict_inputs(predictor, inputs, out, dev, overlay or reference is not None, progress,
                                     say=lambda s: err_console.print(s, markup=False, highlight=False,
                                                                     soft_wrap=True),
                                     fill=fill, references=references)
    done = len(inputs) - len(summary.failed)
    console.print(f"{predictor.label}: {done} of {len(inputs)} input(s) segmented into {out}")
    if summary.failed:
        err_console.print(f"{len(summary.failed)} input(s) failed: "
                          + ", ".join(str(inp.path) for inp, _ in summary.failed), markup=False, soft_wrap=True)
        raise typer.Exit(2)


@contextmanager
def _stopped_exits() -> Iterator[None]:
    """SIGINT / SIGTERM in the block: the engine's note on what was finished, and exit 128 + the signal."""
    from bench.engine.stopping import Stopped, stop_on_signals

    try:
        with stop_on_signals():
            yield
    except Stopped as e:
        err_console.print(str(e) if e.note else f"stopped by {e.name}; nothing was written", markup=False,
                          highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_status) from None


def _predictor(run_dir: Path | None, weights: str | None, protocol: str | None, dataset: str | None,
               window: tuple[float, float] | None):
    """The model and preprocessing of a run folder, or of ``--weights`` with ``--protocol`` (and ``--dataset``)."""
    from bench.engine.predict import from_run, from_weights
    from bench.protocol import load_protocol

    if run_dir is not None:
        if protocol or dataset:
            raise BenchError("--protocol and --dataset go with --weights; a run folder records its own")
        return from_run(run_dir, window)
    from bench.data.preprocessing import describe
    from bench.data.resolve import resolve_dataset

    if protocol is None or weights is None:
        raise BenchError("--weights needs --protocol (the input size the weights were trained at)")
    (model, path), = _parse_weights([weights]).items()
    ds = resolve_dataset(dataset, say=console.print) if dataset else None
    return from_weights(model, Path(path), load_protocol(protocol), ds.organs if ds else None,
                        describe(ds) if ds else None, window, ds.name if ds else "")


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
