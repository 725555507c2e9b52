"""Ablation specs: a base model, one knob and its values (or named variants), nothing else.

A knob that is a protocol field (``input_size``) changes the protocol, whose name then records
it (``cpu@input_size=384``); any other knob is passed to the model factory. Every row becomes
an ordinary run through ``runner.run_jobs``, so completed runs are reused, not retrained.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from bench.engine.runner import RunSpec
from bench.errors import BenchError
from bench.protocol import Protocol, load_protocol, load_yaml_model
from models import is_model, list_models

Value = int | float | str


class AblationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str
    knob: str | None = None
    values: list[Value] = []
    variants: dict[str, str] = {}  # row name -> registered model name
    dataset: str = "synthetic"
    protocol: str = "cpu"
    seeds: list[int] | None = None
    mirrors: str | None = None  # a published table in bench/experiments/published/*.yaml
    description: str = ""

    @model_validator(mode="after")
    def _one_axis(self) -> AblationSpec:
        if bool(self.knob and self.values) == bool(self.variants):
            raise ValueError("give either 'knob' with 'values', or 'variants'")
        return self


@dataclass(frozen=True)
class Row:
    """One row of an ablation table and the run behind it (per seed)."""

    name: str
    model: str
    knobs: dict
    protocol: Protocol


def load_spec(path: str | Path) -> AblationSpec:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"ablation spec not found: {path}")
    return load_yaml_model(path, AblationSpec)


def expand(spec: AblationSpec, protocol: str | None = None, iterations: int | None = None) -> list[Row]:
    """The spec's rows, each with its model, knobs and (possibly overridden) protocol."""
    base = load_protocol(protocol or spec.protocol).override(iterations=iterations)
    for name in [spec.base, *spec.variants.values()]:
        if not is_model(name):
            raise BenchError(f"unknown model '{name}' in ablation spec; valid models: {', '.join(list_models())}")
    if spec.variants:
        return [Row(name, model, {}, base) for name, model in spec.variants.items()]
    rows = []
    for value in spec.values:
        if spec.knob in Protocol.model_fields:
            proto = base.override(**{spec.knob: value}).model_copy(update={"name": f"{base.name}@{spec.knob}={value}"})
            rows.append(Row(str(value), spec.base, {}, proto))
        else:
            rows.append(Row(str(value), spec.base, {spec.knob: value}, base))
    return rows


def jobs(rows: list[Row], seeds: list[int], lr: float | None = None) -> list[tuple[RunSpec, Protocol]]:
    """(RunSpec, Protocol) pairs for ``runner.run_jobs``: every row x seed, one LR rule for all."""
    out = []
    for row in rows:
        rate = lr if lr is not None else row.protocol.effective_lr()
        source = "flag --lr" if lr is not None else f"protocol {row.protocol.name}"
        for seed in seeds:
            out.append((RunSpec(row.model, seed, rate, source, knobs=dict(row.knobs)), row.protocol))
    return out
