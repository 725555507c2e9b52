"""``bench run`` and ``bench tune``: train every model under one protocol, or search its learning rate."""
from __future__ import annotations

import typer

from bench.cli.app import app
from bench.cli.options import FROM_FLAGS, csv_list, run_options
from bench.errors import BenchError
from bench.experiments.options import RunOptions


def _parse_weights(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise BenchError(f"--weights expects MODEL=PATH, got '{item}'")
        out[model] = path
    return out


@app.command()
@run_options("dataset", "data_root", "fold", "protocol", "seeds", "reports", "iterations", "checkpoint_every", "sets",
             "report")
def run(
    models: str = typer.Option(..., help="Comma-separated model names (see `bench models`)."),
    lr: str | None = typer.Option(None, help="Base learning rate(s), comma-separated: 'default' (the protocol's; "
                                     "the default), 'tuned' (each model's best trial from its `bench tune` study) "
                                     "or a number. Each is its own run (unet@lr=tuned): --lr default,tuned "
                                     "trains both and tests the difference."),
    storage: str | None = typer.Option(None, help="With --lr tuned: the Optuna storage URL "
                                          "(default: sqlite under <results>/tune/)."),
    study: str | None = typer.Option(None, help="With --lr tuned: the study name, comma-separated one per "
                                        "model (default: <dataset>-<model>-<protocol>-<hash>)."),
    weights: list[str] = typer.Option([], help="MODEL=PATH: start MODEL from a local weights file."),
    opts: RunOptions = FROM_FLAGS,
) -> None:
    """Train and evaluate every model under one protocol, then print the per-organ table."""
    from bench.experiments.sweep import sweep

    raise typer.Exit(sweep(csv_list(models), opts, lr=lr, weights=_parse_weights(weights), storage=storage,
                           studies=csv_list(study)))


@app.command()
@run_options("protocol", "dataset", "data_root", "fold", "lr_min", "lr_max", "iterations", "sets", workers=True,
             without=("force", "keep_weights"))
def tune(
    model: str | None = typer.Option(None, help="The model whose learning rate to search."),
    models: str | None = typer.Option(None, help="Comma-separated models: one study each, with the same "
                                         "protocol and number of trials (equal budgets)."),
    trials: int = typer.Option(10, help="Trials this process adds to each study (workers sharing a storage add up)."),
    timeout: float | None = typer.Option(None, help="Stop starting new trials of a study after S seconds."),
    storage: str | None = typer.Option(None, help="Optuna storage: sqlite:///FILE, postgresql://USER:PASS@HOST/DB "
                                          "or journal:FILE (default: sqlite under <results>/tune/)."),
    study: str | None = typer.Option(None, help="Study name, comma-separated one per model "
                                        "(default: <dataset>-<model>-<protocol>-<hash>)."),
    search: str = typer.Option("lr", help="Parameters to search: lr, plus optionally weight_decay and batch_size."),
    opts: RunOptions = FROM_FLAGS,
) -> None:
    """Search each model's base learning rate with Optuna, scored on held-out training cases
    (trial folders go to <results>/tune/)."""
    from bench.experiments.tune.launch import launch as run_tune

    if model and models:
        raise BenchError("give either --model or --models, not both")
    raise typer.Exit(run_tune(csv_list(model or models), opts, n_trials=trials, timeout=timeout,
                              search_space=search, storage=storage, studies=csv_list(study)))
