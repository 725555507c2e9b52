"""The benchmark report's tables: formatted cells for HTML and Markdown, the raw frames for CSV.

Each builder takes the long frames of ``bench.report.ranking`` / ``bench.report.across`` (with
``dataset`` and ``metric`` columns) and only arranges and formats them.
"""
from __future__ import annotations

import pandas as pd

from bench.report.tables import METRIC_NAMES, Table, num, pval

RANK_TIES = "ties share the average rank"


def _metric(m: str) -> str:
    return METRIC_NAMES.get(m, m).replace(" (%)", "")


def _direction(m: str, higher: bool) -> str:
    return f"{_metric(m)}: {'higher' if higher else 'lower'} is better"


def mean_rank_table(mr: pd.DataFrame, metric: str, higher: bool) -> Table:
    d = mr[mr["metric"] == metric]
    header = ["model", "mean rank (aggregate, then rank)", "position", "mean rank (rank, then aggregate)", "position",
              "datasets"]
    rows = [[r.model, num(r.mean_rank_aggregate_then_rank, 2), str(r.position_aggregate_then_rank),
             num(r.mean_rank_rank_then_aggregate, 2), str(r.position_rank_then_aggregate), str(r.datasets)]
            for r in d.itertuples()]
    bold = {(i, c) for i, r in enumerate(d.itertuples()) for c, pos in ((1, r.position_aggregate_then_rank),
                                                                     (3, r.position_rank_then_aggregate)) if pos == 1}
    title = (f"Mean rank of {_metric(metric)} over datasets, two ways side by side: aggregate-then-rank (each "
             "dataset ranks the models by their mean over cases) and rank-then-aggregate (each case ranks them, "
             f"a dataset takes the mean over its cases); 1 = best, {RANK_TIES}; {_direction(metric, higher)}")
    return Table(f"mean_ranks_{metric}", title, header, rows, bold=bold, data=d, numeric={1, 2, 3, 4, 5})


def wins_table(wtl: pd.DataFrame, baseline: str, metrics: list[str], alpha: float) -> Table:
    models = sorted(wtl["model"].unique())
    header = ["model", *[f"{_metric(m)} wins / ties / losses" for m in metrics]]
    rows = []
    for model in models:
        cells = [model]
        for m in metrics:
            hit = wtl[(wtl["model"] == model) & (wtl["metric"] == m)]
            cells.append(" / ".join(str(int(hit.iloc[0][c])) for c in ("wins", "ties", "losses")) if len(hit) else "-")
        rows.append(cells)
    title = (f"Wins / ties / losses against the baseline {baseline}, counted over datasets: a win is significantly "
             f"better by the paired Wilcoxon signed-rank test over test cases at alpha {alpha:g} after Holm's "
             "correction over all pairs of models of that dataset and metric, a loss significantly worse, "
             "anything else a tie")
    return Table("wins_ties_losses", title, header, rows, data=wtl, numeric=set(range(1, len(header))))


def friedman_table(summaries: pd.DataFrame) -> Table:
    header = ["metric", "models", "datasets", "Friedman chi2", "p", "critical difference", "note"]
    rows = [[_metric(r.metric), str(r.models), str(r.datasets), num(r.statistic, 3), pval(r.p), num(r.cd, 3),
             r.note] for r in summaries.itertuples()]
    title = ("Friedman test over datasets (blocks: datasets, scipy.stats.friedmanchisquare on each model's mean "
             "over cases) and Nemenyi's critical difference of mean ranks at its alpha (Demšar 2006)")
    return Table("friedman", title, header, rows, data=summaries, numeric={1, 2, 3, 4, 5})


def nemenyi_table(nem: pd.DataFrame, alpha: float) -> Table:
    header = ["metric", "model a", "model b", "Nemenyi p"]
    rows = [[_metric(r.metric), r.model_a, r.model_b, pval(r.p)] for r in nem.itertuples()]
    bold = {(i, 3) for i, r in enumerate(nem.itertuples()) if r.p == r.p and r.p < alpha}
    title = (f"Nemenyi post-hoc test after Friedman (scikit-posthocs posthoc_nemenyi_friedman; all pairs, "
             f"p < {alpha:g} in bold; the test controls the family-wise error itself, no further correction)")
    return Table("nemenyi", title, header, rows, bold=bold, data=nem, numeric={3})


def kendall_table(tau: pd.DataFrame) -> Table:
    header = ["between", "within", "a", "b", "Kendall tau", "p", "models"]
    rows = [[r.between + "s", _metric(r.within) if r.between == "dataset" else r.within, _metric(r.a)
             if r.between == "metric" else r.a, _metric(r.b) if r.between == "metric" else r.b, num(r.tau, 2),
             pval(r.p), str(r.models)] for r in tau.itertuples()]
    title = ("Agreement of rankings (aggregate-then-rank): Kendall's tau-b between each pair of datasets (for one "
             "metric) and each pair of metrics (on one dataset); 1 = same order, -1 = reversed")
    return Table("kendall_tau", title, header, rows, data=tau, numeric={4, 5, 6})


def dataset_ranking_table(ranks: pd.DataFrame, summary: pd.DataFrame, freq: pd.DataFrame, dataset: str,
                          metric: str, higher: bool, n_boot: int, note: str) -> Table:
    d = ranks[(ranks["dataset"] == dataset) & (ranks["metric"] == metric)].merge(
        summary[(summary["dataset"] == dataset) & (summary["metric"] == metric)], on=["dataset", "metric", "model"])
    first = freq[(freq["dataset"] == dataset) & (freq["metric"] == metric) & (freq["rank"] == 1)]
    d = d.merge(first[["model", "frequency"]].rename(columns={"frequency": "p_first"}), on="model")
    d = d.sort_values(["rank", "model"])
    scale = 100.0 if metric == "dice" else 1.0
    header = ["rank", "model", f"mean {METRIC_NAMES.get(metric, metric)}", "mean rank over cases",
              "bootstrap median rank", "95% interval", "first"]
    rows = [[num(r.rank, 1), r.model, num(r.mean, 2, scale), num(r.rank_then_aggregate, 2), num(r.median_rank, 1),
             f"{num(r.rank_lo, 0)} – {num(r.rank_hi, 0)}", f"{100 * r.p_first:.0f}%"] for r in d.itertuples()]
    cases = int(d["cases"].iloc[0]) if len(d) else 0
    title = (f"{dataset}: ranking by {_metric(metric)} (mean over {cases} cases of each case's mean over organs; "
             f"{_direction(metric, higher)}; {RANK_TIES}), and its stability over {n_boot} bootstrap resamples "
             "of the cases")
    return Table(f"ranking_{dataset}_{metric}", title, header, rows, note, data=d, numeric={0, 2, 3, 4, 5, 6})


def pairwise_table(pairs: pd.DataFrame, dataset: str, metric: str, alpha: float, note: str) -> Table:
    d = pairs[(pairs["dataset"] == dataset) & (pairs["metric"] == metric)]
    scale = 100.0 if metric == "dice" else 1.0
    unit = " (percentage points)" if metric == "dice" else ""
    header = ["model a", "model b", "pairs", f"median diff (a - b){unit}", "W", "p", "p (Holm)", "better"]
    rows = [[r.model_a, r.model_b, str(r.n), num(r.median_diff, 2, scale), num(r.statistic, 1), pval(r.p),
             pval(r.p_holm), (r.better + (" (significant)" if r.significant else "")) or "-"]
            for r in d.itertuples()]
    bold = {(i, 6) for i, r in enumerate(d.itertuples()) if r.significant}
    title = (f"{dataset}: all pairs, paired Wilcoxon signed-rank test of {_metric(metric)} over test cases "
             f"(seeds averaged first), Holm-corrected over the pairs; p < {alpha:g} after correction in bold; "
             "'better' is the model the signed ranks favour")
    return Table(f"pairwise_{dataset}_{metric}", title, header, rows, note, bold, data=d, numeric={2, 3, 4, 5, 6})


def cohort_table(cohorts: pd.DataFrame) -> Table:
    header = ["dataset", "split", "protocol", "hash", "convention", "precision", "models", "seeds", "cases"]
    rows = [[r.dataset, str(r.fingerprint)[:12], r.protocol, str(r.protocol_hash), r.convention, r.precision,
             r.models, r.seeds, str(r.cases)] for r in cohorts.itertuples()]
    title = ("The datasets: one cohort each (runs of one split, protocol hash, metric convention and precision; "
             "runs that differ are never pooled)")
    return Table("cohorts", title, header, rows, data=cohorts, numeric={8})
