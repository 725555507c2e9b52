"""``bench run``: resolve the inputs once, run every (model, seed), print the table."""
from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console

from bench.data.resolve import resolve_dataset
from bench.engine.results import RunId, check_writable, read_metrics, run_path
from bench.engine.runner import RunSpec, check_conflict, config_key, run_config
from bench.engine.train import Interrupted
from bench.errors import BenchError
from bench.experiments.execute import Submitted, execute_jobs, run_device, say_failures
from bench.experiments.options import RunOptions
from bench.experiments.preflight import check_jobs, check_weights
from bench.report.console import render_rich, summary_table, write_summary
from models import is_model, list_models


def _parse_lr(lr: str | float | None) -> float | None:
    if lr is None:
        return None
    try:
        value = float(lr)
    except ValueError:
        raise BenchError(f"--lr expects a number or 'tuned', got '{lr}'") from None
    if not math.isfinite(value) or value <= 0:
        raise BenchError(f"--lr must be a positive number, got '{lr}'")
    return value


def _tuned_lrs(models: list[str], ds, proto, results: Path, storage: str | None, studies: list[str],
               say) -> dict[str, tuple[float, str]]:
    """Each model's best learning rate from its study (``--lr tuned``), with its source."""
    from bench.experiments.tune.studies import default_storage_url, study_name, tuned_lr

    if studies and len(studies) != len(models):
        raise BenchError(f"--study names one study per model: {len(studies)} names for {len(models)} models")
    names = studies or [study_name(ds.name, m, proto) for m in models]
    url = storage or default_storage_url(results)
    return {m: tuned_lr(url, name, m, proto, say) for m, name in zip(models, names, strict=False)}


def _describe_lrs(lrs: dict[str, tuple[float, str]]) -> str:
    pairs = set(lrs.values())
    if len(pairs) == 1:
        value, source = pairs.pop()
        return f"{value:g} ({source})"
    return ", ".join(f"{m} {value:g} ({source})" for m, (value, source) in lrs.items())


def sweep(models: list[str], opts: RunOptions, lr: str | float | None = None, weights: dict[str, str] | None = None,
          storage: str | None = None, studies: list[str] | None = None) -> int:
    """Run the sweep; returns the exit status (0 when every run completed or was reused)."""
    weights = weights or {}
    console = opts.console
    if not models:
        raise BenchError("--models is empty; valid models: " + ", ".join(list_models()))
    for m in models + list(weights):
        if not is_model(m):
            raise BenchError(f"unknown model '{m}'; valid models: {', '.join(list_models())}")
    check_weights(weights, models)
    proto = opts.load_protocol(iterations=opts.iterations, checkpoint_every=opts.checkpoint_every)
    seed_list = opts.seeds or list(proto.seeds)
    tuned = isinstance(lr, str) and lr.strip().lower() == "tuned"
    if (storage or studies) and not tuned:
        raise BenchError("--storage and --study choose a tuning study: use them with --lr tuned")
    fixed = None if tuned else _parse_lr(lr)
    check_writable(opts.results)
    dev = run_device(opts)
    ds = resolve_dataset(opts.dataset or "synthetic", say=console.print, data_root=opts.data_root, fold=opts.fold)
    if tuned:
        lrs = _tuned_lrs(models, ds, proto, opts.results, storage, studies or [], console.print)
    else:
        lrs = {m: (fixed, "flag --lr") if fixed is not None else (proto.effective_lr(), f"protocol {proto.name}")
               for m in models}

    specs = [RunSpec(m, s, *lrs[m], weights.get(m)) for m in models for s in seed_list]
    if not opts.force:  # refuse before any training rather than after an hour of it
        for spec in specs:
            run = run_path(opts.results, RunId(ds.name, proto.name, spec.label, spec.seed))
            msg = check_conflict(run, config_key(run_config(spec, proto, ds)))
            if msg:
                raise BenchError(msg)
    check_jobs([(spec, proto) for spec in specs], ds, opts.results, opts.force)

    where = dev if opts.executor.name == "local" else f"{opts.device} on the {opts.executor.name} nodes"
    console.print(f"protocol [bold]{proto.name}[/] ({proto.hash()}), dataset [bold]{ds.name}[/] "
                  f"({len(ds.train_slices)} training slices, {len(ds.test_cases)} test cases), "
                  f"device {where}, lr {_describe_lrs(lrs)}, seeds {seed_list}")
    try:
        outcomes = execute_jobs([(spec, proto) for spec in specs], ds, dev, opts)
    except Interrupted as e:
        console.print(f"[yellow]interrupted[/]: {e}; run the same command again to resume")
        return 130
    except Submitted:
        return 0

    done = [o.path for o in outcomes if o.ok]
    if done:
        metrics = read_metrics(done)
        table = summary_table(metrics[metrics["convention"] == proto.evaluation.convention])
        title = (f"{ds.name} / protocol {proto.name} ({proto.hash()}) / convention "
                 f"{proto.evaluation.convention}: DSC % and HD95, mean over cases and seeds")
        console.print(render_rich(table, title, console.width))
        md = opts.reports / ds.name / proto.name / "summary.md"
        write_summary(table, f"# {title}", md)
        console.print(f"table written to {md}")
    code = say_failures(outcomes, console.print)
    if opts.report and not _report(opts.results, opts.reports, [o.path for o in outcomes], console,
                                   f"--dataset {ds.name} --protocol {proto.name}"):
        code = code or 1
    return code


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
        console.print(f"[red]report not written[/]: {reason}; the runs are complete: retry with `bench report "
                      f"--results {results} {select}`")
        return False
    console.print(f"report written to {rep.html}")
    return True

