"""The settings of a command that reach the engine: one frozen object, from the CLI to the runner.

``bench run``, ``ablate``, ``paper`` and ``tune`` build one ``RunSettings`` from their flags; it
travels unchanged through the experiment, every executor and (pickled) to cluster workers, and
the runner reads it. A new setting costs a field here and its flag in ``bench.cli.options``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.engine.tracking import parse_track


@dataclass(frozen=True)
class RunSettings:
    """Where runs go and how the engine treats them (not what decides their numbers: that is the
    protocol and the ``RunSpec``)."""

    results: Path = Path("results")
    device: str = "auto"  # auto, cpu, cuda or cuda:N; resolved where the run executes
    force: bool = False  # redo runs that already completed
    keep_weights: bool = True  # keep model.pt of completed runs
    track: tuple[str, ...] = ()  # live trackers: tensorboard, mlflow

    def __post_init__(self) -> None:
        object.__setattr__(self, "results", Path(self.results))
        object.__setattr__(self, "track", tuple(parse_track(list(self.track))))
