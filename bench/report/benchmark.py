"""``build_benchmark_report``: one cohort of runs per dataset in, a benchmark report folder out.

Data flow: load (``bench.report.load``: one cohort per dataset, never pooled) -> per dataset and
metric (``ranking``: case scores, ranking, bootstrap rank frequencies, all-pairs Wilcoxon + Holm)
-> across datasets (``across``: mean ranks two ways, Friedman + Nemenyi, Kendall's tau; wins /
ties / losses against a baseline) -> tables, plots -> ``<out>/report.html``, ``report.md``,
``csv/`` and ``plots/``. Like ``bench report`` it reads run folders and never trains or scores.

The statistics use the models that have results on every dataset (others are named in a note);
each dataset's own tables (per organ, as ``bench report`` shows them) keep all its models.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.report import across, ranking
from bench.report import benchmark_plots as BP
from bench.report import benchmark_tables as BT
from bench.report import tables as T
from bench.report.benchmark_html import BenchmarkPage, Section, anchor, render_html, render_markdown
from bench.report.build import CSV, PLOTS, clean_outputs, pick_baseline, write_document
from bench.report.load import Loaded, load_runs, mismatch_message

DEFAULT_METRICS = ("dice", "hd95")
RULES = ("A case's score is the mean over organs of the seed-averaged values. A missed organ was scored by the "
         "run's metric convention (synapse: DSC 0 and HD95 0, so a miss costs DSC but not HD95; strict: DSC 0 and "
         "the worst-case distance); an organ absent from both masks (NaN, strict only) is skipped in that mean; a "
         "case without a score for every model is left out of the rankings and tests (named in a note). DSC: "
         "higher is better; HD95: lower is better; rank 1 is the best either way.")
SYNTHETIC_NOTE = ("{names}: generated phantoms (built-in synthetic data); their numbers check the pipeline and "
                  "are not comparable in value with real data.")


@dataclass
class BenchmarkReport:
    out: Path
    html: Path
    files: list[Path]
    baseline: str
    models: list[str]
    datasets: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Frames:
    """The long results: one row per (dataset, metric, ...)."""

    scores: pd.DataFrame
    ranks: pd.DataFrame
    freq: pd.DataFrame
    summary: pd.DataFrame
    pairs: pd.DataFrame


def load_cohorts(cohorts: Mapping[str, Sequence[Path] | Loaded]) -> dict[str, Loaded]:
    """Dataset label -> its runs read by ``load_runs``; BenchError (naming the dataset) when a dataset's runs
    are not one cohort or none has results."""
    if not cohorts:
        raise BenchError("a benchmark report needs at least one dataset")
    out = {}
    for name, runs in cohorts.items():
        try:
            loaded = runs if isinstance(runs, Loaded) else load_runs(Path("."), runs=[Path(p) for p in runs])
        except BenchError as e:
            raise BenchError(f"benchmark dataset '{name}': {e}") from None
        if loaded.mixed:
            raise BenchError(f"benchmark dataset '{name}': {mismatch_message(loaded.cohorts, hint=False)}")
        if not loaded.arms():
            raise BenchError(f"benchmark dataset '{name}': no run has results")
        out[str(name)] = loaded
    return out


def _analyse(loaded: dict[str, Loaded], models: list[str], metrics: Sequence[str], n_boot: int, seed: int,
             alpha: float, notes: list[str]) -> _Frames:
    parts: dict[str, list[pd.DataFrame]] = {k: [] for k in ("scores", "ranks", "freq", "summary", "pairs")}
    for name, ld in loaded.items():
        m = ld.metrics[ld.metrics["model"].isin(models)]
        for metric in metrics:
            rows = m[m["metric"] == metric]
            scores = ranking.case_scores(rows, metric, models)
            if scores.empty:
                notes.append(f"{name}: no case has a {metric} value for every model; left out of the {metric} "
                             "statistics.")
                continue
            if len(scores) < rows["case"].nunique():
                notes.append(f"{name}, {metric}: {rows['case'].nunique() - len(scores)} case(s) without a value for "
                             "every model are left out of its ranking and tests.")
            higher = ranking.higher_is_better(metric)
            tag = {"dataset": name, "metric": metric}
            freq, summary = ranking.bootstrap_ranks(scores, higher, n_boot, seed)
            parts["scores"].append(scores.rename_axis("case").reset_index().melt(
                id_vars="case", var_name="model", value_name="value").assign(**tag))
            parts["ranks"].append(ranking.ranking(scores, higher).assign(**tag, higher_is_better=higher))
            parts["freq"].append(freq.assign(**tag, n_boot=n_boot, seed=seed))
            parts["summary"].append(summary.assign(**tag))
            parts["pairs"].append(ranking.pairwise_wilcoxon(scores, higher, alpha).assign(**tag))
    if not parts["ranks"]:
        raise BenchError("no dataset has a metric with values for every model: nothing to rank")
    front = ["dataset", "metric"]
    return _Frames(*(pd.concat(parts[k], ignore_index=True).pipe(lambda d: d[front + [c for c in d if c not in front]])
                     for k in ("scores", "ranks", "freq", "summary", "pairs")))


def _across(f: _Frames, alpha: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """(mean ranks, Friedman summaries, Nemenyi rows, {metric: (summary, matrix)})."""
    tests, summaries, nem_rows = {}, [], []
    for metric in f.ranks["metric"].unique():
        summary, matrix = across.friedman_nemenyi(across.blocks(f.ranks, metric), alpha)
        tests[metric] = (summary, matrix)
        summaries.append({"metric": metric, **summary})
        nem_rows.append(across.nemenyi_long(matrix).assign(metric=metric))
    nem = pd.concat(nem_rows, ignore_index=True)
    return across.mean_ranks(f.ranks), pd.DataFrame(summaries), nem[["metric", "model_a", "model_b", "p"]], tests


def _cohorts(loaded: dict[str, Loaded]) -> pd.DataFrame:
    rows = []
    for name, ld in loaded.items():
        c = ld.cohorts[0]
        seeds = sorted({int(s) for s in ld.complete["seed"]})
        rows.append({"dataset": name, **{k: c[k] for k in ("fingerprint", "protocol", "protocol_hash", "convention",
                                                            "precision")},
                     "dataset_name": c["dataset"], "models": ", ".join(ld.arms()), "seeds": ", ".join(map(str, seeds)),
                     "cases": int(ld.metrics["case"].nunique())})
    return pd.DataFrame(rows)


def _plots(f: _Frames, mr: pd.DataFrame, tests: dict, out: Path, n_boot: int, alpha: float) -> dict[str, list]:
    """{'stability': [...], 'across': [...]} figures, one per metric each."""
    figs: dict[str, list] = {"stability": [], "across": []}
    for metric in f.ranks["metric"].unique():
        sel = {k: getattr(f, k)[getattr(f, k)["metric"] == metric] for k in ("freq", "summary", "ranks", "pairs")}
        figs["stability"] += [BP.blob_plot(sel["freq"], sel["summary"], sel["ranks"], metric, out, n_boot),
                              BP.significance_map(sel["pairs"], sel["ranks"], metric, out, alpha)]
        ranks_m = mr[mr["metric"] == metric].set_index("model")["mean_rank_aggregate_then_rank"]
        figs["across"].append(BP.cd_diagram(ranks_m, tests[metric][1], tests[metric][0], metric, out))
    return {k: [p for p in v if p is not None] for k, v in figs.items()}


def build_benchmark_report(cohorts: Mapping[str, Sequence[Path] | Loaded], out: Path, baseline: str | None = None,
                           spec_name: str = "benchmark", metrics: Sequence[str] = DEFAULT_METRICS,
                           n_boot: int = ranking.N_BOOT, seed: int = 0, alpha: float = ranking.ALPHA
                           ) -> BenchmarkReport:
    """Write the benchmark report of ``cohorts`` (dataset label -> its run folders, or a ``Loaded``) to ``out``.

    ``baseline`` names the model of the wins / ties / losses table (default: unet when present,
    else the first model). Raises BenchError when a dataset's runs are not one cohort, none has
    results, fewer than two models have results on every dataset, or the baseline is unknown.
    """
    loaded = load_cohorts(cohorts)
    arms = {name: set(ld.arms()) for name, ld in loaded.items()}
    models = sorted(set.intersection(*arms.values()))
    notes = [f"{m}: results on {', '.join(sorted(n for n, a in arms.items() if m in a))} only; left out of the "
             "benchmark statistics." for m in sorted(set.union(*arms.values()) - set(models))]
    if len(models) < 2:
        raise BenchError(f"a benchmark needs at least two models with results on every dataset; found "
                         f"{', '.join(models) or 'none'} on all of {', '.join(loaded)}")
    base = pick_baseline(models, baseline)
    assert base is not None
    f = _analyse(loaded, models, metrics, n_boot, seed, alpha, notes)
    mr, friedman, nem, tests = _across(f, alpha)
    tau = pd.concat([across.kendall(f.ranks, "dataset"), across.kendall(f.ranks, "metric")], ignore_index=True)
    outcome = ranking.outcomes(f.pairs, base)
    wtl = ranking.wins_ties_losses(outcome)
    cohort = _cohorts(loaded)
    synthetic = sorted(n for n, d in zip(cohort["dataset"], cohort["dataset_name"], strict=True)
                       if str(d).startswith("synthetic"))
    if synthetic:
        notes.insert(0, SYNTHETIC_NOTE.format(names=", ".join(synthetic)))

    out = Path(out)
    for sub in (PLOTS, CSV):
        (out / sub).mkdir(parents=True, exist_ok=True)
    clean_outputs(out / PLOTS, ("*.png", "*.svg"))
    clean_outputs(out / CSV, ("*.csv", "*/*.csv"))
    figs = _plots(f, mr, tests, out / PLOTS, n_boot, alpha)
    files: list[Path] = []
    ranks_csv = f.ranks.merge(f.summary, on=["dataset", "metric", "model"])
    frames = {"case_scores": f.scores, "ranks": ranks_csv, "bootstrap_ranks": f.freq, "pairwise": f.pairs,
              "mean_ranks": mr, "friedman": friedman, "nemenyi": nem, "kendall_tau": tau, "outcomes": outcome,
              "wins_ties_losses": wtl, "cohorts": cohort}
    for key, frame in frames.items():
        write_document(out / CSV / f"{key}.csv", frame.to_csv(index=False), files)
    page = _page(loaded, f, mr, friedman, nem, tau, wtl, cohort, figs, base, models, spec_name, n_boot, alpha, notes)
    for name, ld in loaded.items():
        for metric in ("dice", "hd95"):
            t = T.organ_table(ld, metric)
            assert t.data is not None
            write_document(out / CSV / anchor(name) / f"organ_{metric}.csv", t.data.to_csv(index=False), files)
    write_document(out / "report.md", render_markdown(page), files)
    write_document(out / "report.html", render_html(page), files)
    files += [p.png for v in figs.values() for p in v] + [p.png.with_suffix(".svg") for v in figs.values() for p in v]
    return BenchmarkReport(out, out / "report.html", files, base, models, list(loaded), notes)


def _page(loaded: dict[str, Loaded], f: _Frames, mr: pd.DataFrame, friedman: pd.DataFrame, nem: pd.DataFrame,
          tau: pd.DataFrame, wtl: pd.DataFrame, cohort: pd.DataFrame, figs: dict[str, list], base: str,
          models: list[str], spec_name: str, n_boot: int, alpha: float, notes: list[str]) -> BenchmarkPage:
    metrics = list(f.ranks["metric"].unique())
    higher = {m: ranking.higher_is_better(m) for m in metrics}
    fairness = (f"{len(loaded)} datasets ({', '.join(loaded)}); {len(models)} models ({', '.join(models)}); "
                f"baseline {base}; the unit of every test is the test case (seeds averaged first, then the mean "
                "over organs); one cohort per dataset (split, protocol hash, convention and precision agree "
                "within it), never pooled; see Runs")
    sections = [Section("Overview", "overview", [BT.mean_rank_table(mr, m, higher[m]) for m in metrics]
                        + [BT.wins_table(wtl, base, metrics, alpha)], figs["across"], RULES),
                Section("Across datasets", "across", [BT.friedman_table(friedman), BT.nemenyi_table(nem, alpha),
                                                      BT.kendall_table(tau)]),
                Section("Stability and significance", "stability", [], figs["stability"],
                        "Per dataset: how stable each ranking is over bootstrap resamples of the cases, and which "
                        "pairs of models differ significantly.")]
    for name, ld in loaded.items():
        note = T.fairness_note(ld)
        tables = [T.organ_table(ld, "dice"), T.organ_table(ld, "hd95")]
        for m in metrics:
            if ((f.ranks["dataset"] == name) & (f.ranks["metric"] == m)).any():
                tables += [BT.dataset_ranking_table(f.ranks, f.summary, f.freq, name, m, higher[m], n_boot, note),
                           BT.pairwise_table(f.pairs, name, m, alpha, note)]
        sections.append(Section(f"Dataset: {name}", "dataset-" + anchor(name), tables))
    runs = []
    for name, ld in loaded.items():
        t = T.runs_table(ld)
        t.key, t.title, t.links = f"runs_{name}", f"{name}: {t.title}", {}
        runs.append(t)
    sections.append(Section("Runs", "runs", [BT.cohort_table(cohort), *runs]))
    return BenchmarkPage(f"segbench benchmark: {spec_name}", fairness, sections, notes)
