"""Ablation specs: a base model, one knob and its values (or named variants), nothing else.

A knob that is a protocol field (``input_size``) changes the protocol, whose name then records
it (``cpu@input_size=384``); any other knob is passed to the model factory. Every row becomes
an ordinary run through the engine's runner, so completed runs are reused, not retrained.
``bench ablate SPEC`` runs the rows and writes a published-beside-ours table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from bench.data.resolve import resolve_dataset
from bench.data.synapse import Dataset
from bench.engine.results import check_writable, read_metrics
from bench.engine.runner import Outcome, RunSpec
from bench.errors import BenchError
from bench.experiments import references
from bench.experiments.execute import Submitted, execute_jobs, run_device, say_failures
from bench.experiments.options import RunOptions
from bench.experiments.preflight import check_jobs
from bench.protocol import Protocol, Seed, load_yaml_model, resolve_protocol
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
    seeds: list[Seed] | None = None
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


def expand(spec: AblationSpec, protocol: str | None = None, iterations: int | None = None,
           sets: list[str] | tuple[str, ...] = ()) -> list[Row]:
    """The spec's rows, each with its model, knobs and (possibly overridden) protocol."""
    base = resolve_protocol(protocol or spec.protocol, sets).override(iterations=iterations)
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


def run_rows(rows: list[Row], seeds: list[int], ds: Dataset, opts: RunOptions) -> tuple[dict, list[Outcome]]:
    """Every row x seed as a run: {row name: its metrics under the row's convention}, and the failures."""
    device = run_device(opts)
    todo = jobs(rows, seeds)
    check_jobs(todo, ds, opts.results, opts.force)
    outcomes = execute_jobs(todo, ds, device, opts)
    per_row, failed = {}, []
    for row in rows:
        label = RunSpec(row.model, 0, 0.0, "", knobs=dict(row.knobs)).label
        mine = [o for o in outcomes if o.run.model == label and o.run.protocol == row.protocol.name]
        failed += [o for o in mine if not o.ok]
        ok = [o.path for o in mine if o.ok]
        if ok:
            m = read_metrics(ok)
            per_row[row.name] = m[m["convention"] == row.protocol.evaluation.convention]
    return per_row, failed


def open_dataset(dataset: str, opts: RunOptions) -> Dataset:
    """The dataset of an experiment, after checking that results can be written."""
    check_writable(opts.results)
    return resolve_dataset(dataset, say=opts.say, data_root=opts.data_root, fold=opts.fold)


def ablate(spec_path: Path, opts: RunOptions) -> int:
    """``bench ablate SPEC``: the spec's rows as runs, then its table; returns the exit status."""
    return run_ablation(load_spec(spec_path), Path(spec_path).stem, opts)


def run_ablation(spec: AblationSpec, name: str, opts: RunOptions) -> int:
    rows = expand(spec, opts.protocol, opts.iterations, opts.sets)
    seeds = opts.seeds or spec.seeds or list(rows[0].protocol.seeds)
    ds = open_dataset(opts.dataset or spec.dataset, opts)
    try:
        per_row, failed = run_rows(rows, seeds, ds, opts)
    except Submitted:
        return 0
    reference = references.load_reference(spec.mirrors) if spec.mirrors else \
        {"rows": [], "source": "none", "dataset": "-"}
    ours = {r: references.row_values(m) for r, m in per_row.items()}
    table = references.build_table(reference, ours, {r: r for r in ours}, all_published=False)
    base = rows[0].protocol
    proto_name = base.name.rsplit("@", 1)[0] if spec.knob in Protocol.model_fields else base.name
    note = references.caveat(reference, proto_name, base.hash(), ds.name, base.evaluation.convention, seeds,
                             base.precision)
    title = f"Ablation {name}: {spec.knob or 'variant'} ({spec.base})"
    out = opts.reports / ds.name / proto_name / "ablations" / name
    references.write_comparison(table, reference, title, note, out, opts.console)
    return say_failures(failed, opts.say)
