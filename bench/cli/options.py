"""Command-line options that several commands share, each declared once with one default.

``@run_options("protocol", "dataset", ...)`` adds the named options, every engine setting, and (for
commands that run training) the executor's (``--executor``, the Slurm and Ray resources, ``--wait``)
to a typer command's signature and hands the command one ``RunOptions`` as its ``opts`` argument.
The settings that reach the engine (``bench.engine.settings.RunSettings``) are built from
``SETTINGS`` by field name, so a new setting costs its field there and its entry here (and every
training command has its flag). Shorthand flags
(``--iterations N``) are ``--set`` overrides (``iterations=N``): one path, one protocol name.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import typer
from rich.console import Console
from rich.text import Text

from bench.engine.settings import RunSettings
from bench.errors import BenchError
from bench.experiments.executors.resources import check, parse_slurm_args
from bench.experiments.options import ExecutorOptions, RunOptions

# Text is never markup: paths, error texts and file contents are printed as they are (no Rich markup,
# no :emoji: codes); styles are given explicitly (rich.text.Text, style=).
console = Console(markup=False, emoji=False)
console.soft_wrap = not console.is_terminal  # log files get whole lines, not 80-column pieces
err_console = Console(stderr=True, markup=False, emoji=False)


def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_seeds(value: str | None) -> list[int]:
    """``--seeds 0,1`` as integers; empty means the protocol's (or a spec's) seeds."""
    try:
        seeds = [int(v) for v in csv_list(value)]
    except ValueError:
        raise BenchError(f"--seeds expects comma-separated integers, got '{value}'") from None
    if any(s < 0 for s in seeds):
        raise BenchError(f"--seeds: seeds are integers >= 0, got '{value}'")
    return seeds


# name -> (annotation, typer option)
PROTOCOL = typer.Option(None, help="Protocol: paper, cpu, smoke or a YAML file (default: cpu, or an ablation "
                        "spec's). See `bench protocol list`.")
SETS = typer.Option([], "--set", metavar="KEY=VALUE",
                    help="Override a protocol key, e.g. batch_size=4 or evaluation.convention=strict (repeatable). "
                    "The result is another protocol (cpu@batch_size=4), with its own hash and run folders.")
DATASET = typer.Option(None, help="'synthetic' (default), 'synapse' (with --data-root), a folder in the Synapse "
                       "layout, or a folder with images/ and masks/ (an ablation spec may name its own).")
DATA_ROOT = typer.Option(None, help="With --dataset synapse: the official preprocessed data "
                         "(train_npz/, test_vol_h5/, lists/lists_Synapse/).")
FOLD = typer.Option(None, help="Train and evaluate on fold K of the dataset's stored split "
                    "(make folds with `bench data split DIR --folds K`).")
SEEDS = typer.Option(None, help="Comma-separated seeds (default: the protocol's, or an ablation spec's).")
RESULTS = typer.Option(Path("results"), help="Results folder.")
REPORTS = typer.Option(Path("reports"), help="Reports folder (a report goes to <reports>/<dataset>/<protocol>/...).")
DEVICE = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")
TRACK = typer.Option(None, "--track", help="Follow training live: tensorboard, mlflow, or tensorboard,mlflow "
                     "(pip install 'segbench\\[track]').")

SHARED: dict[str, tuple[Any, Any]] = {
    "protocol": (str | None, PROTOCOL),
    "sets": (list[str], SETS),
    "dataset": (str | None, DATASET),
    "data_root": (Path | None, DATA_ROOT),
    "fold": (int | None, FOLD),
    "seeds": (str | None, SEEDS),
    "reports": (Path, REPORTS),
    "out": (Path | None, typer.Option(None, hidden=True, help="Deprecated: use --reports.")),
    "report": (bool, typer.Option(True, "--report/--no-report", help="Write the full report (HTML, plots, "
                                  "statistics) after the runs; the summary table is printed either way.")),
}
# RunSettings fields: name -> (annotation, typer option, flag value -> field value)
SETTINGS: dict[str, tuple[Any, Any, Callable[[Any], Any]]] = {
    "results": (Path, RESULTS, Path),
    "device": (str, DEVICE, str),
    "force": (bool, typer.Option(False, help="Redo runs that already completed."), bool),
    "keep_weights": (bool, typer.Option(True, "--keep-weights/--drop-weights", help="Keep each completed run's "
                                        "trained weights (model.pt); --drop-weights keeps only metrics, logs and "
                                        "predictions."), bool),
    "track": (str | None, TRACK, lambda v: tuple(csv_list(v))),
}
# shorthand flag -> the protocol key it sets (through --set)
SHORTHANDS: dict[str, tuple[str, Any, Any]] = {
    "iterations": ("iterations", int | None, typer.Option(None, help="Shorthand for --set iterations=N: the run "
                                                          "is filed under <protocol>@iterations=N.")),
    "checkpoint_every": ("checkpoint_every", int | None, typer.Option(None, help="Shorthand for --set "
                                                                      "checkpoint_every=N.")),
    "lr_min": ("tuning.lr_min", float | None, typer.Option(None, help="Shorthand for --set tuning.lr_min=X "
                                                           "(lower end of the LR range).")),
    "lr_max": ("tuning.lr_max", float | None, typer.Option(None, help="Shorthand for --set tuning.lr_max=X "
                                                           "(upper end of the LR range).")),
}
EXECUTOR: dict[str, tuple[Any, Any]] = {
    "executor": (str, typer.Option("local", "--executor", help="Where runs execute: local (this process), slurm "
                                   "(one sbatch array task per run, through submitit) or ray (one Ray task per run).")),
    "partition": (str | None, typer.Option(None, help="Slurm partition (default: the cluster's).")),
    "gpus_per_run": (int | None, typer.Option(None, help="GPUs per run (slurm, ray); default 1 with --device "
                                                 "cuda or a GPU protocol (paper, your own), 0 on CPU (cpu, smoke).")),
    "cpus_per_run": (int | None, typer.Option(None, help="CPUs per run (slurm, ray); default: the protocol's "
                                                 "threads + its data-loader workers (fewer than its threads: "
                                                 "refused).")),
    "mem": (str | None, typer.Option(None, help="Slurm memory per run, e.g. 32G (default: the cluster's).")),
    "time": (str | None, typer.Option(None, help="Slurm time limit per run, e.g. 8:00:00 or 2-00:00:00 "
                                         "(default: the partition's).")),
    "max_parallel": (int | None, typer.Option(None, help="Slurm: at most this many runs at once (the "
                                                 "array's %K).")),
    "slurm_arg": (list[str], typer.Option([], help="KEY=VALUE: any other sbatch option, e.g. account=mylab, "
                                          "qos=high, constraint=a100 (repeatable; one line each; not a key the "
                                          "harness sets, e.g. signal or output, unless --slurm-override names it).")),
    "slurm_override": (list[str], typer.Option([], metavar="KEY", help="Let --slurm-arg KEY=... replace a key the "
                                               "harness sets itself (signal, output, error, open-mode, nodes, ntasks, "
                                               "job-name, wckey; repeatable). See docs/clusters.md.")),
    "wait": (bool, typer.Option(False, "--wait", help="Slurm: block until every run ends, then print the table "
                                "and exit status of a local run (default: submit and return).")),
    "ray_address": (str | None, typer.Option(None, help="Ray cluster to run on (default: $RAY_ADDRESS, else a "
                                                "Ray started on this machine for the command).")),
}
WORKERS = (int, typer.Option(1, help="bench tune with --executor slurm or ray: this many workers, each adding "
                             "--trials trials to the shared study (needs --storage journal:FILE or postgresql://)."))


def executor_from(values: dict) -> ExecutorOptions:
    """``ExecutorOptions`` from the parsed flags, checked as a whole."""
    ex = ExecutorOptions(
        name=values["executor"], gpus_per_run=values["gpus_per_run"], cpus_per_run=values["cpus_per_run"],
        partition=values["partition"], mem=values["mem"], time=values["time"], max_parallel=values["max_parallel"],
        slurm_args=parse_slurm_args(values["slurm_arg"], values["slurm_override"]),
        slurm_overrides=tuple(values["slurm_override"]), wait=values["wait"], ray_address=values["ray_address"],
        workers=values.get("workers", 1))
    check(ex)
    return ex


def options_from(values: dict, executor: bool) -> RunOptions:
    """One ``RunOptions`` from the parsed flags: shorthands become ``--set`` overrides, settings a
    ``RunSettings``; a flag the command does not declare keeps its one default."""
    sets = list(values.get("sets") or [])
    sets += [f"{key}={values[name]}" for name, (key, _, _) in SHORTHANDS.items() if values.get(name) is not None]
    reports = values.get("reports", Path("reports"))
    if values.get("out") is not None:
        err_console.print(Text.assemble(("warning:", "yellow"), " --out is deprecated here; use --reports"),
                          highlight=False)
        reports = values["out"]
    settings = RunSettings(**{name: convert(values[name]) for name, (_, _, convert) in SETTINGS.items()
                              if name in values})
    return RunOptions(protocol=values.get("protocol"), sets=tuple(sets), dataset=values.get("dataset"),
                      data_root=values.get("data_root"), fold=values.get("fold"),
                      seeds=tuple(parse_seeds(values.get("seeds"))), reports=reports,
                      report=values.get("report", True), run=settings,
                      executor=executor_from(values) if executor else ExecutorOptions(), console=console)


# The default of a command's ``opts`` parameter: ``@run_options`` removes the parameter from what
# typer sees and always passes the options built from the flags.
FROM_FLAGS = cast(RunOptions, None)


def run_options(*names: str, executor: bool = True, workers: bool = False, without: tuple[str, ...] = ()):
    """Decorate a typer command whose last parameter is ``opts: RunOptions`` with the named shared
    options (``SHARED``, ``SHORTHANDS``), every engine setting (``SETTINGS``) but those ``without``,
    and, with ``executor``, the executor's."""
    table = {**SHARED, **{n: (a, o) for n, (_, a, o) in SHORTHANDS.items()}}
    unknown = [n for n in [*names, *without] if n not in table and n not in SETTINGS]
    if unknown:
        raise ValueError(f"no shared option {unknown}")
    settings = {n: (a, o) for n, (a, o, _) in SETTINGS.items() if n not in without}
    declared = ({n: table[n] for n in names if n in table} | settings | (EXECUTOR if executor else {})
                | ({"workers": WORKERS} if workers else {}))

    def decorate(fn):
        sig = inspect.signature(fn)
        kept = [p for name, p in sig.parameters.items() if name != "opts"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                 for name, (annotation, option) in declared.items()]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in declared}
            return fn(*args, opts=options_from(values, executor), **kwargs)

        command.__signature__ = sig.replace(parameters=kept + added)
        command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "opts"} | {
            name: annotation for name, (annotation, _) in declared.items()}
        return command

    return decorate
