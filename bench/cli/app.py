"""The typer application and its command groups; the command modules register themselves on it."""
from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and ablation harness for medical image segmentation models.")
data_app = typer.Typer(no_args_is_help=True, help="Create or import datasets.")
app.add_typer(data_app, name="data")
protocol_app = typer.Typer(no_args_is_help=True, help="The shipped protocols, and any protocol resolved with --set.")
app.add_typer(protocol_app, name="protocol")
