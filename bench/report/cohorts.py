"""One report per cohort: a results folder of several datasets or protocols, and the index linking them.

A cohort is a set of runs whose numbers may be compared (``bench.report.load``: same dataset and
split, protocol hash, precision, convention and scored cases). ``bench report`` over a folder that
holds several writes each cohort's report to its own folder (``<reports>/<dataset>/<protocol>/``)
and ``index.html`` / ``index.md`` beside them; ``--allow-mixed`` still writes one report of
everything, each side labelled.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.report import stats
from bench.report.build import Report, build_report, pick_baseline, write_document
from bench.report.html import CSS
from bench.report.load import COHORT_FIELDS, Loaded, load_runs
from bench.report.markdown import markdown_table

INDEX = "index.html"


@dataclass
class Cohort:
    fields: dict  # COHORT_FIELDS, the scored subset, the runs (model -> seeds)
    paths: list[Path]
    folder: Path
    report: Report | None = None


@dataclass
class Reports:
    """What ``build_reports`` wrote: each cohort's report, and the index when there are several."""

    reports: list[Report]
    index: Path | None = None
    cohorts: list[Cohort] | None = None
    unplaced: list[str] | None = None  # unreadable runs that belong to no cohort


def _key(row: pd.Series) -> tuple:
    return tuple(str(row[f]) for f in COHORT_FIELDS)


def _folders(cohorts: list[dict], root: Path) -> list[Path]:
    """``root/<dataset>/<protocol>`` per cohort; cohorts that would share one are told apart by what differs."""
    base = [root / c["dataset"] / c["protocol"] for c in cohorts]
    out = []
    for c, folder in zip(cohorts, base, strict=True):
        twins = [o for o, b in zip(cohorts, base, strict=True) if b == folder]
        if len(twins) == 1:
            out.append(folder)
            continue
        varying = [f for f in COHORT_FIELDS if len({str(o[f]) for o in twins}) > 1]
        parts = [f"{'hash' if f == 'protocol_hash' else 'split'}-{str(c[f])[:8]}" if f in ("protocol_hash",
                 "fingerprint") else str(c[f]) for f in varying]
        out.append(folder.with_name(f"{folder.name}.{'-'.join(parts)}"))
    return out


def split_cohorts(loaded: Loaded, root: Path) -> tuple[list[Cohort], list[str]]:
    """Each cohort with its run folders and report folder; unreadable runs join the cohort of their
    dataset and protocol folder (else they are returned apart, by path)."""
    keys = [_key(pd.Series(c)) for c in loaded.cohorts]
    cohorts = [Cohort(c, [], folder) for c, folder in zip(loaded.cohorts, _folders(loaded.cohorts, root),
                                                          strict=True)]
    unplaced = []
    for _, row in loaded.runs.iterrows():
        if row["status"] != "unreadable":
            cohorts[keys.index(_key(row))].paths.append(Path(row["path"]))
            continue
        home = next((c for c in cohorts if (c.fields["dataset"], c.fields["protocol"]) ==
                     (row["dataset"], row["protocol"])), None)
        if home is None:
            unplaced.append(str(row["path"]))
        else:
            home.paths.append(Path(row["path"]))
    return cohorts, unplaced


def build_reports(
    results: Path = Path("results"), out: Path | None = None, reports: Path = Path("reports"),
    baseline: str | None = None, allow_mixed: bool = False, runs: list[Path] | None = None,
    dataset: str | None = None, protocol: str | None = None, convention: str | None = None,
    seed: int = 0, n_boot: int = stats.N_BOOT,
) -> Reports:
    """The report of the runs under ``results`` (``build_report``); with several cohorts (and not
    ``allow_mixed``), one report per cohort under ``out`` (default ``reports``) and an index page there."""
    loaded = load_runs(results, runs, dataset, protocol, convention, allow_mixed=True)
    if allow_mixed or len(loaded.cohorts) <= 1:
        return Reports([build_report(results, out, reports, baseline, allow_mixed, runs, dataset, protocol,
                                     convention, seed, n_boot)])
    root = Path(out) if out is not None else Path(reports)
    cohorts, unplaced = split_cohorts(loaded, root)
    if baseline and not any(baseline in c.fields["runs"] for c in cohorts):
        pick_baseline(loaded.arms(), baseline)  # the one message of an unknown baseline
    for c in cohorts:
        # the baseline applies where that model has results; elsewhere the default one
        wanted = baseline if baseline in c.fields["runs"] else None
        c.report = build_report(results, c.folder, reports, wanted, False, c.paths, convention=convention,
                                seed=seed, n_boot=n_boot)
    index = write_index(root, cohorts, unplaced)
    return Reports([c.report for c in cohorts if c.report is not None], index, cohorts, unplaced)


def _rows(root: Path, cohorts: list[Cohort]) -> list[list[str]]:
    rows = []
    for c in cohorts:
        f = c.fields
        who = "; ".join(f"{m} (seed{'s' if len(s) > 1 else ''} {','.join(map(str, s))})" for m, s in f["runs"].items())
        link = (c.folder / "report.html").relative_to(root).as_posix()
        rows.append([f["dataset"], f["protocol"], str(f["protocol_hash"]), str(f["precision"]), str(f["threads"]),
                     str(f["convention"]), f.get("subset") or "all", who, link])
    return rows


def write_index(root: Path, cohorts: list[Cohort], unplaced: list[str]) -> Path:
    """``index.html`` and ``index.md`` in ``root``: one row per cohort, linking its report."""
    header = ["dataset", "protocol", "hash", "precision", "CPU threads", "convention", "test cases scored", "runs",
              "report"]
    rows = _rows(root, cohorts)
    intro = (f"{len(cohorts)} cohorts: runs are compared only within one (same dataset and split, protocol "
             "hash, precision, CPU threads, metric convention and scored cases), so each has its own report.")
    files: list[Path] = []
    md = ["# segbench reports", "", intro, "",
          *markdown_table(header, [[*r[:-1], f"[report]({r[-1]})"] for r in rows])]
    if unplaced:
        md += ["", "Unreadable runs (no cohort): " + ", ".join(unplaced)]
    write_document(root / "index.md", "\n".join(md) + "\n", files)
    esc = html.escape
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r[:-1])
                   + f'<td><a href="{esc(r[-1])}">{esc(r[-1])}</a></td></tr>' for r in rows)
    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>segbench reports</title><style>{CSS}</style></head><body>",
            f'<header><h1>segbench reports</h1><div class="fair">{esc(intro)}</div></header><main>',
            '<div class="tablewrap"><table><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in header)
            + f"</tr></thead><tbody>{body}</tbody></table></div>"]
    if unplaced:
        page.append(f'<p class="muted">Unreadable runs (no cohort): {esc(", ".join(unplaced))}</p>')
    page.append("</main></body></html>")
    write_document(root / INDEX, "\n".join(page) + "\n", files)
    return root / INDEX
