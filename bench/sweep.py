"""``bench run``: resolve the inputs once, run every (model, seed), print the table."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from bench.datasets import resolve_dataset
from bench.errors import BenchError
from bench.env import pick_device
from bench.protocol import load_protocol
from bench.results import RunId, read_metrics, run_path
from bench.runner import RunSpec, check_conflict, config_key, execute, run_config
from bench.train import Interrupted
from bench.summary import render_rich, summary_table, write_summary
from models import is_model, list_models


MIN_FREE_BYTES = 1 << 30


def _check_writable(results: Path) -> None:
    """Fail before training, not after it, when results can't be written."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=results, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise BenchError(f"results folder is not writable: {results} ({e.strerror})") from None
    free = shutil.disk_usage(results).free
    if free < MIN_FREE_BYTES:
        raise BenchError(f"only {free / 2**20:.0f} MiB free under {results}; runs need at least 1 GiB "
                         "for checkpoints and predictions")


def _say_outcome(console: Console, out) -> None:
    note = f" ({out.message})" if out.message else ""
    console.print(f"{out.run.model} seed {out.run.seed}: {out.status}{note} -> {out.path}")


def sweep(
    models: list[str], dataset: str, protocol: str, seeds: list[str], results: Path, reports: Path,
    lr: float | None, iterations: int | None, checkpoint_every: int | None, weights: dict[str, str],
    device: str, force: bool, console: Console, progress: Progress,
    data_root: Path | None = None, fold: int | None = None,
) -> int:
    """Run the sweep; returns the exit status (0 when every run completed or was reused)."""
    if not models:
        raise BenchError("--models is empty; valid models: " + ", ".join(list_models()))
    for m in models + list(weights):
        if not is_model(m):
            raise BenchError(f"unknown model '{m}'; valid models: {', '.join(list_models())}")
    for m, path in weights.items():
        if not Path(path).is_file():
            raise BenchError(f"--weights {m}: file not found: {path}")
    try:
        seed_list = [int(s) for s in seeds]
    except ValueError:
        raise BenchError(f"--seeds expects comma-separated integers, got '{','.join(seeds)}'") from None
    proto = load_protocol(protocol).override(iterations=iterations, checkpoint_every=checkpoint_every)
    seed_list = seed_list or list(proto.seeds)
    base_lr = lr if lr is not None else proto.effective_lr()
    lr_source = "flag --lr" if lr is not None else f"protocol {proto.name}"
    _check_writable(results)
    ds = resolve_dataset(dataset, say=console.print, data_root=data_root, fold=fold)
    dev = pick_device(device)

    specs = [RunSpec(m, s, base_lr, lr_source, weights.get(m)) for m in models for s in seed_list]
    if not force:  # refuse before any training rather than after an hour of it
        for spec in specs:
            run = run_path(results, RunId(ds.name, proto.name, spec.model, spec.seed))
            msg = check_conflict(run, config_key(run_config(spec, proto, ds)))
            if msg:
                raise BenchError(msg)

    console.print(f"protocol [bold]{proto.name}[/] ({proto.hash()}), dataset [bold]{ds.name}[/] "
                  f"({len(ds.train_slices)} training slices, {len(ds.test_cases)} test cases), "
                  f"device {dev}, lr {base_lr:g} ({lr_source}), seeds {seed_list}")
    outcomes = []
    try:
        with progress:
            for spec in specs:
                outcomes.append(execute(spec, proto, ds, results, dev, force, progress, say=progress.console.print))
                _say_outcome(progress.console, outcomes[-1])
            # runs another process holds: wait for it, then reuse its result
            for i, spec in enumerate(specs):
                if outcomes[i].status == "locked":
                    progress.console.print(f"waiting for another process: {outcomes[i].message}")
                    outcomes[i] = execute(spec, proto, ds, results, dev, force, progress,
                                          say=progress.console.print, wait=True)
                    _say_outcome(progress.console, outcomes[i])
    except Interrupted as e:
        console.print(f"[yellow]interrupted[/]: {e}; run the same command again to resume")
        return 130

    done = [o.path for o in outcomes if o.status in ("complete", "skipped")]
    if done:
        metrics = read_metrics(done)
        table = summary_table(metrics[metrics["convention"] == proto.evaluation.convention])
        title = (f"{ds.name} / protocol {proto.name} ({proto.hash()}) / convention "
                 f"{proto.evaluation.convention}: DSC % and HD95, mean over cases and seeds")
        console.print(render_rich(table, title))
        md = reports / ds.name / proto.name / "summary.md"
        write_summary(table, f"# {title}", md)
        console.print(f"table written to {md}")
    bad = [o for o in outcomes if o.status not in ("complete", "skipped")]
    for o in bad:
        console.print(f"[red]{o.status}[/]: {o.run.model} seed {o.run.seed}: {o.message}")
    return 1 if bad else 0

