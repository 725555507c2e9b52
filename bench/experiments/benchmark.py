"""``bench benchmark SPEC``: several models on several datasets as ordinary runs, then one benchmark report.

A spec (``BenchmarkSpec``, YAML; the shipped ones in ``bench/experiments/benchmarks/`` are found by
name) lists the models (registry names, or ablation rows written as their run folders name them:
``swinunet@skip_connections=0``), the datasets (any ``--dataset`` form, each with an optional fold
and protocol overrides of its own, e.g. another input size), the seeds and one protocol.
Everything that can be known to fail is checked before the first run (``plan``): the spec's keys,
the models and their knobs, the protocol and each override, the datasets, the run folders; an
error is one line naming the spec file and the key. Each dataset's runs then go through
``execute_jobs`` (any executor; completed runs are reused), and
``bench.report.benchmark.build_benchmark_report`` writes ``<reports>/benchmarks/<spec name>/``
with one cohort per dataset: that dataset's run folders.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from rich.text import Text

from bench.data.resolve import resolve_dataset
from bench.data.synapse import Dataset
from bench.engine.results import check_writable
from bench.engine.runner import Outcome
from bench.engine.runs import RunSpec
from bench.engine.train import Interrupted
from bench.errors import BenchError
from bench.experiments.ablation import Row, is_protocol_knob, jobs
from bench.experiments.execute import Submitted, execute_jobs, run_device, say_failures
from bench.experiments.options import RunOptions
from bench.experiments.preflight import check_models, check_run_folders
from bench.protocol import Protocol, Seed, derive, load_protocol, load_yaml_model, parse_protocol_name, parse_set
from bench.report.benchmark import BenchmarkReport, build_benchmark_report
from models import require_models
from models.registry import UnknownModelError

BENCHMARK_DIR = Path(__file__).parent / "benchmarks"


def parse_model(text: str) -> tuple[str, dict[str, Any]]:
    """A spec's model entry: ``name`` or ``name@knob=value,...`` (values read as YAML: ``0``, ``bilinear``,
    ``[2, 2]``) -> (registry name, knobs). The form is the run folder's (``RunSpec.label``)."""
    name, raw = parse_protocol_name(text.strip())
    name = name.strip()
    if not name or (not raw and "@" in text):
        raise ValueError(f"'{text}': expected a model name, or name@knob=value,...")
    knobs = {}
    for key, value in raw.items():
        if not key.strip() or not value.strip():
            raise ValueError(f"'{text}': expected knob=value, got '{key}={value}'")
        if is_protocol_knob(key):
            raise ValueError(f"'{text}': {key} is a protocol key, the same for every model of a dataset; "
                             "set it for a dataset instead (datasets: - {dataset: ..., set: {" + key + ": ...}})")
        try:
            knobs[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"'{text}': cannot read the value of {key}: '{value}'") from None
    return name, knobs


def model_label(text: str) -> str:
    """The label (run folder name) of a model entry: its knobs sorted, values as read."""
    name, knobs = parse_model(text)
    return RunSpec(name, 0, 0.0, "", knobs=knobs).label


def _model_entry(text: str) -> str:
    parse_model(text)
    return text


ModelEntry = Annotated[str, AfterValidator(_model_entry)]


class DatasetEntry(BaseModel):
    """One dataset of a benchmark: a ``--dataset`` form, its fold, and protocol overrides (``--set`` keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    fold: Annotated[int, Field(ge=0)] | None = None
    data_root: Path | None = None  # with dataset: synapse
    set: dict[str, Any] = {}


class BenchmarkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    models: Annotated[list[ModelEntry], Field(min_length=2)]
    datasets: Annotated[list[DatasetEntry], Field(min_length=1)]
    seeds: Annotated[list[Seed], Field(min_length=1)] | None = None  # default: the protocol's
    protocol: str = "cpu"
    baseline: str | None = None  # of the wins / ties / losses table; default unet when listed, else the first

    @field_validator("datasets", mode="before")
    @classmethod
    def _plain_names(cls, value: Any) -> Any:
        """``- synthetic`` is short for ``- {dataset: synthetic}``."""
        return [{"dataset": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("models")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        labels = [model_label(v) for v in value]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"listed more than once: {', '.join(twice)}")
        return value

    @field_validator("baseline")
    @classmethod
    def _listed(cls, value: str | None, info: ValidationInfo) -> str | None:
        labels = [model_label(v) for v in info.data.get("models") or []]
        if value is not None and labels and model_label(value) not in labels:
            raise ValueError(f"'{value}' is not one of the models ({', '.join(labels)})")
        return value

    def labels(self) -> list[str]:
        return [model_label(m) for m in self.models]


@dataclass(frozen=True)
class Part:
    """One dataset of a benchmark as it runs: its data, protocol and jobs."""

    ds: Dataset
    protocol: Protocol
    jobs: list[tuple[RunSpec, Protocol]]


def find_spec(name_or_path: str | Path) -> Path:
    """A spec file, or a shipped spec by name (``builtin``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = BENCHMARK_DIR / f"{name_or_path}.yaml"
    if not path.suffix and shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml")))
    raise BenchError(f"benchmark spec not found: {name_or_path} (a YAML file, or a shipped spec: {known})")


def load_spec(path: Path) -> BenchmarkSpec:
    return load_yaml_model(path, BenchmarkSpec)


def _refuse(path: Path, key: str, error: Exception) -> BenchError:
    return BenchError(f"{path}: key '{key}': {error}")


def _root_protocol(spec: BenchmarkSpec, path: Path, opts: RunOptions) -> Protocol:
    if opts.protocol is not None:
        return load_protocol(opts.protocol)
    try:
        return load_protocol(spec.protocol)
    except BenchError as e:
        raise _refuse(path, "protocol", e) from None


def _protocols(spec: BenchmarkSpec, path: Path, opts: RunOptions) -> list[Protocol]:
    """Each dataset's protocol: the spec's (or ``--protocol``), the dataset's overrides, then ``--set``
    (flags win over the spec), in one ``derive``; the dataset's overrides are first checked alone, so
    that an error names their key."""
    root = _root_protocol(spec, path, opts)
    sets = dict(parse_set(item) for item in opts.sets)
    out = []
    for i, entry in enumerate(spec.datasets):
        derive(root, entry.set, where=f"{path}: datasets.{i}.set")
        out.append(derive(root, {**entry.set, **sets}))
    return out


def _datasets(spec: BenchmarkSpec, path: Path, opts: RunOptions) -> list[Dataset]:
    """Each dataset opened (the built-in ones generated on first use), checked, and named once."""
    out: list[Dataset] = []
    for i, entry in enumerate(spec.datasets):
        try:
            ds = resolve_dataset(entry.dataset, say=opts.say, data_root=entry.data_root, fold=entry.fold)
        except BenchError as e:
            raise _refuse(path, f"datasets.{i}", e) from None
        same = [j for j, other in enumerate(out) if other.name == ds.name]
        if same:
            raise _refuse(path, f"datasets.{i}", BenchError(
                f"dataset '{ds.name}' is already datasets.{same[0]}; each dataset is one cohort of the report"))
        out.append(ds)
    return out


def plan(spec: BenchmarkSpec, path: Path, opts: RunOptions) -> list[Part]:
    """Every dataset's runs, each checked before any of them trains (see the module's docstring)."""
    for i, text in enumerate(spec.models):
        try:
            require_models([parse_model(text)[0]])
        except UnknownModelError as e:
            raise _refuse(path, f"models.{i}", e) from None
    protocols = _protocols(spec, path, opts)
    check_writable(opts.run.results)
    parts = []
    for i, (ds, proto) in enumerate(zip(_datasets(spec, path, opts), protocols, strict=True)):
        seeds = list(opts.seeds) or spec.seeds or list(proto.seeds)
        todo = []
        for k, text in enumerate(spec.models):
            name, knobs = parse_model(text)
            row = jobs([Row(text, name, knobs, proto)], seeds)
            try:
                check_models(row, ds)
            except BenchError as e:
                raise _refuse(path, f"models.{k}", BenchError(f"on datasets.{i} ({ds.name}): {e}")) from None
            todo += row
        if not opts.run.force:
            check_run_folders(todo, ds, opts.run.results)
        parts.append(Part(ds, proto, todo))
    return parts


@contextmanager
def _one_ray(opts: RunOptions) -> Iterator[None]:
    """With ``--executor ray``, one Ray for every dataset's tasks (not one started per dataset)."""
    if opts.executor.name != "ray":
        yield
        return
    from bench.experiments.executors.ray import ray_session

    with ray_session(opts):
        yield


def _execute(parts: list[Part], opts: RunOptions) -> list[list[Outcome]] | None:
    """Each part's outcomes; None when runs went to Slurm without ``--wait``.

    On Slurm every dataset's array is submitted before waiting for any, so that they queue side by
    side; with ``--wait`` each dataset is then run again, which waits for its queued runs (a run in
    the queue is never submitted twice) and reads their outcomes.
    """
    device = run_device(opts)
    if opts.executor.name == "slurm":
        submit = replace(opts, executor=replace(opts.executor, wait=False))
        done, queued = [], False
        for p in parts:
            try:
                done.append(execute_jobs(p.jobs, p.ds, device, submit))
            except Submitted:
                queued = True
        if not queued:
            return done
        if not opts.executor.wait:
            return None
    with _one_ray(opts):
        return [execute_jobs(p.jobs, p.ds, device, opts) for p in parts]


def _say_ranks(rep: BenchmarkReport, say) -> None:
    ranks = pd.read_csv(rep.out / "csv" / "mean_ranks.csv")
    for metric, rows in ranks.groupby("metric", sort=False):
        order = ", ".join(f"{r.model} {r.mean_rank_aggregate_then_rank:.2f}" for r in rows.itertuples())
        say(f"mean rank over {len(rep.datasets)} datasets, {metric} (1 = best): {order}")


def benchmark(spec_arg: str | Path, opts: RunOptions) -> int:
    """``bench benchmark SPEC``: every model x dataset x seed as a run, then the report; the exit status."""
    path = find_spec(spec_arg)
    spec, name = load_spec(path), path.stem
    parts = plan(spec, path, opts)
    n = sum(len(p.jobs) for p in parts)
    opts.say(Text.assemble("benchmark ", (name, "bold"),
                           f": {len(spec.models)} models x {len(parts)} datasets, {n} runs"))
    for p in parts:
        opts.say(f"  {p.ds.name} ({len(p.ds.train_slices)} training slices, {len(p.ds.test_cases)} test cases): "
                 f"protocol {p.protocol.name} ({p.protocol.hash()}), seeds "
                 f"{sorted({s.seed for s, _ in p.jobs})}")
    try:
        outcomes = _execute(parts, opts)
    except Interrupted as e:
        opts.say(Text.assemble(("interrupted", "yellow"), f": {e}; run the same command again to resume"))
        return 130
    if outcomes is None:
        opts.say("every dataset's runs are queued; run the same command again (or with --wait) for the "
                 "benchmark report once they are done")
        return 0
    code = say_failures([o for outs in outcomes for o in outs], opts.say)
    cohorts = {p.ds.name: [o.path for o in outs if o.ok] for p, outs in zip(parts, outcomes, strict=True)}
    out = opts.reports / "benchmarks" / name
    try:
        rep = build_benchmark_report(cohorts, out, baseline=model_label(spec.baseline) if spec.baseline else None,
                                     spec_name=name)
    except BenchError as e:  # the runs are on disk; the command failed all the same
        opts.say(Text.assemble(("no benchmark report", "red"), f": {e}"))
        return code or 1
    _say_ranks(rep, opts.say)
    opts.say(f"benchmark report written to {rep.html}")
    return code
