"""``build_report``: run folders in, a report folder out (HTML, Markdown, LaTeX, CSV, PNG, SVG).

Data flow: load (manifests, metrics; the fairness guard) -> reduce (bench.report.console, stats) ->
arrange (tables) -> draw (plots, qualitative) -> render (render, html) -> write. It reads
what runs wrote and never trains or scores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def clean_outputs(folder: Path, patterns: tuple[str, ...]) -> None:
    """Remove the report's own files of an earlier build, so no stale plot survives."""
    for pattern in patterns:
        for f in folder.glob(pattern):
            f.unlink()


def write_document(path: Path, text: str, files: list[Path]) -> None:
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
    base = pick_baseline(loaded.arms(), baseline)
    (out / PLOTS).mkdir(parents=True, exist_ok=True)
    (out / CSV).mkdir(parents=True, exist_ok=True)
    clean_outputs(out / PLOTS, ("*.png", "*.svg"))
    clean_outputs(out / CSV, ("*.csv",))
    notes: list[str] = []
    dice, hd = stats.case_values(loaded.metrics, "dice"), stats.case_values(loaded.metrics, "hd95")
    tables = _tables(loaded, dice, hd, base, n_boot, seed, notes)
    figures = _figures(loaded, dice, hd, results, out / PLOTS, notes)
    files = _write(out, loaded, tables, figures, base, notes)
    return Report(out, out / "report.html", files, base, loaded.mixed, notes)


@dataclass
class _Tables:
    organ: list
    status: Any
    statistics: list
    compute: Any
    runs: Any

    @property
    def all(self) -> list:
        return [*self.organ, self.status, *self.statistics, self.compute, self.runs]


def _tables(loaded: Loaded, dice, hd, base: str | None, n_boot: int, seed: int, notes: list[str]) -> _Tables:
    """Reduce the per-case values (paired tests, bootstrap, ranking) and arrange every table."""
    arms = loaded.arms()
    wil = {m: stats.wilcoxon_vs_baseline(c, base) for m, c in (("dice", dice), ("hd95", hd))} if base else {}
    organ = [T.organ_table(loaded, "dice"), T.organ_table(loaded, "hd95")] if arms else []
    statistics = [T.wilcoxon_table(loaded, wil[m], m) for m in wil] if len(arms) > 1 else []
    by_lr = lr_effect(loaded, dice)
    statistics = ([by_lr] if by_lr is not None else []) + statistics
    if arms:
        boot, rank = stats.bootstrap_ci(dice, n_boot, seed), stats.ranking(dice, n_boot, seed)
        statistics += [T.bootstrap_table(loaded, boot), T.ranking_table(loaded, rank, n_boot, seed)]
    if len(arms) == 1:
        notes.append("Only one model has results: no paired tests.")
    return _Tables(organ, T.status_table(loaded), statistics, T.compute_table(loaded), T.runs_table(loaded))


def lr_effect(loaded: Loaded, dice=None) -> T.Table | None:
    """The table of models run at two LRs (``bench run --lr default,tuned``): each other LR against
    the protocol's, paired over test cases; None when no model has both."""
    pairs = T.lr_pairs(loaded)
    if not pairs:
        return None
    dice = stats.case_values(loaded.metrics, "dice") if dice is None else dice
    return T.lr_effect_table(loaded, stats.paired_tests(dice, pairs))


def _figures(loaded: Loaded, dice, hd, results: Path, plot_dir: Path, notes: list[str]) -> list:
    """Every plot that has something to show."""
    arms = loaded.arms()
    noun = T.noun(loaded)
    plotted = [P.heatmap(organ_means(loaded.metrics, "dice"), plot_dir, noun) if arms else None,
               P.box_strip(dice, "dice", arms, plot_dir, noun), P.box_strip(hd, "hd95", arms, plot_dir, noun),
               P.learning_curves(train_logs(loaded), plot_dir, validation_logs(loaded))]
    qual, why = qualitative(loaded, dice, results, plot_dir) if arms else (None, "no results")
    plotted.append(qual)
    if why:
        notes.append(f"Qualitative figure skipped: {why}.")
    plotted += P.lr_search(results, plot_dir, {str(c['protocol_hash']) for c in loaded.cohorts})
    return [f for f in plotted if f is not None]


def _write(out: Path, loaded: Loaded, tables: _Tables, figures: list, base: str | None, notes: list[str]
           ) -> list[Path]:
    """CSV files, LaTeX, Markdown and the HTML page; the files written."""
    files: list[Path] = []
    for t in tables.all:
        if t.data is not None:
            write_document(out / CSV / f"{t.key}.csv", csv_text(t), files)
    write_document(out / CSV / "per_case.csv", T.per_case_frame(loaded).to_csv(index=False), files)
    title = _title(loaded)
    fairness = T.fairness_note(loaded) + (f"; baseline {base}" if base else "")
    failures = [f"{r.arm} seed {r.seed}: {r.status}" + (f" ({r.error})" if r.error == r.error and r.error else "")
                for r in loaded.runs.itertuples() if r.status != "complete"]
    mixed_msg = ""
    if loaded.mixed:
        mixed_msg = mismatch_message(loaded.cohorts, hint=False) + "; each model is labelled with its side"
    write_document(out / "tables.tex", "% Tables of " + title + ". Needs \\usepackage{booktabs}.\n\n"
                   + "\n".join(latex(t) for t in tables.all), files)
    write_document(out / "report.md", _markdown(title, fairness, mixed_msg, failures, tables.all, figures, notes),
                   files)
    page = Page(title, fairness, tables.organ[:1], {"Tables": tables.organ[1:] + [tables.status],
                                                    "Statistics": tables.statistics, "Compute": [tables.compute],
                                                    "Runs": [tables.runs]},
                figures, [(r.arm, r.seed, r.status, loaded.manifests.get(r.path)) for r in loaded.runs.itertuples()],
                mixed_msg, failures, notes)
    write_document(out / "report.html", render_page(page), files)
    return files + [f.png for f in figures] + [f.png.with_suffix(".svg") for f in figures]


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
