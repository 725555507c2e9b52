"""``bench run``: resolve the inputs once, run every (model, seed), print the table."""
from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.text import Text

from bench.data.resolve import resolve_dataset
from bench.engine.header import describe_dataset, describe_lrs, header
from bench.engine.results import check_writable, read_metrics, row_set
from bench.engine.runs import RunSpec, lr_tag
from bench.engine.train import Interrupted
from bench.errors import BenchError
from bench.experiments.execute import Submitted, execute_jobs, run_device, say_failures, stopped, where_runs
from bench.experiments.options import RunOptions
from bench.experiments.preflight import check_jobs, check_weights
from bench.report.console import render_rich, summary_table, write_summary
from models import list_models, require_models

DEFAULT_LR, TUNED_LR = "default", "tuned"


def parse_lrs(text: str | None) -> list[str | float]:
    """``--lr``: comma-separated ``default`` (the protocol's LR), ``tuned`` (each model's best trial)
    and positive numbers; none given is ``default``. Each item is a run of each model and seed."""
    items: list[str | float] = []
    for item in [v.strip() for v in (text or DEFAULT_LR).split(",") if v.strip()] or [DEFAULT_LR]:
        if item.lower() in (DEFAULT_LR, TUNED_LR):
            items.append(item.lower())
            continue
        try:
            value = float(item)
        except ValueError:
            raise BenchError(f"--lr expects numbers, 'default' or 'tuned' (comma-separated), got '{item}'") from None
        if not math.isfinite(value) or value <= 0:
            raise BenchError(f"--lr must be a positive number, got '{item}'")
        items.append(value)
    if len(set(items)) != len(items):
        raise BenchError(f"--lr lists an LR twice: '{text}'")
    return items


# one LR of a model: (value, source for the manifest, tag for the model label; "" = the protocol's)
Lr = tuple[float, str, str]


def _tuned_lrs(models: list[str], ds, proto, results: Path, storage: str | None, studies: list[str],
               say) -> dict[str, Lr]:
    """Each model's best learning rate from its study (``--lr tuned``), with its source and label tag."""
    from bench.experiments.tune.studies import default_storage_url, study_name, tuned_lr

    if studies and len(studies) != len(models):
        raise BenchError(f"--study names one study per model: {len(studies)} names for {len(models)} models")
    names = studies or [study_name(ds.name, m, proto) for m in models]
    url = storage or default_storage_url(results)
    out = {}
    for m, name in zip(models, names, strict=True):
        value, source = tuned_lr(url, name, m, proto, say)
        out[m] = (value, source, lr_tag(study=name, default_study=study_name(ds.name, m, proto)))
    return out


def _model_lrs(models: list[str], items: list[str | float], proto, tuned: dict[str, Lr], say) -> dict[str, list[Lr]]:
    """Every model's LRs, in the order of ``--lr``; a number equal to the protocol's LR is its run."""
    default: Lr = (proto.effective_lr(), f"protocol {proto.name}", "")
    chosen: list[Lr | None] = []
    for item in items:
        if item == DEFAULT_LR:
            chosen.append(default)
        elif item == TUNED_LR:
            chosen.append(None)  # per model, below
        elif math.isclose(float(item), default[0], rel_tol=1e-12):
            say(f"--lr {item:g} is protocol {proto.name}'s LR: those runs are the protocol-LR runs")
            chosen.append(default)
        else:
            assert isinstance(item, float)
            chosen.append((item, "flag --lr", lr_tag(item)))
    out = {m: [c if c is not None else tuned[m] for c in chosen] for m in models}
    for m, lrs in out.items():
        if len({tag for _, _, tag in lrs}) != len(lrs):
            raise BenchError(f"--lr {','.join(map(str, items))}: two of these are the same LR for {m}")
    return out


def lr_header(lrs: dict[str, list[Lr]], proto) -> str:
    """The header's LR part: per --lr item, ``describe_lrs`` of every model's LR (the protocol's own LR
    also names the protocol's rule), items joined by '; '."""
    def source(value: float, where: str, tag: str) -> str:
        return f"{proto.lr_rule()}; {where}" if not tag and proto.lr_scaling != "none" else where

    columns = zip(*lrs.values(), strict=True)  # one tuple per --lr item: that LR of every model
    return "; ".join(describe_lrs((model, lr[0], source(*lr)) for model, lr in zip(lrs, column, strict=True))
                     for column in columns)


def sweep(models: list[str], opts: RunOptions, lr: str | None = None, weights: dict[str, str] | None = None,
          storage: str | None = None, studies: list[str] | None = None) -> int:
    """Run the sweep: every model x LR (``--lr``) x seed; returns the exit status (0 when every run
    completed or was reused)."""
    weights = weights or {}
    if not models:
        raise BenchError("--models is empty; valid models: " + ", ".join(list_models()))
    require_models(models)
    check_weights(weights, models)
    items = parse_lrs(lr)
    if (storage or studies) and TUNED_LR not in items:
        raise BenchError("--storage and --study choose a tuning study: use them with --lr tuned")
    proto = opts.load_protocol()
    seed_list = list(opts.seeds) or list(proto.seeds)
    check_writable(opts.run.results)
    dev = run_device(opts)
    ds = resolve_dataset(opts.dataset or "synthetic", say=opts.say, data_root=opts.data_root, fold=opts.fold)
    tuned = (_tuned_lrs(models, ds, proto, opts.run.results, storage, studies or [], opts.say)
             if TUNED_LR in items else {})
    lrs = _model_lrs(models, items, proto, tuned, opts.say)
    jobs = [(RunSpec(m, s, value, source, weights.get(m), lr_tag=tag), proto)
            for m in models for value, source, tag in lrs[m] for s in seed_list]
    check_jobs(jobs, ds, opts.run)
    opts.say(header(proto, describe_dataset(ds, proto.evaluation), where_runs(dev, opts),
                    lr_header(lrs, proto), f"seeds {seed_list}"))
    try:
        outcomes = execute_jobs(jobs, ds, dev, opts)
    except Interrupted as e:
        return stopped(e, opts.say)
    except Submitted:
        return 0
    done = [o.path for o in outcomes if o.ok]
    _print_table(done, ds.name, proto, opts)
    if len(items) > 1:
        _print_lr_effect(opts.run.results, done, opts)
    code = say_failures(outcomes, opts.say)
    if opts.report and not _report(opts.run.results, opts.reports, [o.path for o in outcomes], opts.out,
                                   f"--dataset {ds.name} --protocol {proto.name}"):
        code = code or 1
    return code


def _print_table(done: list[Path], dataset: str, proto, opts: RunOptions) -> None:
    """The per-organ table of the runs just made (or reused), printed and written as summary.md."""
    if not done:
        return
    metrics = read_metrics(done)
    table = summary_table(row_set(metrics, proto.evaluation.convention, proto.evaluation.nsd_tolerance_mm))
    subset = proto.evaluation.subset()
    title = (f"{dataset} / protocol {proto.name} ({proto.hash()}) / convention "
             f"{proto.evaluation.convention}: DSC % and HD95, mean over cases and seeds"
             + (f" (scored on {subset} only)" if subset else ""))
    opts.say(render_rich(table, title, opts.out.width))
    md = opts.reports / dataset / proto.name / "summary.md"
    write_summary(table, f"# {title}", md)
    opts.say(f"table written to {md}")


def _print_lr_effect(results: Path, done: list[Path], opts: RunOptions) -> None:
    """``--lr default,tuned``: is the LR to blame? Each other LR against the protocol's, paired, one table."""
    from bench.report.build import lr_effect
    from bench.report.load import load_runs
    from bench.report.render import lr_effect_lines

    if not done:
        return
    try:
        table = lr_effect(load_runs(results, runs=done))
    except BenchError as e:  # the runs are complete; the report says the rest
        opts.say(Text.assemble(("no LR comparison", "yellow"), f": {e}"))
        return
    for line in lr_effect_lines(table) if table is not None else []:
        opts.say(line, highlight=False, markup=False)


def _report(results: Path, reports: Path, runs: list[Path], console: Console, select: str) -> bool:
    """The full report of the runs just made; whether it was written.

    A report error never costs the runs themselves (they are on disk), but it is a failure of
    the command: the reason is printed and the exit status is not 0.
    """
    from bench.report import build_report

    try:
        rep = build_report(results, reports=reports, runs=runs)
    except Exception as e:
        reason = str(e) if isinstance(e, BenchError | OSError) else f"{type(e).__name__}: {e}"
        console.print(Text.assemble(("report not written", "red"), f": {reason}; the runs are complete: retry with "
                                    f"`bench report --results {results} {select}`"))
        return False
    console.print(f"report written to {rep.html}")
    return True

