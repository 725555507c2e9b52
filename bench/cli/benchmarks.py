"""``bench benchmark``: models x datasets x seeds as ordinary runs, then one benchmark report."""
from __future__ import annotations

import typer

from bench.cli.app import app
from bench.cli.options import FROM_FLAGS, run_options
from bench.experiments.options import RunOptions


@app.command()
@run_options("protocol", "seeds", "results", "reports", "iterations", "checkpoint_every", "device", "force",
             "keep_weights", "sets", "track")
def benchmark(
    spec: str = typer.Argument(..., help="A benchmark spec (YAML), or a shipped one by name: builtin."),
    opts: RunOptions = FROM_FLAGS,
) -> None:
    """Run every model of a spec on every dataset of it; one report ranking them across datasets."""
    from bench.experiments.benchmark import benchmark as run_benchmark

    raise typer.Exit(run_benchmark(spec, opts))
