"""Ablation specs: a base model, one knob and its values (or named variants), nothing else.

A knob that is a protocol key (``input_size``) changes the protocol through the one override path
(``bench.protocol.derive``), whose name then records it (``cpu@input_size=384``; a value equal to
the protocol's is the protocol itself); any other knob is passed to the model factory. Every row becomes
an ordinary run through the engine's runner, so completed runs are reused, not retrained.
``bench ablate SPEC`` runs the rows and writes a published-beside-ours table.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from bench.data.resolve import resolve_dataset
from bench.data.synapse import Dataset
from bench.engine.header import describe_dataset, describe_lrs, header
from bench.engine.results import check_writable, read_metrics, row_set
from bench.engine.runner import Outcome
from bench.engine.runs import RunSpec
from bench.engine.train import Interrupted
from bench.errors import BenchError
from bench.experiments import references
from bench.experiments.execute import Submitted, execute_jobs, run_device, say_failures, stopped, where_runs
from bench.experiments.options import RunOptions
from bench.experiments.preflight import check_jobs
from bench.protocol import Protocol, Seed, load_yaml_model, resolve_protocol
from models import require_models

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


def is_protocol_knob(knob: str | None) -> bool:
    """Whether an ablation knob is a protocol key (``input_size``, ``evaluation.resize``), not a model's."""
    return bool(knob) and str(knob).split(".")[0] in Protocol.model_fields


def expand(spec: AblationSpec, protocol: str | None = None, sets: Sequence[str] = ()) -> list[Row]:
    """The spec's rows, each with its model, knobs and protocol (``--set`` overrides, then a protocol
    knob's value, in one ``bench.protocol.derive``)."""
    require_models([spec.base, *spec.variants.values()])
    name = protocol or spec.protocol
    base = resolve_protocol(name, sets)
    if spec.variants:
        return [Row(row, model, {}, base) for row, model in spec.variants.items()]
    assert spec.knob is not None  # the spec's validator: a knob with values, or variants
    if is_protocol_knob(spec.knob):
        return [Row(str(v), spec.base, {}, resolve_protocol(name, sets, {spec.knob: v})) for v in spec.values]
    return [Row(str(v), spec.base, {spec.knob: v}, base) for v in spec.values]


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
    check_jobs(todo, ds, opts.run)
    ev = rows[0].protocol.evaluation
    opts.say(header([p for _, p in todo], describe_dataset(ds, ev), where_runs(device, opts),
                    describe_lrs((spec.label, spec.lr, spec.lr_source) for spec, _ in todo), f"seeds {seeds}"))
    outcomes = execute_jobs(todo, ds, device, opts)
    per_row, failed = {}, []
    for row in rows:
        label = RunSpec(row.model, 0, 0.0, "", knobs=dict(row.knobs)).label
        mine = [o for o in outcomes if o.run.model == label and o.run.protocol == row.protocol.name]
        failed += [o for o in mine if not o.ok]
        ok = [o.path for o in mine if o.ok]
        if ok:
            m = read_metrics(ok)
            ev = row.protocol.evaluation
            per_row[row.name] = row_set(m, ev.convention, ev.nsd_tolerance_mm)
    return per_row, failed


def open_dataset(dataset: str, opts: RunOptions) -> Dataset:
    """The dataset of an experiment, after checking that results can be written."""
    check_writable(opts.run.results)
    return resolve_dataset(dataset, say=opts.say, data_root=opts.data_root, fold=opts.fold)


def ablate(spec_path: Path, opts: RunOptions) -> int:
    """``bench ablate SPEC``: the spec's rows as runs, then its table; returns the exit status."""
    return run_ablation(load_spec(spec_path), Path(spec_path).stem, opts)


def run_ablation(spec: AblationSpec, name: str, opts: RunOptions) -> int:
    rows = expand(spec, opts.protocol, opts.sets)
    seeds = list(opts.seeds) or spec.seeds or list(rows[0].protocol.seeds)
    ds = open_dataset(opts.dataset or spec.dataset, opts)
    try:
        per_row, failed = run_rows(rows, seeds, ds, opts)
    except Submitted:
        return 0
    except Interrupted as e:
        return stopped(e, opts.say)
    reference = references.load_reference(spec.mirrors) if spec.mirrors else \
        {"rows": [], "source": "none", "dataset": "-"}
    ours = {r: references.row_values(m) for r, m in per_row.items()}
    table = references.build_table(reference, ours, {r: r for r in ours}, all_published=False)
    base = rows[0].protocol
    proto_name = opts.load_protocol(spec.protocol).name  # the table's protocol, without a protocol knob
    note = references.caveat(reference, proto_name, base.hash(), ds.name, base.evaluation.convention, seeds,
                             base.precision, base.evaluation.subset())
    title = f"Ablation {name}: {spec.knob or 'variant'} ({spec.base})"
    out = opts.reports / ds.name / proto_name / "ablations" / name
    references.write_comparison(table, reference, title, note, out, opts.out)
    return say_failures(failed, opts.say)
