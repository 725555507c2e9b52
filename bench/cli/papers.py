"""``bench ablate`` and ``bench paper``: ablation specs and published tables, with our rows beside them."""
from __future__ import annotations

from pathlib import Path

import typer

from bench.cli.app import app
from bench.cli.options import FROM_FLAGS, csv_list, run_options
from bench.experiments.options import RunOptions


@app.command()
@run_options("protocol", "seeds", "dataset", "data_root", "fold", "reports", "out", "iterations", "sets")
def ablate(
    spec: Path = typer.Argument(..., help="An ablation spec, e.g. ablations/swinunet-skips.yaml."),
    opts: RunOptions = FROM_FLAGS,
) -> None:
    """Run every value of one knob through `bench run` machinery; table with the published rows."""
    from bench.experiments.ablation import ablate as run_ablate

    raise typer.Exit(run_ablate(spec, opts))


@app.command()
@run_options("protocol", "dataset", "data_root", "fold", "seeds", "reports", "out", "iterations", "sets")
def paper(
    name: str = typer.Argument(..., help="swin-unet-synapse, swin-unet-skips or swin-unet-acdc."),
    models: str | None = typer.Option(None, help="Extra models to add as our rows."),
    opts: RunOptions = FROM_FLAGS,
) -> None:
    """Regenerate a published table with our rows (from runs, trained if missing) beside it."""
    from bench.experiments.paper import paper_table

    raise typer.Exit(paper_table(name, opts, csv_list(models)))
