"""The executor options shared by ``bench run``, ``ablate``, ``paper`` and ``tune``, declared once.

``@executor_options()`` adds ``--executor``, the Slurm and Ray resource options and ``--wait``
to a command's signature (``workers=True`` adds ``--workers``) and hands the command one
``ExecutorOptions`` as its ``executor`` argument.
"""
from __future__ import annotations

import functools
import inspect

import typer

from bench.experiments.executors.resources import check, parse_slurm_args
from bench.experiments.options import ExecutorOptions

# name -> (annotation, typer.Option)
OPTIONS = {
    "executor": (str, typer.Option("local", "--executor", help="Where runs execute: local (this process), slurm "
                                   "(one sbatch array task per run, through submitit) or ray (one Ray task per run).")),
    "partition": (str | None, typer.Option(None, help="Slurm partition (default: the cluster's).")),
    "gpus_per_run": (int | None, typer.Option(None, help="GPUs per run (slurm, ray); default 1 with --device "
                                                 "cuda or a GPU protocol (paper, your own), 0 on CPU (cpu, smoke).")),
    "cpus_per_run": (int | None, typer.Option(None, help="CPUs per run (slurm, ray); default: the protocol's "
                                                 "data-loader workers + 1.")),
    "mem": (str | None, typer.Option(None, help="Slurm memory per run, e.g. 32G (default: the cluster's).")),
    "time": (str | None, typer.Option(None, help="Slurm time limit per run, e.g. 8:00:00 or 2-00:00:00 "
                                         "(default: the partition's).")),
    "max_parallel": (int | None, typer.Option(None, help="Slurm: at most this many runs at once (the "
                                                 "array's %K).")),
    "slurm_arg": (list[str], typer.Option([], help="KEY=VALUE: any other sbatch option, e.g. account=mylab, "
                                          "qos=high, constraint=a100 (repeatable).")),
    "wait": (bool, typer.Option(False, "--wait", help="Slurm: block until every run ends, then print the table "
                                "and exit status of a local run (default: submit and return).")),
    "ray_address": (str | None, typer.Option(None, help="Ray cluster to run on (default: $RAY_ADDRESS, else a "
                                                "Ray started on this machine for the command).")),
}
WORKERS = (int, typer.Option(1, help="bench tune with --executor slurm or ray: this many workers, each adding "
                             "--trials trials to the shared study (needs --storage journal:FILE or postgresql://)."))


def build(values: dict) -> ExecutorOptions:
    """``ExecutorOptions`` from the parsed flags, checked as a whole."""
    ex = ExecutorOptions(
        name=values["executor"], gpus_per_run=values["gpus_per_run"], cpus_per_run=values["cpus_per_run"],
        partition=values["partition"], mem=values["mem"], time=values["time"], max_parallel=values["max_parallel"],
        slurm_args=parse_slurm_args(values["slurm_arg"]), wait=values["wait"], ray_address=values["ray_address"],
        workers=values.get("workers", 1))
    check(ex)
    return ex


def executor_options(workers: bool = False):
    """Decorate a typer command whose last parameter is ``executor: ExecutorOptions``."""
    options = OPTIONS | ({"workers": WORKERS} if workers else {})

    def decorate(fn):
        sig = inspect.signature(fn)
        kept = [p for name, p in sig.parameters.items() if name != "executor"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                 for name, (annotation, option) in options.items()]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in options}
            return fn(*args, executor=build(values), **kwargs)

        command.__signature__ = sig.replace(parameters=kept + added)
        command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "executor"} | {
            name: annotation for name, (annotation, _) in options.items()}
        return command

    return decorate
