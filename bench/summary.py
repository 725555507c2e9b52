"""The first table: per-organ DSC / HD95 per model, mean over cases, then over seeds.

Reduction order is explicit: for each (model, seed, organ) the mean over cases (NaN values,
which only the strict convention produces for organs absent from both masks, are skipped);
then the mean over seeds; the model's overall value is the mean over organs, as the papers do.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from bench.errors import BenchError
from bench.results import atomic_write


def organ_means(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """model x organ means (over cases per seed, then over seeds), plus a 'mean' column."""
    df = metrics[metrics["metric"] == metric]
    per_seed = df.groupby(["model", "seed", "label", "organ"], sort=False)["value"].mean().reset_index()
    per_model = per_seed.groupby(["model", "label", "organ"], sort=False)["value"].mean().reset_index()
    table = per_model.sort_values("label").pivot(index="model", columns="organ", values="value")
    organs = per_model.sort_values("label")["organ"].unique().tolist()
    table = table[organs]
    table.insert(0, "mean", table.mean(axis=1))
    return table


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
    for organ in dsc.columns[1:]:
        out[organ] = dsc[organ]
    counts = metrics.groupby("model").agg(seeds=("seed", "nunique"), cases=("case", "nunique"))
    return out.join(counts)


def render_rich(table: pd.DataFrame, title: str) -> Table:
    """Models as columns (fits a terminal); organ rows are DSC %."""
    t = Table(title=title, title_justify="left")
    t.add_column("")
    for model in table.index:
        t.add_column(str(model), justify="right")
    for col in table.columns:
        name = f"{col} DSC %" if col not in ("DSC %", "HD95", "seeds", "cases") else col
        t.add_row(name, *[_fmt(v) for v in table[col]], end_section=col in ("HD95", "stomach"))
    return t


def render_markdown(table: pd.DataFrame, header: str) -> str:
    cols = ["model", *map(str, table.columns)]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for model in table.index:
        lines.append("| " + " | ".join([str(model), *[_fmt(table[c][model]) for c in table.columns]]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(v)
    return "nan" if v != v else f"{v:.2f}"


def write_summary(table: pd.DataFrame, header: str, path: Path) -> None:
    atomic_write(path, lambda p: p.write_text(render_markdown(table, header)))
