"""The benchmark report: rankings, bootstrap stability, all-pairs tests, Friedman / Nemenyi, Kendall's tau,
wins / ties / losses; numbers recomputed here with scipy from metrics.parquet; scikit-posthocs against
its own documented example; the page in a real (headless) Chromium.

The runs are hand-made (3 models x 2 datasets x 2 seeds x 8 cases, manifests and metrics.parquet as
a run writes them): the statistics need numbers with known structure, not trained models.
"""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import browse, chromium
from scipy import stats

from bench.errors import BenchError
from bench.report import across, ranking
from bench.report.benchmark import build_benchmark_report

MODELS = ("swinunet", "transunet", "unet")
SEEDS = (0, 1)
DATASETS = {"synthetic": {1: "aorta", 2: "liver", 3: "spleen"}, "synthetic-cardiac": {1: "RV", 2: "Myo", 3: "LV"}}
# model -> (DSC offset, HD95 offset) per dataset: clear gaps on one, a reversal and a near-tie on the other
SHIFTS = {"synthetic": {"swinunet": (0.08, -4.0), "transunet": (0.04, -2.0), "unet": (0.0, 0.0)},
          "synthetic-cardiac": {"swinunet": (0.01, 1.0), "transunet": (0.06, -3.0), "unet": (0.0, 0.0)}}
N_CASES = 8


def _write_run(results: Path, dataset: str, model: str, seed: int, rng: np.random.Generator,
               protocol_hash: str = "0123456789ab") -> Path:
    run = results / dataset / "smoke" / model / f"seed{seed}"
    run.mkdir(parents=True)
    rows = []
    for k in range(N_CASES):
        for label, organ in DATASETS[dataset].items():
            dsc_shift, hd_shift = SHIFTS[dataset][model]
            dice = 0.6 + 0.1 * np.sin(3 * k + label) + dsc_shift + rng.normal(0, 0.02)
            hd = 12 + 3 * np.cos(2 * k + label) + hd_shift + rng.normal(0, 1.0)
            for metric, value in (("dice", dice), ("hd95", hd)):
                rows.append({"dataset": dataset, "protocol": "smoke", "model": model, "seed": seed,
                             "case": f"case{k:02d}", "label": label, "organ": organ, "metric": metric,
                             "value": float(value), "convention": "synapse", "status": "both_present"})
    pd.DataFrame(rows).to_parquet(run / "metrics.parquet", index=False)
    manifest = {"status": "complete", "model": model, "seed": seed, "convention": "synapse", "precision": "fp32",
                "protocol_name": "smoke", "protocol_hash": protocol_hash, "pretrained": False,
                "run": {"model": model, "seed": seed, "dataset": dataset, "protocol": "smoke"},
                "dataset": {"name": dataset, "fingerprint": f"fp-{dataset}",
                            "organs": {str(k): v for k, v in DATASETS[dataset].items()}}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[Path]]:
    results = tmp_path_factory.mktemp("bench") / "results"
    rng = np.random.default_rng(5)
    return {ds: [_write_run(results, ds, m, s, rng) for m in MODELS for s in SEEDS] for ds in DATASETS}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    return build_benchmark_report(runs, tmp_path_factory.mktemp("out") / "demo", spec_name="demo", n_boot=500)


def _raw(runs: dict[str, list[Path]]) -> pd.DataFrame:
    """Every row of every metrics.parquet, read directly."""
    return pd.concat([pd.read_parquet(p / "metrics.parquet") for paths in runs.values() for p in paths],
                     ignore_index=True)


def _scores(raw: pd.DataFrame, dataset: str, metric: str) -> pd.DataFrame:
    """case x model: seeds averaged per (case, organ), then the mean over organs."""
    d = raw[(raw["dataset"] == dataset) & (raw["metric"] == metric)]
    per = d.groupby(["model", "case", "organ"])["value"].mean().groupby(["model", "case"]).mean()
    return per.unstack("model")[list(MODELS)].sort_index()


def _csv(report, name: str) -> pd.DataFrame:
    return pd.read_csv(report.out / "csv" / f"{name}.csv", keep_default_na=True)


def test_report_files(report):
    assert report.models == list(MODELS) and report.datasets == list(DATASETS) and report.baseline == "unet"
    for name in ("report.html", "report.md", "csv/ranks.csv", "csv/bootstrap_ranks.csv", "csv/pairwise.csv",
                 "csv/mean_ranks.csv", "csv/friedman.csv", "csv/nemenyi.csv", "csv/kendall_tau.csv",
                 "csv/wins_ties_losses.csv", "csv/outcomes.csv", "csv/cohorts.csv", "csv/case_scores.csv",
                 "csv/synthetic-cardiac/organ_dice.csv"):
        assert (report.out / name).stat().st_size > 0, name
    for kind in ("blob", "significance", "cd"):
        for metric in ("dice", "hd95"):
            for ext in ("png", "svg"):
                assert (report.out / "plots" / f"{kind}_{metric}.{ext}").stat().st_size > 2000
    md = (report.out / "report.md").read_text()
    assert "not comparable in value with real data" in md  # both datasets are built-in phantoms
    assert "aggregate-then-rank" in md and "rank-then-aggregate" in md


@pytest.mark.parametrize("metric", ["dice", "hd95"])
def test_ranks_and_friedman_equal_a_recomputation_with_scipy(runs, report, metric):
    raw, ranks, friedman = _raw(runs), _csv(report, "ranks"), _csv(report, "friedman").set_index("metric")
    means = {}
    for ds in DATASETS:
        mean = _scores(raw, ds, metric).mean()
        means[ds] = mean
        expected = stats.rankdata(-mean.to_numpy() if metric == "dice" else mean.to_numpy())
        got = ranks[(ranks["dataset"] == ds) & (ranks["metric"] == metric)].set_index("model")
        assert got.loc[list(MODELS), "mean"].to_numpy() == pytest.approx(mean.to_numpy(), abs=1e-12)
        assert got.loc[list(MODELS), "rank"].tolist() == expected.tolist()
    res = stats.friedmanchisquare(*(np.array([means[ds][m] for ds in DATASETS]) for m in MODELS))
    assert friedman.loc[metric, "statistic"] == pytest.approx(res.statistic, abs=1e-12)
    assert friedman.loc[metric, "p"] == pytest.approx(res.pvalue, abs=1e-12)
    assert (friedman.loc[metric, "models"], friedman.loc[metric, "datasets"]) == (3, 2)
    mean_ranks = _csv(report, "mean_ranks")
    got = mean_ranks[mean_ranks["metric"] == metric].set_index("model")["mean_rank_aggregate_then_rank"]
    per_ds = ranks[ranks["metric"] == metric].groupby("model")["rank"].mean()
    assert got.loc[list(MODELS)].to_numpy() == pytest.approx(per_ds.loc[list(MODELS)].to_numpy())


def test_one_wilcoxon_p_value_and_holm_equal_scipy(runs, report):
    scores = _scores(_raw(runs), "synthetic-cardiac", "dice")
    pairs = _csv(report, "pairwise")
    pairs = pairs[(pairs["dataset"] == "synthetic-cardiac") & (pairs["metric"] == "dice")]
    assert [tuple(r) for r in pairs[["model_a", "model_b"]].to_numpy()] == [
        ("swinunet", "transunet"), ("swinunet", "unet"), ("transunet", "unet")]
    p = np.array([stats.wilcoxon(scores[a], scores[b]).pvalue for a, b in pairs[["model_a", "model_b"]].to_numpy()])
    assert pairs["p"].to_numpy() == pytest.approx(p, abs=1e-15)
    order = np.argsort(p)  # Holm by its definition
    holm = np.empty(3)
    holm[order] = np.maximum.accumulate(np.minimum(1, (3 - np.arange(3)) * p[order]))
    assert pairs["p_holm"].to_numpy() == pytest.approx(holm, abs=1e-15)
    row = pairs[(pairs["model_a"] == "transunet") & (pairs["model_b"] == "unet")].iloc[0]
    assert row["better"] == "transunet" and row["median_diff"] == pytest.approx(
        np.median(scores["transunet"] - scores["unet"]))


def test_wins_ties_losses_follow_the_holm_corrected_pairs(report):
    pairs, wtl = _csv(report, "pairwise"), _csv(report, "wins_ties_losses")
    for r in wtl.itertuples():
        rows = pairs[(pairs["metric"] == r.metric) & pairs["model_a"].isin([r.model, "unet"])
                     & pairs["model_b"].isin([r.model, "unet"])]
        sig = rows[rows["p_holm"] < 0.05]
        assert (r.wins, r.losses) == ((sig["better"] == r.model).sum(), (sig["better"] == "unet").sum())
        assert r.wins + r.ties + r.losses == r.datasets == 2
    # the hand-made gaps: transunet beats unet on both datasets' DSC, swinunet only on the first
    dice = wtl[wtl["metric"] == "dice"].set_index("model")
    assert (dice.loc["transunet", "wins"], dice.loc["swinunet", "wins"]) == (2, 1)


def test_bootstrap_frequencies_and_kendall(report):
    freq, ranks = _csv(report, "bootstrap_ranks"), _csv(report, "ranks")
    for _, g in freq.groupby(["dataset", "metric", "model"]):
        assert g["frequency"].sum() == pytest.approx(1.0) and sorted(g["rank"]) == [1, 2, 3]
    for _, g in freq.groupby(["dataset", "metric", "rank"]):
        assert g["frequency"].sum() == pytest.approx(1.0)  # K models, K ranks: every resample fills each rank
    clear = ranks[(ranks["dataset"] == "synthetic") & (ranks["metric"] == "dice")].set_index("model")
    assert clear.loc["swinunet", "rank"] == 1 and clear.loc["swinunet", "median_rank"] == 1
    tau = _csv(report, "kendall_tau")
    row = tau[(tau["between"] == "dataset") & (tau["within"] == "dice")].iloc[0]
    r = ranks[ranks["metric"] == "dice"].pivot(index="model", columns="dataset", values="rank")
    assert row["tau"] == pytest.approx(stats.kendalltau(r["synthetic"], r["synthetic-cardiac"]).statistic)
    assert set(tau["between"]) == {"dataset", "metric"}


def test_ranking_direction_ties_and_degenerate_pairs():
    scores = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [2.0, 3.0, 4.0], "c": [2.0, 3.0, 4.0]})
    lower = ranking.ranking(scores, higher=False).set_index("model")
    assert lower["rank"].tolist() == [1.0, 2.5, 2.5]  # lower is better (HD95); the tie shares 2.5
    assert ranking.ranking(scores, higher=True).set_index("model")["rank"].tolist() == [3.0, 1.5, 1.5]
    pairs = ranking.pairwise_wilcoxon(scores, higher=True).set_index(["model_a", "model_b"])
    assert np.isnan(pairs.loc[("b", "c"), "p"]) and not pairs.loc[("b", "c"), "significant"]
    assert pairs.loc[("a", "b"), "better"] == "b"
    lower_pairs = ranking.pairwise_wilcoxon(scores, higher=False).set_index(["model_a", "model_b"])
    assert lower_pairs.loc[("a", "b"), "better"] == "a"  # smaller distances win
    freq, summary = ranking.bootstrap_ranks(scores, higher=True, n_boot=200, seed=1)
    again = ranking.bootstrap_ranks(scores, higher=True, n_boot=200, seed=1)
    assert freq.equals(again[0]) and summary.equals(again[1])  # seeded
    assert freq.set_index(["model", "rank"]).loc[("a", 3), "frequency"] == 1.0  # a is worst on every case
    assert (ranking.higher_is_better("dice"), ranking.higher_is_better("hd95")) == (True, False)


def test_scikit_posthocs_reproduces_its_documented_example():
    """The "Block design" example of the scikit-posthocs tutorial (4 fields x 4 fertilizers), as documented at
    https://scikit-posthocs.readthedocs.io/en/latest/tutorial.html#block-design (docs/source/tutorial.rst).

    The page prints Friedman chi2 = 8.7, p = 0.03355726870553798 (scipy) and these Nemenyi p-values. Its
    small p-values (0.031375, 0.220908) hold to 1e-3; its large ones (0.823993, 0.670273) were printed by an
    older release (statsmodels' interpolated studentized-range tables) and today come out 0.844 and 0.692,
    from scipy.stats.studentized_range, which the last assertion checks exactly (Demšar's q statistic).
    """
    data = np.array([[8.82, 11.8, 10.37, 12.08], [8.92, 9.58, 10.59, 11.89], [8.27, 11.46, 10.24, 11.6],
                     [8.83, 13.25, 8.33, 11.51]])
    table = pd.DataFrame(data, columns=list("abcd"))
    summary, p = across.friedman_nemenyi(table)
    assert summary["statistic"] == pytest.approx(8.7, abs=1e-12)
    assert summary["p"] == pytest.approx(0.03355726870553798, abs=1e-15)
    documented = {("a", "b"): 0.220908, ("a", "d"): 0.031375, ("c", "d"): 0.220908,
                  ("a", "c"): 0.823993, ("b", "c"): 0.670273, ("b", "d"): 0.823993}
    for (x, y), value in documented.items():
        assert p.loc[x, y] == p.loc[y, x]
        assert p.loc[x, y] == pytest.approx(value, abs=1e-3 if value < 0.5 else 0.025), (x, y)
    mean_rank = stats.rankdata(data, axis=1).mean(axis=0)
    q = abs(mean_rank[0] - mean_rank[2]) / np.sqrt(4 * 5 / (6 * 4))
    assert p.loc["a", "c"] == pytest.approx(stats.studentized_range.sf(q * np.sqrt(2), 4, np.inf), abs=1e-12)


def test_critical_difference_matches_demsar_table():
    """q_0.05 of the Nemenyi test for k = 2..10 models, Demšar (JMLR 2006) Table 5(a)."""
    q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
    for k, q in q05.items():
        assert across.critical_difference(k, 7) / np.sqrt(k * (k + 1) / 42) == pytest.approx(q, abs=1e-3)


def test_bad_cohorts_are_one_line_naming_the_dataset(runs, tmp_path):
    mixed = list(runs["synthetic"])
    other = _write_run(tmp_path / "results", "synthetic", "unet", 5, np.random.default_rng(0), "ffffffffffff")
    with pytest.raises(BenchError, match="benchmark dataset 'synthetic': runs differ in hash"):
        build_benchmark_report({"synthetic": [*mixed, other], "cardiac": runs["synthetic-cardiac"]}, tmp_path / "x")
    with pytest.raises(BenchError, match="at least two models with results on every dataset"):
        build_benchmark_report({"a": runs["synthetic"][:2], "b": runs["synthetic-cardiac"]}, tmp_path / "x")
    with pytest.raises(BenchError, match="--baseline nosuch"):
        build_benchmark_report(runs, tmp_path / "x", baseline="nosuch")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_a_model_missing_on_one_dataset_is_named_and_left_out(runs, tmp_path):
    partial = {"synthetic": runs["synthetic"], "synthetic-cardiac": runs["synthetic-cardiac"][2:]}  # no swinunet
    rep = build_benchmark_report(partial, tmp_path / "out", n_boot=100)
    assert rep.models == ["transunet", "unet"]
    assert any(n.startswith("swinunet: results on synthetic only") for n in rep.notes)
    assert set(_csv(rep, "ranks")["model"]) == {"transunet", "unet"}
    assert _csv(rep, "friedman")["p"].isna().all()  # two models: no Friedman test, said in its note


# --- the page in a real browser -------------------------------------------------------------



class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, list[dict]] = {}

    def handle_starttag(self, tag, attrs):
        self.tags.setdefault(tag, []).append(dict(attrs))


@pytest.mark.skipif(chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium); "
                                                "CI installs it")
def test_html_renders_in_headless_chromium_with_every_plot(report):
    res = browse(report.html, "--window-size=1400,3000", "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = _Dom()
    dom.feed(res.stdout)
    images = dom.tags["img"]
    assert len(images) == 6 and all(i["src"].startswith("data:image/png;base64,") for i in images)
    assert "script" not in dom.tags and "link" not in dom.tags
    assert len(dom.tags["table"]) >= 2 + 1 + 3 + 2 * (2 + 4) + 3
    shot = report.out / "screenshot.png"
    res = browse(report.html, "--window-size=1400,3000", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert rgb.shape == (3000, 1400, 3)
    assert (rgb.max(axis=2) < 90).mean() > 0.003  # text is drawn
    assert ((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum() > 5_000  # coloured figures are on screen
