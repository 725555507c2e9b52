"""The benchmark report's plots: bootstrap blob plots, significance maps, critical-difference diagrams.

Same conventions as ``bench.report.plots``: matplotlib's object API (no pyplot state), PNG and SVG
written whole or not at all, no dates in the files. One figure per metric, one panel per dataset.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import scikit_posthocs as sp
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from bench.report.plots import RC, Plot, palette, save
from bench.report.tables import METRIC_NAMES


def _figure(w: float, h: float) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(w, h), layout="constrained")


def _panels(fig: Figure, n: int, max_cols: int = 3) -> list:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def _name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric).replace(" (%)", "")


def blob_plot(freq: pd.DataFrame, summary: pd.DataFrame, ranks: pd.DataFrame, metric: str, out: Path,
              n_boot: int) -> Plot | None:
    """challengeR's blob plot per dataset: rank (1 at the top) against model (ordered by its rank on all cases);
    circle area = how often the model took that rank; black: median rank and 95 % interval."""
    datasets = sorted(freq["dataset"].unique())
    if not datasets:
        return None
    models = sorted(freq["model"].unique())
    k, colors = len(models), palette(models)
    fig = _figure(min(15.0, 1.2 + 3.6 * min(len(datasets), 3)), 0.9 + 2.9 * math.ceil(len(datasets) / 3))
    for ax, ds in zip(_panels(fig, len(datasets)), datasets, strict=True):
        order = ranks[ranks["dataset"] == ds].sort_values(["rank", "model"])["model"].tolist()
        f, s = freq[freq["dataset"] == ds], summary[summary["dataset"] == ds].set_index("model")
        for i, m in enumerate(order):
            fm = f[(f["model"] == m) & (f["frequency"] > 0)]
            ax.scatter(np.full(len(fm), i), fm["rank"], s=900 * fm["frequency"] / max(1, k / 3),
                       color=colors[m], alpha=0.75, edgecolor="black", linewidth=0.4, zorder=2)
            ax.vlines(i, s.loc[m, "rank_lo"], s.loc[m, "rank_hi"], color="black", linewidth=1.4, zorder=3)
            ax.scatter([i], [s.loc[m, "median_rank"]], marker="x", color="black", s=36, zorder=4)
        ax.set(xticks=range(k), ylim=(k + 0.6, 0.4), yticks=range(1, k + 1), xlim=(-0.6, k - 0.4),
               ylabel="rank", title=ds)
        ax.set_xticklabels(order, rotation=30, ha="right")
        ax.grid(axis="y", color="0.9", zorder=0)
    fig.suptitle(f"Ranking stability of {_name(metric)}: {n_boot} bootstrap resamples of the cases")
    key = f"blob_{metric}"
    return Plot(key, f"Ranking stability ({_name(metric)})",
                f"Blob plot (challengeR): for each dataset, how often each model took each rank of {_name(metric)} "
                f"over {n_boot} resamples of the test cases (circle area = frequency); black cross: median rank, "
                "black line: 95 % interval of its rank. Models ordered by their rank on all cases.",
                save(fig, out, key))


SIG_COLORS = ("#c44e52", "#e8e8e8", "#4c9a5b")  # row significantly worse, no difference, row significantly better


def _pair_matrices(pairs: pd.DataFrame, models: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(code, p_holm) model x model: code +1 where the row model is significantly better, -1 worse, 0 neither."""
    k = len(models)
    code, p = np.zeros((k, k)), np.full((k, k), np.nan)
    at = {m: i for i, m in enumerate(models)}
    for r in pairs.itertuples():
        i, j = at[r.model_a], at[r.model_b]
        p[i, j] = p[j, i] = r.p_holm
        if r.significant:
            sign = 1 if r.better == r.model_a else -1
            code[i, j], code[j, i] = sign, -sign
    return code, p


def significance_map(pairs: pd.DataFrame, ranks: pd.DataFrame, metric: str, out: Path, alpha: float) -> Plot | None:
    """Per dataset, model x model: green where the row model is significantly better than the column model
    (paired Wilcoxon over cases, Holm over the pairs), red where worse, grey where neither; Holm p in the cells."""
    datasets = sorted(pairs["dataset"].unique())
    if not datasets:
        return None
    cmap = ListedColormap(SIG_COLORS).with_extremes(bad="white")  # bad: the diagonal
    k = ranks["model"].nunique()
    side = 1.2 + 0.75 * k
    fig = _figure(min(15.5, 0.8 + side * min(len(datasets), 3)), 0.9 + side * math.ceil(len(datasets) / 3))
    for ax, ds in zip(_panels(fig, len(datasets)), datasets, strict=True):
        models = ranks[ranks["dataset"] == ds].sort_values(["rank", "model"])["model"].tolist()
        code, p = _pair_matrices(pairs[pairs["dataset"] == ds], models)
        np.fill_diagonal(code, np.nan)
        ax.imshow(np.ma.masked_invalid(code), cmap=cmap, vmin=-1.5, vmax=1.5)
        for i in range(len(models)):
            for j in range(len(models)):
                text = "" if i == j else ("-" if np.isnan(p[i, j]) else ("<0.001" if p[i, j] < 0.001
                                                                        else f"{p[i, j]:.3f}"))
                ax.text(j, i, text, ha="center", va="center", fontsize=8)
        ax.set(xticks=range(len(models)), yticks=range(len(models)), title=ds)
        ax.set_xticklabels(models, rotation=30, ha="right")
        ax.set_yticklabels(models)
    fig.suptitle(f"{_name(metric)}: row vs column, paired Wilcoxon over cases, Holm over the pairs "
                 f"(green: row better at p < {alpha:g}, red: worse)")
    key = f"significance_{metric}"
    return Plot(key, f"Significance map ({_name(metric)})",
                f"All-pairs significance of {_name(metric)} per dataset: a cell is green when the row model is "
                f"significantly better than the column model (paired Wilcoxon signed-rank over test cases, Holm-"
                f"corrected over the pairs of that dataset, p < {alpha:g}), red when it is significantly worse, grey "
                "otherwise; the number is the Holm-adjusted p. Models ordered by rank.", save(fig, out, key))


def cd_diagram(mean_ranks: pd.Series, nemenyi: pd.DataFrame, summary: dict, metric: str, out: Path) -> Plot | None:
    """Demšar's critical-difference diagram (scikit-posthocs): mean ranks over datasets (1 = best, on the left);
    models joined by a bar are not significantly different by Nemenyi's test."""
    if nemenyi.isna().all().all():
        return None
    fig = _figure(8.5, 1.5 + 0.32 * len(mean_ranks))
    ax = fig.add_subplot()
    with matplotlib.rc_context(RC):
        sp.critical_difference_diagram(mean_ranks.to_dict(), nemenyi, ax=ax, alpha=summary["alpha"],
                                       label_fmt_left="{label} ({rank:.2f})  ",
                                       label_fmt_right="  ({rank:.2f}) {label}",
                                       color_palette=palette(sorted(mean_ranks.index)))
    ax.set_xlim(0.9, len(mean_ranks) + 0.1)  # the whole range of ranks, 1 (best) on the left
    ax.set_title(f"{_name(metric)}: mean rank over {summary['datasets']} datasets; Friedman chi2 = "
                 f"{summary['statistic']:.2f}, p = {summary['p']:.3g}; Nemenyi CD = {summary['cd']:.2f}", pad=22)
    key = f"cd_{metric}"
    return Plot(key, f"Critical-difference diagram ({_name(metric)})",
                f"Mean rank of {_name(metric)} over datasets (aggregate-then-rank; 1 = best). Models joined by a "
                f"bar do not differ significantly by Nemenyi's post-hoc test (alpha {summary['alpha']:g}); CD = "
                f"{summary['cd']:.2f} is the critical difference of mean ranks (Demšar 2006).", save(fig, out, key))
