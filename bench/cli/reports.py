"""``bench report`` and ``bench status``: what the runs under a results folder say."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from bench.cli.app import app
from bench.cli.options import REPORTS, RESULTS, console
from bench.errors import BenchError


@app.command()
def report(
    results: Path = RESULTS,
    reports: Path = REPORTS,
    out: Path | None = typer.Option(None, help="This exact output folder (default: <reports>/<dataset>/<protocol>/)."),
    baseline: str | None = typer.Option(None, help="Model the others are tested against (default: unet, "
                                                      "else the first model)."),
    allow_mixed: bool = typer.Option(False, help="Report runs of different protocol hashes, conventions or "
                                                 "datasets side by side in one report, marked, instead of one "
                                                 "report per cohort and an index."),
    dataset: str | None = typer.Option(None, help="Only runs on this dataset."),
    protocol: str | None = typer.Option(None, help="Only runs of this protocol name."),
    convention: str | None = typer.Option(None, help="Metric rows of this convention (default: each run's)."),
) -> None:
    """Write tables, statistics, plots and one HTML page from finished runs (never trains); runs that
    are not comparable (other datasets, protocols) get one report each, linked from an index page."""
    from bench.report.cohorts import build_reports

    written = build_reports(results, out, reports, baseline=baseline, allow_mixed=allow_mixed, dataset=dataset,
                            protocol=protocol, convention=convention)
    for rep in written.reports:
        for note in rep.notes:
            console.print(Text.assemble(("note", "yellow"), f": {note}"))
        console.print(f"report written to {rep.html} ({len(rep.files)} files in {rep.out})")
    if written.index is not None:
        console.print(f"{len(written.reports)} cohorts (not comparable with each other): index of their reports "
                      f"written to {written.index}")


@app.command()
def status(results: Path = RESULTS) -> None:
    """Every run under a results folder with its state (pending, running, complete, failed, diverged,
    interrupted) and, for runs handed to Slurm or Ray, the job; asks squeue / sacct when they exist."""
    from bench.experiments.status import collect, not_runs, render

    if not results.is_dir():
        raise BenchError(f"results folder not found: {results}")
    console.print(render(collect(results), results))
    others = not_runs(results)
    if others:
        shown = ", ".join(str(p) for p in others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
        console.print(Text.assemble(("note", "yellow"), f": skipped {len(others)} folder(s) that hold a manifest or "
                                    f"job.json but are not run folders (<dataset>/<protocol>/<model>/seed<k>, "
                                    f"<dataset>/external/<name>): {shown}"))
