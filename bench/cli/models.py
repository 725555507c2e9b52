"""``bench models``: the registry with parameters, GFLOPs and (``--measure``) speed."""
from __future__ import annotations

import typer

from bench.cli.app import app
from bench.cli.options import DEVICE, SETS, console, err_console
from bench.errors import BenchError


@app.command("models")
def models_cmd(
    pattern: str = typer.Argument("*", help="Shell-style filter, e.g. 'swinunet*', or any smp-<arch>-<encoder>."),
    img_size: int = typer.Option(224, help="Input size for the counts."),
    num_classes: int = typer.Option(9),
    measure: bool = typer.Option(False, help="Also time training steps (images/s), inference (slices/s, ms per "
                                 "slice) and peak memory."),
    batch: int = typer.Option(4, help="Training batch size for --measure."),
    device: str = DEVICE,
    protocol: str | None = typer.Option(None, help="With --measure: train at this protocol's precision "
                                           "(default: fp32)."),
    sets: list[str] = SETS,
) -> None:
    """List registered models with parameters and forward GFLOPs per image (and, with --measure,
    training step time, speed and peak memory, and inference slices/s at the protocol's evaluation batch
    and ms per slice one at a time). A multiply-add counts as 2 FLOPs. Exit status 1 if a model cannot
    be built."""
    from rich.table import Table
    from rich.text import Text

    from bench.engine.numerics import check_precision
    from bench.env import pick_device
    from bench.protocol import resolve_protocol
    from models import is_model, list_models

    names = list_models(pattern) or ([pattern] if is_model(pattern) else [])
    if not names:
        raise BenchError(f"no model matches '{pattern}'; valid models: {', '.join(list_models())}")
    on = pick_device(device)
    proto = resolve_protocol(protocol or "cpu", sets)
    precision = proto.precision if protocol or sets else "fp32"
    eval_batch = proto.evaluation.batch_size
    if measure:
        check_precision(precision, on)
    where = (f", training batch {batch} on {on} in {precision}, inference batch {eval_batch} as evaluation runs "
             f"it ({'fp16 autocast' if on.type == 'cuda' else 'fp32'})") if measure else ""
    memory = "peak MB" if on.type == "cuda" else "peak RSS MB (+training)"
    measured = ["step ms", "images/s", memory, "eval slices/s", "eval ms/slice"] if measure else []
    table = Table(title=f"models at {img_size} x {img_size}, {num_classes} classes{where}")
    for column in ["name", "parameters", "GFLOPs", *measured]:
        table.add_column(column, justify="left" if column == "name" else "right")
    failed = 0
    for name in names:
        try:
            table.add_row(*_row(name, num_classes, img_size, (batch, eval_batch) if measure else None, on,
                                precision))
        except Exception as e:  # a model that can't be built at this size is a row, not a crash
            table.add_row(name, Text(f"{type(e).__name__}: {e}", style="red"))
            failed += 1
    console.print(table)
    if failed:
        err_console.print(f"{failed} of {len(names)} models could not be built", style="red", highlight=False)
        raise typer.Exit(1)


def _row(name: str, num_classes: int, img_size: int, batches: tuple[int, int] | None, on,
         precision: str) -> list[str]:
    """One model's row: parameters and GFLOPs, and with ``batches`` (training, evaluation) its training and
    inference speed (the model is freed when this returns, before the next one is built)."""
    from models import create_model
    from models.compute import count_parameters, gflops, measure_inference, measure_training

    model = create_model(name, num_classes=num_classes, img_size=img_size)
    row = [name, f"{count_parameters(model):,}", f"{gflops(model, img_size):.2f}"]
    if batches:
        # inference first: training changes the weights; and at the precision evaluation uses (predict_volume)
        infer = measure_inference(model, img_size, batch=batches[1], device=on,
                                  precision="fp16" if on.type == "cuda" else "fp32")
        speed = measure_training(model, img_size, batch=batches[0], device=on, precision=precision)
        growth = "" if on.type == "cuda" else f" (+{speed.memory_growth_mb:,.0f})"
        row += [f"{1000 * speed.step_seconds:,.0f}", f"{speed.images_per_second:.2f}",
                f"{speed.peak_memory_mb:,.0f}{growth}", f"{infer.slices_per_second:.2f}",
                f"{infer.ms_per_slice:,.1f}"]
    return row
