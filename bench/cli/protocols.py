"""``bench protocol list`` and ``bench protocol show``."""
from __future__ import annotations

import typer

from bench.cli.app import protocol_app
from bench.cli.options import SETS


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
