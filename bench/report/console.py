"""The first table: per-organ DSC / HD95 per model, mean over cases, then over seeds.

Reduction order is explicit: for each (model, seed, organ) the mean over cases (NaN values,
which only the strict convention produces for organs absent from both masks, are skipped);
then the mean over seeds; the model's overall value is the mean over organs, as the papers do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Group
from rich.table import Table

from bench.engine.metrics import REF_ONLY
from bench.errors import BenchError
from bench.files import atomic_write
from bench.report.markdown import markdown_table


def seed_organ_means(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Long rows (model, seed, label, organ, value): the mean over cases of one seed, NaN skipped."""
    df = metrics[metrics["metric"] == metric]
    return df.groupby(["model", "seed", "label", "organ"], sort=False)["value"].mean().reset_index()


def organ_means(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """model x organ means (over cases per seed, then over seeds), plus a 'mean' column."""
    per_seed = seed_organ_means(metrics, metric)
    per_model = per_seed.groupby(["model", "label", "organ"], sort=False)["value"].mean().reset_index()
    table = per_model.sort_values("label").pivot(index="model", columns="organ", values="value")
    organs = per_model.sort_values("label")["organ"].unique().tolist()
    table = table[organs]
    table.insert(0, "mean", table.mean(axis=1))
    return table


OVERALL = "mean"  # the organ name under which organ_mean_sd reports the mean over organs
MISSED_ROW = "missed (HD95 0)"  # synapse convention: organs in the reference not predicted, over cases and seeds


def organ_mean_sd(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Long rows (model, label, organ, mean, sd, seeds): spread over seeds of the per-seed means.

    Each seed's organ value is its mean over cases; the ``OVERALL`` row (label 0) takes each
    seed's mean over organs first, so its sd is the spread of that seed-level number. sd is the
    sample standard deviation (ddof 1): NaN with a single seed. The means equal ``organ_means``
    whenever every organ has a value in every seed (always, under the synapse convention).
    """
    per_seed = seed_organ_means(metrics, metric)
    overall = per_seed.groupby(["model", "seed"], sort=False)["value"].mean().reset_index()
    overall["label"], overall["organ"] = 0, OVERALL
    rows = pd.concat([overall, per_seed], ignore_index=True)
    out = rows.groupby(["model", "label", "organ"], sort=False)["value"].agg(
        mean="mean", sd=lambda v: v.std(ddof=1), seeds="count").reset_index()
    return out.sort_values(["model", "label"], kind="stable").reset_index(drop=True)


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Rows per model: DSC (%) mean and per organ, HD95 mean, number of seeds and cases.

    Rows of one metric convention only: values of different conventions are never pooled.
    """
    conventions = sorted(metrics["convention"].unique())
    if len(conventions) > 1:
        raise BenchError(f"metrics mix conventions {conventions}; select one before reducing")
    dsc = organ_means(metrics, "dice") * 100
    hd = organ_means(metrics, "hd95")
    out = pd.DataFrame(index=dsc.index)
    out["DSC %"] = dsc["mean"]
    out["HD95"] = hd["mean"]
    for organ in dsc.columns[1:] if len(dsc.columns) > 2 else []:
        out[organ] = dsc[organ]
    if len(dsc.columns) == 2:  # one class: its DSC is the mean, shown once, under its name
        out = out.rename(columns={"DSC %": f"DSC % ({dsc.columns[1]})"})
    counts = metrics.groupby("model").agg(seeds=("seed", "nunique"), cases=("case", "nunique"))
    if conventions == ["synapse"] and "status" in metrics:  # its HD95 of a missed organ is 0: say how many
        missed = metrics[(metrics["metric"] == "hd95") & (metrics["status"] == REF_ONLY)].groupby("model").size()
        if missed.sum():
            counts[MISSED_ROW] = missed.reindex(counts.index, fill_value=0)
    return out.join(counts)


def render_rich(table: pd.DataFrame, title: str, width: int = 80) -> Group:
    """Models as columns, organ rows in DSC %; as many tables as it takes to fit ``width``."""
    names = [f"{c} DSC %" if c not in ("HD95", "seeds", "cases", MISSED_ROW) and not str(c).startswith("DSC %")
             else str(c) for c in table.columns]
    first = max(map(len, names)) + 3  # the row-name column with its borders and padding
    chunks: list[list[str]] = []
    chunk: list[str] = []
    used = first + 1
    for model in table.index:
        need = max(len(str(model)), 6) + 3
        if chunk and used + need > width:
            chunks.append(chunk)
            chunk, used = [], first + 1
        chunk.append(model)
        used += need
    chunks.append(chunk)
    tables = []
    for i, models in enumerate(chunks):
        part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        t = Table(title=title + part, title_justify="left")
        t.add_column("")
        for model in models:
            t.add_column(str(model), justify="right")
        for name, col in zip(names, table.columns, strict=False):
            t.add_row(name, *[_fmt(table[col][m]) for m in models], end_section=col in ("HD95", "stomach"))
        tables.append(t)
    return Group(*tables)


def render_markdown(table: pd.DataFrame, header: str) -> str:
    cols = ["model", *map(str, table.columns)]
    rows = [[str(model), *[_fmt(table[c][model]) for c in table.columns]] for model in table.index]
    return "\n".join([header, "", *markdown_table(cols, rows)]) + "\n"


def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(v)
    return "nan" if v != v else f"{v:.2f}"


def write_summary(table: pd.DataFrame, header: str, path: Path) -> None:
    atomic_write(path, lambda p: p.write_text(render_markdown(table, header)))
