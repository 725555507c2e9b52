"""Statistics over test cases: paired Wilcoxon tests, bootstrap intervals, a ranking.

The unit of every test is the test case, never the (seed, case) pair: a case's value is the
mean over seeds of that model's values (seeds averaged first, NaN skipped), and its ``mean``
row is the mean over organs of those. Every random draw comes from
``numpy.random.default_rng(seed)`` created afresh for each quantity, so the numbers are
reproducible and do not depend on which other models are in the report.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from bench.report.console import OVERALL

N_BOOT = 2000
LEVEL = 0.95


def case_values(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Long rows (model, label, organ, case, value): the mean over seeds, plus OVERALL rows (label 0)."""
    df = metrics[metrics["metric"] == metric]
    per = df.groupby(["model", "label", "organ", "case"], sort=False)["value"].mean().reset_index()
    overall = per.groupby(["model", "case"], sort=False)["value"].mean().reset_index()
    overall["label"], overall["organ"] = 0, OVERALL
    out = pd.concat([overall, per], ignore_index=True)[["model", "label", "organ", "case", "value"]]
    return out.sort_values(["model", "label", "case"], kind="stable").reset_index(drop=True)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries are outside the family and stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(ok) - k) * p[i]))
        out[i] = running
    return out


def paired(cases: pd.DataFrame, model: str, baseline: str, label: int) -> pd.DataFrame:
    """Columns x (model) and y (baseline) on the cases both have a value for, in case order."""
    def one(m: str) -> pd.Series:
        return cases[(cases["model"] == m) & (cases["label"] == label)].set_index("case")["value"]

    return pd.concat({"x": one(model), "y": one(baseline)}, axis=1, join="inner").dropna().sort_index()


def wilcoxon_vs_baseline(cases: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """For every other model, organ and the OVERALL mean: scipy's paired Wilcoxon signed-rank test.

    ``scipy.stats.wilcoxon(x, y)`` with its defaults (two-sided; zero differences dropped; the
    exact null distribution for small samples without ties). ``median_diff`` is the median of
    x - y (model minus baseline). Holm's correction runs over every row of the table (all models,
    organs and the mean of one metric): one family. Rows whose differences are all zero have no
    test (p NaN) and stay out of the family.
    """
    rows = []
    organs = cases[["label", "organ"]].drop_duplicates().sort_values("label")
    for model in sorted(set(cases["model"]) - {baseline}):
        for label, organ in organs.itertuples(index=False):
            test = signed_rank(paired(cases, model, baseline, label))
            rows.append({"model": model, "baseline": baseline, "label": label, "organ": organ, **test})
    out = pd.DataFrame(rows, columns=["model", "baseline", "label", "organ", "n", "median_diff", "statistic", "p"])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    return out


def signed_rank(pair: pd.DataFrame) -> dict:
    """scipy's paired Wilcoxon signed-rank test of ``pair`` (columns x, y; ``paired``) with its defaults:
    n, median of x - y, statistic and p (NaN when every difference is zero: no test)."""
    d = (pair["x"] - pair["y"]).to_numpy()
    stat = p = np.nan
    if np.count_nonzero(d):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's notes on ties / small samples
            res = stats.wilcoxon(pair["x"].to_numpy(), pair["y"].to_numpy())
        stat, p = float(res.statistic), float(res.pvalue)
    return {"n": len(d), "median_diff": float(np.median(d)) if len(d) else np.nan, "statistic": stat, "p": p}


def paired_tests(cases: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """For each (model, baseline) of ``pairs``, on the OVERALL per-case values: both means over the
    cases they share and the signed-rank test; Holm's correction over the rows (one family).

    The LR comparison: each model at another LR against the same model at its protocol's LR.
    """
    rows = []
    for model, baseline in pairs:
        pair = paired(cases, model, baseline, 0)
        rows.append({"model": model, "baseline": baseline, "mean": pair["x"].mean(),
                     "mean_baseline": pair["y"].mean(), **signed_rank(pair)})
    out = pd.DataFrame(rows, columns=["model", "baseline", "mean", "mean_baseline", "n", "median_diff",
                                      "statistic", "p"])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    return out


def bootstrap_means(x: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples of x (cases drawn with replacement), from a fresh generator."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    return x[idx].mean(axis=1)


def bootstrap_ci(cases: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> pd.DataFrame:
    """Per model: mean over cases of the OVERALL value, and its percentile bootstrap interval.

    The interval is ``np.percentile(bootstrap_means(x), [2.5, 97.5])`` (for level 0.95), x the
    per-case values in case order with NaN dropped.
    """
    rows = []
    tail = 100 * (1 - level) / 2
    for model, g in cases[cases["label"] == 0].groupby("model", sort=True):
        x = g.sort_values("case")["value"].dropna().to_numpy(dtype=float)
        lo = hi = np.nan
        if len(x):
            lo, hi = np.percentile(bootstrap_means(x, n_boot, seed), [tail, 100 - tail])
        rows.append({"model": model, "n": len(x), "mean": x.mean() if len(x) else np.nan, "lo": lo, "hi": hi,
                     "level": level, "n_boot": n_boot, "seed": seed})
    return pd.DataFrame(rows, columns=["model", "n", "mean", "lo", "hi", "level", "n_boot", "seed"])


def _positions(means: np.ndarray, higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """means (..., models, organs) -> mean rank over organs and position (1 = best, ties share)."""
    ranks = stats.rankdata(-means if higher_is_better else means, axis=-2, method="average", nan_policy="omit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an organ with no value in a resample
        mean_rank = np.nanmean(ranks, axis=-1)
    return mean_rank, stats.rankdata(mean_rank, axis=-1, method="min")


def ranking(cases: pd.DataFrame, n_boot: int = N_BOOT, seed: int = 0, higher_is_better: bool = True) -> pd.DataFrame:
    """Models ordered by their mean rank over organs, and how often that order holds.

    Per organ the models are ranked by their mean over cases (ties share the average rank);
    a model's score is its mean rank over organs, its position the order of that score. On the
    cases every model has, ``n_boot`` resamples of cases (one draw shared by all models, from
    ``default_rng(seed)``) repeat this: ``p_holds`` is the share of resamples in which the model
    keeps its position, ``p_first`` the share in which it comes first.
    """
    per = cases[cases["label"] != 0]
    models = sorted(per["model"].unique())
    if not models:
        return pd.DataFrame(columns=["position", "model", "mean_rank", "p_holds", "p_first", "organs", "cases"])
    common = set.intersection(*(set(per.loc[per["model"] == m, "case"]) for m in models))
    per = per[per["case"].isin(common)]
    cube = per.pivot_table(index=["model", "case"], columns="label", values="value", dropna=False)
    cube = cube.reindex(pd.MultiIndex.from_product([models, sorted(common)]))
    v = cube.to_numpy(dtype=float).reshape(len(models), len(common), cube.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        full = np.nanmean(v, axis=1)  # models x organs
    keep = ~np.isnan(full).any(axis=0)  # an organ without a value for some model can't rank it
    v, full = v[:, :, keep], full[:, keep]
    mean_rank, position = _positions(full, higher_is_better)
    holds = first = np.zeros(len(models))
    if len(common) and keep.any():
        idx = np.random.default_rng(seed).integers(0, len(common), size=(n_boot, len(common)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            boot = np.nanmean(v[:, idx, :], axis=2)  # models x n_boot x organs
        _, pos_b = _positions(np.moveaxis(boot, 0, 1), higher_is_better)  # n_boot x models
        holds, first = (pos_b == position).mean(axis=0), (pos_b == 1).mean(axis=0)
    out = pd.DataFrame({"position": position.astype(int), "model": models, "mean_rank": mean_rank,
                        "p_holds": holds, "p_first": first, "organs": int(keep.sum()), "cases": len(common)})
    return out.sort_values(["position", "model"]).reset_index(drop=True)
