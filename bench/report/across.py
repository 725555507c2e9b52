"""Rankings across datasets: mean ranks two ways, Friedman with Nemenyi (Demšar 2006), Kendall's tau.

Input: the per-dataset rankings of ``bench.report.ranking.ranking`` stacked with ``dataset`` and
``metric`` columns, over the same models on every dataset. Each dataset counts once, whatever
its number of cases.

- aggregate-then-rank: a model's rank on a dataset by its mean over cases; the mean of these
  ranks over datasets is Demšar's average rank, the quantity the Friedman test and the
  critical-difference diagram use.
- rank-then-aggregate: on each case the models are ranked, a dataset's value is the mean of a
  model's ranks over its cases (challengeR's rank-then-aggregate), then the mean over datasets.

The Friedman test is ``scipy.stats.friedmanchisquare`` (blocks: datasets; with its tie correction
and chi-square approximation, which Demšar finds conservative for few datasets); the Nemenyi
post-hoc p-values come from scikit-posthocs (``posthoc_nemenyi_friedman``), which the
critical-difference diagram also reads. Both need at least three models and two datasets.
"""
from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats as ss

from bench.report.ranking import ALPHA


def mean_ranks(rankings: pd.DataFrame) -> pd.DataFrame:
    """Per metric and model: mean rank over datasets, aggregate-then-rank and rank-then-aggregate, and the
    positions (1 = best, ties share the better one) each gives."""
    out = rankings.groupby(["metric", "model"], sort=True).agg(
        mean_rank_aggregate_then_rank=("rank", "mean"), mean_rank_rank_then_aggregate=("rank_then_aggregate", "mean"),
        datasets=("dataset", "nunique")).reset_index()
    for col, pos in (("mean_rank_aggregate_then_rank", "position_aggregate_then_rank"),
                     ("mean_rank_rank_then_aggregate", "position_rank_then_aggregate")):
        out[pos] = out.groupby("metric")[col].rank(method="min").astype(int)
    return out.sort_values(["metric", "position_aggregate_then_rank", "model"]).reset_index(drop=True)


def blocks(rankings: pd.DataFrame, metric: str) -> pd.DataFrame:
    """dataset x model means over cases of one metric, signed so that larger is better (the test's input)."""
    rows = rankings[rankings["metric"] == metric]
    table = rows.pivot(index="dataset", columns="model", values="mean").sort_index()
    sign = 1.0 if bool(rows["higher_is_better"].iloc[0]) else -1.0
    return table * sign


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of mean ranks (Demšar 2006, eq. 5): q_alpha * sqrt(k (k + 1) / (6 n)),
    q_alpha the studentized range quantile over sqrt(2)."""
    q = ss.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6.0 * n)))


def friedman_nemenyi(table: pd.DataFrame, alpha: float = ALPHA) -> tuple[dict, pd.DataFrame]:
    """Friedman's test over the datasets (rows) of ``table`` and Nemenyi's all-pairs p-values.

    Returns ({statistic, p, models, datasets, cd, alpha, note}, model x model p-value matrix,
    1 on the diagonal); NaN (and a note) when there are fewer than three models or two datasets.
    """
    n, k = table.shape
    summary = {"statistic": np.nan, "p": np.nan, "models": k, "datasets": n, "cd": np.nan, "alpha": alpha, "note": ""}
    models = list(table.columns)
    nemenyi = pd.DataFrame(np.nan, index=models, columns=models)
    if k < 3 or n < 2:
        summary["note"] = f"needs at least 3 models and 2 datasets (have {k} and {n})"
        return summary, nemenyi
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all ties in every block: statistic NaN
        res = ss.friedmanchisquare(*(table[m].to_numpy(dtype=float) for m in models))
    summary.update(statistic=float(res.statistic), p=float(res.pvalue), cd=critical_difference(k, n, alpha))
    if n < 10:
        summary["note"] = (f"{n} datasets: the chi-square approximation is rough below about 10 "
                           "(Demšar 2006); read the p-value as indicative")
    p = sp.posthoc_nemenyi_friedman(table.to_numpy(dtype=float))
    nemenyi = pd.DataFrame(p.to_numpy(), index=models, columns=models)
    return summary, nemenyi


def nemenyi_long(matrix: pd.DataFrame) -> pd.DataFrame:
    """The upper triangle of a Nemenyi matrix as rows (model_a, model_b, p)."""
    return pd.DataFrame([{"model_a": a, "model_b": b, "p": float(matrix.loc[a, b])}
                         for a, b in combinations(matrix.index, 2)], columns=["model_a", "model_b", "p"])


def kendall(rankings: pd.DataFrame, between: str) -> pd.DataFrame:
    """Kendall's tau-b (``scipy.stats.kendalltau``) between the aggregate-then-rank rankings of each pair of
    datasets (``between="dataset"``, within each metric) or of metrics (``"metric"``, within each dataset)."""
    within = "metric" if between == "dataset" else "dataset"
    rows = []
    for w, group in rankings.groupby(within, sort=True):
        table = group.pivot(index="model", columns=between, values="rank").dropna()
        for a, b in combinations(sorted(table.columns), 2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a constant ranking has no tau
                res = ss.kendalltau(table[a], table[b])
            rows.append({"between": between, "within": w, "a": a, "b": b, "tau": float(res.statistic),
                         "p": float(res.pvalue), "models": len(table)})
    return pd.DataFrame(rows, columns=["between", "within", "a", "b", "tau", "p", "models"])
