"""Rankings of models on one dataset: scores per case, the ranking, its bootstrap stability, all-pairs tests.

The unit is the test case, as in ``bench.report.stats``: a case's score for a model is the mean
over organs of the seed-averaged values (``stats.case_values``, its ``mean`` rows). Organs
without a value (NaN: only the strict convention gives them, for an organ absent from both
masks) are skipped in that mean. Missed organs are not NaN: the metric convention scored them
when the run was evaluated (synapse: DSC 0 and HD95 0, so a miss costs DSC but not HD95;
strict: DSC 0 and the case's worst-case distance). Only cases every model has a score for
enter a ranking or a paired test, so all models are compared on the same cases.

Direction: DSC and NSD are better higher, distances (HD95, HD, ASD, ASSD) lower
(``higher_is_better``); rank 1 is the best model either way. Ties share the average rank
(``scipy.stats.rankdata(method="average")``); in bootstrap resamples a tie takes the better
rank (``method="min"``), so every resample gives each model a whole rank.
"""
from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as ss

from bench.engine.metrics import DISTANCE_METRICS
from bench.report import stats

ALPHA = 0.05
N_BOOT = 1000
PAIR_COLUMNS = ["model_a", "model_b", "n", "median_diff", "statistic", "p", "p_holm", "better", "significant"]


def higher_is_better(metric: str) -> bool:
    return metric not in DISTANCE_METRICS


def case_scores(metrics: pd.DataFrame, metric: str, models: list[str] | None = None) -> pd.DataFrame:
    """case x model: each case's mean over organs (seeds averaged first), on the cases every model has.

    ``models`` restricts (and orders) the columns; by default every model in ``metrics``, sorted.
    """
    cases = stats.case_values(metrics, metric)
    overall = cases[cases["label"] == 0]
    wide = overall.pivot_table(index="case", columns="model", values="value", aggfunc="first", dropna=False)
    wide = wide.reindex(columns=models if models is not None else sorted(wide.columns))
    wide.columns.name = None
    return wide.dropna(axis=0, how="any").sort_index()


def _better_first(values: np.ndarray, higher: bool) -> np.ndarray:
    """Values whose larger is better, whatever the metric's direction."""
    return values if higher else -values


def ranking(scores: pd.DataFrame, higher: bool) -> pd.DataFrame:
    """Per model: mean over cases and its rank (aggregate-then-rank), and the mean over cases of the
    per-case ranks (rank-then-aggregate), as challengeR reports both."""
    v = scores.to_numpy(dtype=float)
    mean = v.mean(axis=0) if len(v) else np.full(v.shape[1], np.nan)
    rank = ss.rankdata(-_better_first(mean, higher), method="average")
    per_case = ss.rankdata(-_better_first(v, higher), axis=1, method="average")
    rta = per_case.mean(axis=0) if len(v) else np.full(v.shape[1], np.nan)
    return pd.DataFrame({"model": list(scores.columns), "mean": mean, "rank": rank, "rank_then_aggregate": rta,
                         "cases": len(v)})


def bootstrap_ranks(scores: pd.DataFrame, higher: bool, n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How often each model takes each rank over ``n_boot`` resamples of the cases.

    Each resample draws len(cases) cases with replacement (one draw shared by every model, from
    a fresh ``numpy.random.default_rng(seed)``) and ranks the models by their mean over the
    drawn cases. Returns (frequencies: model, rank, frequency for every model and rank 1..K;
    summary: model, median rank and the 2.5 / 97.5 % quantiles of its rank, as ranks that
    occurred: ``numpy.quantile(method="inverted_cdf")``).
    """
    models, v = list(scores.columns), scores.to_numpy(dtype=float)
    k = len(models)
    if not len(v):
        empty = pd.DataFrame({"model": np.repeat(models, k), "rank": np.tile(np.arange(1, k + 1), k),
                              "frequency": np.nan})
        return empty, pd.DataFrame({"model": models, "median_rank": np.nan, "rank_lo": np.nan, "rank_hi": np.nan})
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    means = v[idx].mean(axis=1)  # n_boot x models
    ranks = ss.rankdata(-_better_first(means, higher), axis=1, method="min").astype(int)
    freq = np.stack([(ranks == r).mean(axis=0) for r in range(1, k + 1)], axis=1)  # models x ranks
    freq_long = pd.DataFrame({"model": np.repeat(models, k), "rank": np.tile(np.arange(1, k + 1), k),
                              "frequency": freq.ravel()})
    lo, hi = np.quantile(ranks, [0.025, 0.975], axis=0, method="inverted_cdf")
    summary = pd.DataFrame({"model": models, "median_rank": np.median(ranks, axis=0), "rank_lo": lo, "rank_hi": hi})
    return freq_long, summary


def _signed_rank_direction(d: np.ndarray) -> float:
    """W+ - W-: the sign says which side of zero the paired differences lie on, as the test sees them."""
    d = d[d != 0]
    r = ss.rankdata(np.abs(d))
    return float(r[d > 0].sum() - r[d < 0].sum())


def pairwise_wilcoxon(scores: pd.DataFrame, higher: bool, alpha: float = ALPHA) -> pd.DataFrame:
    """Every pair of models: scipy's paired Wilcoxon signed-rank test over the cases, Holm-corrected over the pairs.

    ``scipy.stats.wilcoxon(a, b)`` with its defaults, as ``stats.wilcoxon_vs_baseline``;
    ``median_diff`` is the median of a - b; ``better`` is the model the signed ranks favour
    (W+ > W- means a's values are larger; which is better follows the metric's direction), ''
    when they balance; ``significant`` is p_holm < alpha. Pairs whose differences are all zero
    have no test (p NaN), stay out of Holm's family and are never significant.
    """
    rows = []
    for a, b in combinations(scores.columns, 2):
        x, y = scores[a].to_numpy(dtype=float), scores[b].to_numpy(dtype=float)
        d = x - y
        stat = p = np.nan
        if np.count_nonzero(d):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy's notes on ties / small samples
                res = ss.wilcoxon(x, y)
            stat, p = float(res.statistic), float(res.pvalue)
        w = _signed_rank_direction(d) * (1 if higher else -1)
        rows.append({"model_a": a, "model_b": b, "n": len(d), "median_diff": float(np.median(d)) if len(d) else np.nan,
                     "statistic": stat, "p": p, "better": a if w > 0 else b if w < 0 else ""})
    out = pd.DataFrame(rows, columns=PAIR_COLUMNS[:6] + ["better"])
    out["p_holm"] = stats.holm(out["p"].to_numpy()) if len(out) else []
    out["significant"] = (out["p_holm"] < alpha).fillna(False).astype(bool)
    return out[PAIR_COLUMNS]


def outcomes(pairs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each model against the baseline, from the all-pairs table (any extra columns such as dataset and metric
    are kept): win = significantly better after Holm, loss = significantly worse, tie = neither."""
    rows = pairs[(pairs["model_a"] == baseline) | (pairs["model_b"] == baseline)].copy()
    rows["model"] = np.where(rows["model_a"] == baseline, rows["model_b"], rows["model_a"])
    rows["baseline"] = baseline
    won = rows["significant"] & (rows["better"] == rows["model"])
    lost = rows["significant"] & (rows["better"] == baseline)
    rows["outcome"] = np.where(won, "win", np.where(lost, "loss", "tie"))
    extra = [c for c in rows.columns if c not in PAIR_COLUMNS and c not in ("model", "baseline", "outcome")]
    return rows[[*extra, "model", "baseline", "n", "median_diff", "p", "p_holm", "outcome"]].reset_index(drop=True)


def wins_ties_losses(outcome_rows: pd.DataFrame) -> pd.DataFrame:
    """Per metric and model: how many datasets it wins, ties and loses against the baseline."""
    counts = (outcome_rows.groupby(["metric", "model", "baseline"])["outcome"].value_counts()
              .unstack(fill_value=0).reindex(columns=["win", "tie", "loss"], fill_value=0))
    counts.columns = ["wins", "ties", "losses"]
    counts["datasets"] = counts.sum(axis=1)
    return counts.reset_index()
