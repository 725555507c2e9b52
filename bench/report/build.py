"""``build_report``: run folders in, a report folder out (HTML, Markdown, LaTeX, CSV, PNG, SVG).

Data flow: load (manifests, metrics; the fairness guard) -> reduce (bench.report.console, stats) ->
arrange (tables) -> draw (plots, qualitative) -> render (render, html) -> write. It reads
what runs wrote and never trains or scores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.files import atomic_write
from bench.report import plots as P
from bench.report import stats
from bench.report import tables as T
from bench.report.console import organ_means
from bench.report.html import Page, render_page
from bench.report.load import EXTERNAL_TAG, Loaded, load_runs, mismatch_message, train_logs, validation_logs
from bench.report.qualitative import qualitative
from bench.report.render import csv_text, latex, markdown

DEFAULT_BASELINE = "unet"
PLOTS, CSV = "plots", "csv"


@dataclass
class Report:
    out: Path
    html: Path
    files: list[Path]
    baseline: str | None
    mixed: bool
    notes: list[str] = field(default_factory=list)


def default_out(reports: Path, loaded: Loaded) -> Path:
    """``reports/<dataset>/<protocol>/``; for a mix, ``reports/mixed/<dataset>-<protocol>+...``."""
    if not loaded.mixed and loaded.cohorts:
        c = loaded.cohorts[0]
        return Path(reports) / c["dataset"] / c["protocol"]
    return Path(reports) / "mixed" / "+".join(sorted({f"{c['dataset']}-{c['protocol']}" for c in loaded.cohorts}))


def pick_baseline(arms: list[str], wanted: str | None) -> str | None:
    """``wanted`` (a model name, or an arm label when mixed), else unet when present, else the first
    trained model (else the first)."""
    if not arms:
        return None
    name = wanted or DEFAULT_BASELINE
    hits = [a for a in arms if a == name] or [a for a in arms if a.split(" [")[0] == name]
    if hits:
        return hits[0]
    if wanted:
        raise BenchError(f"--baseline {wanted}: no model of that name has results; models: {', '.join(arms)}")
    return next((a for a in arms if EXTERNAL_TAG not in a), arms[0])


def _clean(folder: Path, patterns: tuple[str, ...]) -> None:
    """Remove the report's own files of an earlier build, so no stale plot survives."""
    for pattern in patterns:
        for f in folder.glob(pattern):
            f.unlink()


def _write(path: Path, text: str, files: list[Path]) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)  # a document to share, not the 0600 of a temporary file
    files.append(path)


def build_report(
    results: Path = Path("results"), out: Path | None = None, reports: Path = Path("reports"),
    baseline: str | None = None, allow_mixed: bool = False, runs: list[Path] | None = None,
    dataset: str | None = None, protocol: str | None = None, convention: str | None = None,
    seed: int = 0, n_boot: int = stats.N_BOOT,
) -> Report:
    """Write the report of the runs under ``results`` (or of ``runs``) and return where it went.

    Raises BenchError when there are no runs, an unknown baseline, or runs that are not
    comparable (other dataset, protocol hash or convention) without ``allow_mixed``.
    """
    loaded = load_runs(results, runs, dataset, protocol, convention, allow_mixed)
    out = Path(out) if out is not None else default_out(reports, loaded)
    arms = loaded.arms()
    base = pick_baseline(arms, baseline)
    (out / PLOTS).mkdir(parents=True, exist_ok=True)
    (out / CSV).mkdir(parents=True, exist_ok=True)
    _clean(out / PLOTS, ("*.png", "*.svg"))
    _clean(out / CSV, ("*.csv",))
    notes: list[str] = []

    # reduce
    dice, hd = stats.case_values(loaded.metrics, "dice"), stats.case_values(loaded.metrics, "hd95")
    wil = {m: stats.wilcoxon_vs_baseline(c, base) for m, c in (("dice", dice), ("hd95", hd))} if base else {}
    boot = stats.bootstrap_ci(dice, n_boot, seed)
    rank = stats.ranking(dice, n_boot, seed)

    # arrange
    organ = [T.organ_table(loaded, "dice"), T.organ_table(loaded, "hd95")] if arms else []
    statistics = [T.wilcoxon_table(loaded, wil[m], m) for m in wil] if len(arms) > 1 else []
    statistics += [T.bootstrap_table(loaded, boot), T.ranking_table(loaded, rank, n_boot, seed)] if arms else []
    if len(arms) == 1:
        notes.append("Only one model has results: no paired tests.")
    compute, runs_t = T.compute_table(loaded), T.runs_table(loaded)
    status_t = T.status_table(loaded)
    all_tables = [*organ, status_t, *statistics, compute, runs_t]

    # draw
    plot_dir = out / PLOTS
    figures = [P.heatmap(organ_means(loaded.metrics, "dice"), plot_dir) if arms else None,
               P.box_strip(dice, "dice", arms, plot_dir), P.box_strip(hd, "hd95", arms, plot_dir),
               P.learning_curves(train_logs(loaded), plot_dir, validation_logs(loaded))]
    qual, why = qualitative(loaded, dice, results, plot_dir) if arms else (None, "no results")
    figures.append(qual)
    if why:
        notes.append(f"Qualitative figure skipped: {why}.")
    figures += P.lr_search(results, plot_dir, {str(c['protocol_hash']) for c in loaded.cohorts})
    figures = [f for f in figures if f is not None]

    # render and write
    files: list[Path] = []
    for t in all_tables:
        if t.data is not None:
            _write(out / CSV / f"{t.key}.csv", csv_text(t), files)
    _write(out / CSV / "per_case.csv", T.per_case_frame(loaded).to_csv(index=False), files)
    title = _title(loaded)
    fairness = T.fairness_note(loaded) + (f"; baseline {base}" if base else "")
    failures = [f"{r.arm} seed {r.seed}: {r.status}" + (f" ({r.error})" if r.error == r.error and r.error else "")
                for r in loaded.runs.itertuples() if r.status != "complete"]
    mixed_msg = ""
    if loaded.mixed:
        mixed_msg = mismatch_message(loaded.cohorts, hint=False) + "; each model is labelled with its side"
    _write(out / "tables.tex", "% Tables of " + title + ". Needs \\usepackage{booktabs}.\n\n"
           + "\n".join(latex(t) for t in all_tables), files)
    _write(out / "report.md", _markdown(title, fairness, mixed_msg, failures, all_tables, figures, notes), files)
    page = Page(title, fairness, organ[:1], {"Tables": organ[1:] + [status_t], "Statistics": statistics,
                                             "Compute": [compute], "Runs": [runs_t]},
                figures, [(r.arm, r.seed, r.status, loaded.manifests.get(r.path)) for r in loaded.runs.itertuples()],
                mixed_msg, failures, notes)
    _write(out / "report.html", render_page(page), files)
    files += [f.png for f in figures] + [f.png.with_suffix(".svg") for f in figures]
    return Report(out, out / "report.html", files, base, loaded.mixed, notes)


def _title(loaded: Loaded) -> str:
    if loaded.mixed or not loaded.cohorts:
        return "segbench report: mixed runs" if loaded.mixed else "segbench report"
    c = loaded.cohorts[0]
    return f"segbench report: {c['dataset']} / {c['protocol']}"


def _markdown(title: str, fairness: str, mixed: str, failures: list[str], tables: list[T.Table],
              figures: list[P.Plot], notes: list[str]) -> str:
    md = [f"# {title}", "", f"*{fairness}*", ""]
    if mixed:
        md += [f"> **Mixed runs.** {mixed}", ""]
    if failures:
        md += ["**Runs that did not complete (not in the numbers):**", "", *[f"- {f}" for f in failures], ""]
    md += [markdown(t) for t in tables]
    md += ["## Plots", ""] + [f"![{f.title}]({PLOTS}/{f.png.name})\n\n*{f.caption}*\n" for f in figures]
    md += [f"*{n}*\n" for n in notes]
    return "\n".join(md)
