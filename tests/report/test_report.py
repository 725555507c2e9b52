"""`bench report`: every format, values recomputed independently, statistics against scipy/numpy,
the fairness guard, failed runs as rows, and the HTML page in a real (headless) Chromium.

One module-scoped smoke sweep (2 models x 2 seeds x 3 test cases, 4 iterations each) feeds
every test; the numbers mean nothing, the files are real. Other situations (a failed run,
a second protocol, an LR study) are copies of those run folders with an edited manifest.
"""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import bench_cli, browse, chromium
from scipy import stats

from bench.data.synthetic import generate as synth
from bench.report import build_report
from bench.report.load import load_runs
from bench.report.stats import holm, ranking, wilcoxon_vs_baseline
from bench.report.tables import organ_table

MODELS = ("swinunet", "unet")
SEEDS = (0, 1)
CASES = ("0001", "0002", "0003")
SCORED = CASES[:2]  # smoke scores the first 2 test cases (evaluation.max_cases)
PLOTS = ("heatmap_dice", "box_dice", "box_hd95", "learning_curves", "qualitative")
LIGHT_FILES = ("manifest.json", "metrics.parquet", "train_log.csv")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`bench run` (which ends with the report), then `bench report` into another folder."""
    root = tmp_path_factory.mktemp("report")
    data = synth.generate(root / "data" / "tiny3", seed=0, size=64, slice_mm=10.0, train_cases=("0005", "0006"),
                          test_cases=CASES)
    res = bench_cli("run", "--models", ",".join(MODELS), "--protocol", "smoke", "--seeds", "0,1",
                    "--dataset", str(data), "--results", str(root / "results"), "--reports", str(root / "reports"),
                    "--drop-weights")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "report written to" in res.stdout, res.stdout
    rep = bench_cli("report", "--results", str(root / "results"), "--out", str(root / "out"))
    assert rep.returncode == 0, rep.stdout + rep.stderr
    return root


def _parquet(root: Path) -> pd.DataFrame:
    """The raw rows, read straight from the run folders (not through bench.engine.results)."""
    return pd.concat([pd.read_parquet(p) for p in sorted((root / "results").glob("*/*/*/seed*/metrics.parquet"))],
                     ignore_index=True)


def _light_copy(root: Path, dest: Path) -> Path:
    """The run folders without checkpoints and predictions (enough for a report)."""
    for manifest in (root / "results").glob("*/*/*/seed*/manifest.json"):
        target = dest / manifest.parent.relative_to(root / "results")
        target.mkdir(parents=True)
        for name in LIGHT_FILES:
            shutil.copy(manifest.parent / name, target / name)
    return dest


def _edit_manifest(folder: Path, **changes) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_bench_run_ends_with_the_report(sweep):
    out = sweep / "reports" / "tiny3" / "smoke"
    for name in ("report.html", "report.md", "tables.tex", "csv/organ_dice.csv", "csv/per_case.csv",
                 "plots/heatmap_dice.png"):
        assert (out / name).is_file(), name


def test_report_writes_every_format(sweep):
    out = sweep / "out"
    for name in ("report.html", "report.md", "tables.tex"):
        assert (out / name).stat().st_size > 0, name
    for key in ("organ_dice", "organ_hd95", "per_case", "compute", "runs", "wilcoxon_dice", "wilcoxon_hd95",
                "bootstrap", "ranking"):
        assert (out / "csv" / f"{key}.csv").is_file(), key
    for key in PLOTS:
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{key}.{ext}").stat().st_size > 1000, f"{key}.{ext}"
    tex = (out / "tables.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"kidney\_l", r"$\pm$"):
        assert token in tex, token
    md = (out / "report.md").read_text()
    assert "**" in md and "convention synapse" in md and "protocol smoke (hash " in md


def _independent_organ_stats(raw: pd.DataFrame, metric: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(model, organ) -> (mean, sd) over seeds of the per-seed mean over cases; 'mean' = over organs."""
    out = {}
    d = raw[raw["metric"] == metric]
    for model in MODELS:
        per_seed = {s: d[(d["model"] == model) & (d["seed"] == s)].groupby("organ")["value"].mean() for s in SEEDS}
        for organ in per_seed[0].index:
            v = np.array([per_seed[s][organ] for s in SEEDS])
            out[model, organ] = (v.mean(), v.std(ddof=1))
        v = np.array([per_seed[s].mean() for s in SEEDS])
        out[model, "mean"] = (v.mean(), v.std(ddof=1))
    return out


def _markdown_table(md: str, title_start: str) -> pd.DataFrame:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("### " + title_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split("|")])
    return pd.DataFrame(rows[2:], columns=rows[0]).set_index("model")


@pytest.mark.parametrize("metric,scale,title", [("dice", 100, "DSC (%) per organ"), ("hd95", 1, "HD95 per organ")])
def test_table_values_equal_a_recomputation(sweep, metric, scale, title):
    expected = _independent_organ_stats(_parquet(sweep), metric)
    csv = pd.read_csv(sweep / "out" / "csv" / f"organ_{metric}.csv")
    md = _markdown_table((sweep / "out" / "report.md").read_text(), title)
    assert len(csv) == len(expected) == 2 * 9
    for (model, organ), (mean, sd) in expected.items():
        row = csv[(csv["model"] == model) & (csv["organ"] == organ)].iloc[0]
        assert row["mean"] == pytest.approx(mean, abs=1e-12) and row["sd"] == pytest.approx(sd, abs=1e-12)
        assert (row["seeds"], row["cases"], row["convention"]) == (2, len(SCORED), "synapse")
        # an HD95 mean that counts a missed organ (0) carries its mark (test_a_missed_organs_hd95_...)
        assert md.loc[model, organ].removesuffix("†") == f"{mean * scale:.2f} ± {sd * scale:.2f}"
    assert set(md["seeds"]) == {"2"} and set(md["cases"]) == {str(len(SCORED))}


def test_per_case_csv_holds_the_raw_values(sweep):
    raw = _parquet(sweep)
    per_case = pd.read_csv(sweep / "out" / "csv" / "per_case.csv", dtype={"case": str})
    assert len(per_case) == len(MODELS) * len(SEEDS) * len(SCORED) * 8
    dice = raw[raw["metric"] == "dice"].set_index(["model", "seed", "case", "organ"])["value"]
    got = per_case.set_index(["model", "seed", "case", "organ"])["dice"]
    assert np.allclose(got.loc[dice.index].to_numpy(), dice.to_numpy(), atol=1e-12, equal_nan=True)


def _case_values(raw: pd.DataFrame, metric: str, model: str) -> pd.DataFrame:
    """case x organ, seeds averaged, with a 'mean' column (mean over organs)."""
    d = raw[(raw["metric"] == metric) & (raw["model"] == model)]
    table = d.pivot_table(index="case", columns="organ", values="value", aggfunc="mean").sort_index()
    table["mean"] = table.mean(axis=1)
    return table


@pytest.mark.parametrize("metric", ["dice", "hd95"])
def test_wilcoxon_equals_scipy(sweep, metric):
    raw = _parquet(sweep)
    x, y = _case_values(raw, metric, "swinunet"), _case_values(raw, metric, "unet")
    got = pd.read_csv(sweep / "out" / "csv" / f"wilcoxon_{metric}.csv").set_index("organ")
    assert set(got["baseline"]) == {"unet"} and set(got["model"]) == {"swinunet"}
    p = {}
    for organ in x.columns:
        d = x[organ] - y[organ]
        assert got.loc[organ, "median_diff"] == pytest.approx(np.median(d), abs=1e-12)
        assert got.loc[organ, "n"] == len(SCORED)
        if np.count_nonzero(d):
            res = stats.wilcoxon(x[organ], y[organ])
            assert got.loc[organ, "statistic"] == pytest.approx(res.statistic)
            assert got.loc[organ, "p"] == pytest.approx(res.pvalue, abs=1e-12)
            p[organ] = res.pvalue
        else:
            assert np.isnan(got.loc[organ, "p"])
    # Holm's procedure as a test, not as a formula: an adjusted p-value is the smallest level at which
    # the step-down procedure rejects its hypothesis, so just above it that organ is rejected, just below it not
    assert got.loc[list(p), "p_holm"].notna().all()
    for organ in p:
        h = got.loc[organ, "p_holm"]
        assert p[organ] <= h <= 1
        if h < 1:
            assert organ in _holm_rejects(p, h * (1 + 1e-9))
        assert organ not in _holm_rejects(p, h * (1 - 1e-9))


def _holm_rejects(p: dict[str, float], alpha: float) -> set[str]:
    """Holm (1979), step down: from the smallest p, reject while p_(k) <= alpha / (m - k + 1), then stop."""
    rejected = set()
    for k, (organ, value) in enumerate(sorted(p.items(), key=lambda kv: kv[1])):
        if value > alpha / (len(p) - k):
            break
        rejected.add(organ)
    return rejected


def test_bootstrap_equals_numpy(sweep):
    raw = _parquet(sweep)
    got = pd.read_csv(sweep / "out" / "csv" / "bootstrap.csv").set_index("model")
    for model in MODELS:
        x = _case_values(raw, "dice", model)["mean"].to_numpy()
        rng = np.random.default_rng(0)
        means = x[rng.integers(0, len(x), size=(2000, len(x)))].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        assert got.loc[model, "mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert (got.loc[model, "lo"], got.loc[model, "hi"]) == pytest.approx((lo, hi), abs=1e-12)
        assert got.loc[model, "n"] == len(SCORED)


def _synthetic_cases(n_cases: int = 12, seed: int = 1) -> pd.DataFrame:
    """Long case rows for three models whose gaps are clear on some organs and nil on others."""
    rng = np.random.default_rng(seed)
    rows = []
    for m, shift in (("a", 0.0), ("b", 0.05), ("c", 0.02)):
        for label, organ in enumerate(("liver", "spleen", "aorta"), start=1):
            for k in range(n_cases):
                value = 0.7 + 0.1 * np.sin(k + label) + shift * (label != 3) + rng.normal(0, 0.01)
                rows.append({"model": m, "label": label, "organ": organ, "case": f"c{k:02d}", "value": value})
    df = pd.DataFrame(rows)
    overall = df.groupby(["model", "case"])["value"].mean().reset_index().assign(label=0, organ="mean")
    return pd.concat([overall, df], ignore_index=True)


def test_wilcoxon_and_holm_on_varied_p_values():
    cases = _synthetic_cases()
    got = wilcoxon_vs_baseline(cases, "a")
    assert len(got) == 2 * 4 and got["p"].nunique() > 2
    for r in got.itertuples():
        x = cases[(cases.model == r.model) & (cases.label == r.label)].sort_values("case")["value"].to_numpy()
        y = cases[(cases.model == "a") & (cases.label == r.label)].sort_values("case")["value"].to_numpy()
        assert r.p == pytest.approx(stats.wilcoxon(x, y).pvalue, abs=1e-15)
    # Holm by its definition: p_(k) * (m - k + 1), made monotone, capped at 1
    assert holm(np.array([0.01, 0.04, 0.03, np.nan, 0.2])) == pytest.approx([0.04, 0.09, 0.09, np.nan, 0.2],
                                                                             nan_ok=True)
    # by hand, m = 5 with a tie: 0.001*5 = 0.005; 0.02*4 = 0.08; 0.02*3 = 0.06 -> 0.08 (monotone);
    # 0.3*2 = 0.6; 0.5*1 = 0.5 -> 0.6
    assert holm(np.array([0.02, 0.5, 0.02, 0.3, 0.001])) == pytest.approx([0.08, 0.6, 0.08, 0.6, 0.005])
    # by hand, m = 3 with the cap: 0.01*3 = 0.03; 0.6*2 = 1.2 -> 1; 0.7*1 = 0.7 -> 1 (monotone)
    assert holm(np.array([0.6, 0.7, 0.01])) == pytest.approx([1.0, 1.0, 0.03])
    assert holm(np.array([np.nan, np.nan])) == pytest.approx([np.nan, np.nan], nan_ok=True)  # an empty family


def test_ranking_and_its_stability():
    r = ranking(_synthetic_cases(), n_boot=500, seed=0)
    assert list(r["model"]) == ["b", "c", "a"] and list(r["position"]) == [1, 2, 3]
    assert r.loc[0, "p_holds"] == 1.0 and r.loc[0, "p_first"] == 1.0
    assert 0 <= r.loc[2, "p_holds"] <= 1 and r["organs"].iloc[0] == 3
    assert ranking(_synthetic_cases(), n_boot=500, seed=0).equals(r)  # seeded


def test_report_is_reproducible(sweep, tmp_path):
    build_report(sweep / "results", tmp_path / "again")
    for name in ("report.md", "report.html", "tables.tex", "csv/bootstrap.csv", "csv/ranking.csv",
                 "plots/heatmap_dice.svg", "plots/box_dice.png"):
        assert (tmp_path / "again" / name).read_bytes() == (sweep / "out" / name).read_bytes(), name


def test_failed_runs_and_lr_studies_appear(sweep, tmp_path):
    results = _light_copy(sweep, tmp_path / "results")
    failed = results / "tiny3" / "smoke" / "transunet" / "seed0"
    shutil.copytree(results / "tiny3" / "smoke" / "unet" / "seed0", failed)
    (failed / "metrics.parquet").unlink()
    m = json.loads((failed / "manifest.json").read_text())
    _edit_manifest(failed, status="diverged", error="loss became nan at iteration 3",
                   run=dict(m["run"], model="transunet"), model="transunet", gflops=None)
    # studies as `bench tune` leaves them: tune/<study>/trials.csv, trial folders with their logs
    trials = pd.DataFrame({"number": range(5), "lr": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                           "value": [0.2, 0.4, 0.5, 0.3, None], "state": ["COMPLETE"] * 4 + ["FAIL"]})
    for name in ("tiny3-swinunet-smoke-b906b8ec34f9", "tiny3-unet-cpu-0123456789ab", "handmade"):
        (results / "tune" / name / "trial0").mkdir(parents=True)
        trials.assign(study=name).to_csv(results / "tune" / name / "trials.csv", index=False)
        shutil.copy(results / "tiny3" / "smoke" / "unet" / "seed0" / "train_log.csv",
                    results / "tune" / name / "trial0")
    (results / "tune" / "notes.csv").write_text("something,else\n1,2\n")
    rep = build_report(results, tmp_path / "out")
    runs = pd.read_csv(rep.out / "csv" / "runs.csv")
    bad = runs[runs["model"] == "transunet"].iloc[0]
    assert bad["status"] == "diverged" and "nan at iteration 3" in bad["error"]
    md = (rep.out / "report.md").read_text()
    assert "transunet seed 0: diverged (loss became nan at iteration 3)" in md
    assert "transunet" not in pd.read_csv(rep.out / "csv" / "organ_dice.csv")["model"].tolist()
    assert "| transunet | no | 24.90 | - |" in md  # no GFLOPs recorded: shown as '-'
    assert "| unet | no | 24.90 | 7.03 |" in md
    studies = sorted(p.name for p in (rep.out / "plots").glob("lr_search_*.png"))
    # this protocol's study and a hand-named one; not another protocol's, nor a CSV of other columns
    assert studies == ["lr_search_handmade.png", "lr_search_tiny3-swinunet-smoke-b906b8ec34f9.png"]
    assert "qualitative" in md.lower()  # predictions not copied: skipped with a note, report still written


def test_two_protocols_get_a_report_each_or_one_mixed_report_when_allowed(sweep, tmp_path):
    results = _light_copy(sweep, tmp_path / "results")
    other = results / "tiny3" / "other" / "unet" / "seed0"
    shutil.copytree(results / "tiny3" / "smoke" / "unet" / "seed0", other)
    m = json.loads((other / "manifest.json").read_text())
    _edit_manifest(other, protocol_name="other", protocol_hash="0123456789ab", run=dict(m["run"], protocol="other"))
    res = bench_cli("report", "--results", str(results), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 cohorts" in res.stdout and "index.html" in res.stdout
    for protocol, arms in (("smoke", {"swinunet", "unet"}), ("other", {"unet"})):
        out = tmp_path / "reports" / "tiny3" / protocol
        assert set(pd.read_csv(out / "csv" / "organ_dice.csv")["model"]) == arms  # never pooled, never labelled
        assert "MIXED" not in (out / "report.md").read_text()
    index = (tmp_path / "reports" / "index.md").read_text()
    assert "[report](tiny3/smoke/report.html)" in index and "[report](tiny3/other/report.html)" in index
    # --baseline names a model of one cohort only: the other cohort keeps its default baseline
    res = bench_cli("report", "--results", str(results), "--out", str(tmp_path / "x"), "--baseline", "swinunet")
    assert res.returncode == 0, res.stderr
    res = bench_cli("report", "--results", str(results), "--allow-mixed", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "reports" / "mixed" / "tiny3-other+tiny3-smoke"
    md = (out / "report.md").read_text()
    assert "Mixed runs" in md and "MIXED, not comparable" in md
    arms = set(pd.read_csv(out / "csv" / "organ_dice.csv")["model"])
    assert arms == {"swinunet [smoke hash b906b8]", "unet [smoke hash b906b8]", "unet [other hash 012345]"}
    res = bench_cli("report", "--results", str(results), "--protocol", "smoke", "--out", str(tmp_path / "one"))
    assert res.returncode == 0 and (tmp_path / "one" / "report.html").is_file()
    assert not (tmp_path / "one" / "index.html").exists()  # one cohort: one report, no index


def test_two_datasets_get_two_cohort_reports_and_an_index(sweep, tmp_path):
    results = _light_copy(sweep, tmp_path / "results")
    shutil.copytree(results / "tiny3", results / "tiny3b")
    for manifest in (results / "tiny3b").glob("*/*/seed*/manifest.json"):
        m = json.loads(manifest.read_text())
        _edit_manifest(manifest.parent, run=dict(m["run"], dataset="tiny3b"),
                       dataset=dict(m["dataset"], name="tiny3b", fingerprint="f" * 12))
    res = bench_cli("report", "--results", str(results), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("report written to") == 2, res.stdout
    for dataset in ("tiny3", "tiny3b"):
        md = (tmp_path / "out" / dataset / "smoke" / "report.md").read_text()
        assert f"dataset {dataset} (split" in md and "MIXED" not in md
        assert set(pd.read_csv(tmp_path / "out" / dataset / "smoke" / "csv" / "runs.csv")["dataset"]) == {dataset}
    page = (tmp_path / "out" / "index.html").read_text()
    links = [a["href"] for a in _links(page)]
    assert links == ["tiny3/smoke/report.html", "tiny3b/smoke/report.html"]
    assert all((tmp_path / "out" / link).is_file() for link in links)
    assert "first 2 test cases" in page  # smoke's subset, said in the index too


def _links(page: str) -> list[dict]:
    dom = _Dom()
    dom.feed(page)
    return dom.tags.get("a", [])


def test_a_missed_organs_hd95_is_marked_counted_and_never_bolded(sweep, tmp_path):
    results = _light_copy(sweep, tmp_path / "results")
    for seed in SEEDS:  # unet misses the aorta in every case: the synapse convention scores its HD95 0
        path = results / "tiny3" / "smoke" / "unet" / f"seed{seed}" / "metrics.parquet"
        m = pd.read_parquet(path)
        aorta = m["organ"] == "aorta"
        m.loc[aorta, "status"] = "ref_only"
        m.loc[aorta & m["metric"].isin(["dice", "nsd"]), "value"] = 0.0
        m.loc[aorta & ~m["metric"].isin(["dice", "nsd"]), "value"] = 0.0
        m.to_parquet(path)
    table = organ_table(load_runs(results), "hd95")
    row = {r[0]: i for i, r in enumerate(table.rows)}
    column = table.header.index("aorta")
    assert table.rows[row["unet"]][column] == "0.00 ± 0.00†"  # the lowest value, marked...
    assert (row["unet"], column) not in table.bold and (row["swinunet"], column) in table.bold  # ...not the best
    assert table.rows[row["unet"]][1].endswith("†")  # the mean over organs counts it too
    frames = [pd.read_parquet(results / "tiny3" / "smoke" / "unet" / f"seed{s}" / "metrics.parquet") for s in SEEDS]
    missed = sum(int(((f["metric"] == "hd95") & (f["status"] == "ref_only")).sum()) for f in frames)
    assert missed >= len(SEEDS) * frames[0]["case"].nunique()  # the aorta in every case, and what 4 iterations miss
    assert table.header[-1] == "missed" and table.rows[row["unet"]][-1] == str(missed)
    rep = build_report(results, tmp_path / "out", n_boot=50)
    md = (rep.out / "report.md").read_text()
    assert "0 = missed" in md and "**0.00 ± 0.00†**" not in md and "0.00 ± 0.00†" in md
    assert r"0.00 $\pm$ 0.00\dag{}" in (rep.out / "tables.tex").read_text()
    assert "missed" in pd.read_csv(rep.out / "csv" / "organ_hd95.csv").columns


def test_a_binary_2d_dataset_says_pixels_and_class_and_shows_its_one_class_once(tmp_path, monkeypatch, one_thread):
    import torch
    from PIL import Image

    from bench.data.resolve import resolve_dataset
    from bench.engine.runner import execute
    from bench.engine.runs import RunSpec
    from bench.engine.settings import RunSettings
    from bench.protocol import load_protocol

    folder, rng = tmp_path / "polyps", np.random.default_rng(0)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i in range(6):  # a bright disc on noise, 0/255 masks
        yy, xx = np.mgrid[:40, :48]
        disc = (yy - rng.uniform(15, 25)) ** 2 + (xx - rng.uniform(18, 30)) ** 2 <= 100
        image = (rng.integers(0, 90, (40, 48)) + 150 * disc).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"p{i}.png")
        Image.fromarray((255 * disc).astype(np.uint8)).save(folder / "masks" / f"p{i}.png")
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    ds = resolve_dataset(str(folder), say=lambda *a, **k: None)
    protocol = load_protocol("smoke")
    for model in ("swinunet-nano", "unet"):
        out = execute(RunSpec(model, 0, 0.01, "protocol"), protocol, ds, RunSettings(results=tmp_path / "results"),
                      torch.device("cpu"), say=lambda *a, **k: None)
        assert out.status == "complete", out.message
    rep = build_report(tmp_path / "results", tmp_path / "out", n_boot=50)
    md = (rep.out / "report.md").read_text()
    assert "DSC (%) per class" in md and "HD95 in pixels" in md and "voxel" not in md and "organ" not in md
    dice = next(t for t in _organ_tables(tmp_path / "results") if t.key == "organ_dice")
    (name,) = ds.organs.values()
    assert dice.header == ["model", name, "seeds", "cases"]  # "mean" of one class is that class: shown once
    assert "one class: no separate mean" in dice.title


def _organ_tables(results: Path) -> list:
    loaded = load_runs(results)
    return [organ_table(loaded, "dice"), organ_table(loaded, "hd95")]


def test_the_fairness_line_names_the_threads_and_a_mix_of_cpu_families(sweep, tmp_path):
    results = _light_copy(sweep, tmp_path / "results")
    amd = results / "tiny3" / "smoke" / "unet" / "seed1"
    host = json.loads((amd.parent / "seed0" / "manifest.json").read_text())
    # a family no machine reports, so the test holds on whatever CPU made the sweep (the families are sorted)
    _edit_manifest(amd, cpu_vendor="OtherVendor", cpu="Other CPU 9000")
    res = bench_cli("report", "--results", str(results), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr  # pooled (the same recipe), but said so
    md = (tmp_path / "out" / "report.md").read_text()
    mine = " ".join(p for p in (host.get("cpu_vendor"), host.get("cpu")) if p) or "unknown"
    families = "; ".join(sorted([mine, "OtherVendor Other CPU 9000"]))
    assert f"(hash b906b8ec34f9, fp32, 1 thread on a CPU, pooled from 2 CPU families ({families}): " in md
    assert "their last digits may differ" in md

    from bench.protocol import load_protocol
    from bench.report.load import load_runs
    from bench.report.tables import fairness_note

    _edit_manifest(amd, cpu_vendor=host["cpu_vendor"], cpu=host["cpu"])
    assert "CPU families" not in fairness_note(load_runs(results))
    # a run made before `threads` was a key, with 2 threads: another recipe than smoke's 1 thread
    m = json.loads((amd / "manifest.json").read_text())
    _edit_manifest(amd, protocol={k: v for k, v in m["protocol"].items() if k != "threads"}, threads=2)
    with pytest.raises(Exception, match="runs differ in hash, threads"):
        load_runs(results)
    mixed = load_runs(results, allow_mixed=True)
    two = load_protocol("smoke").derive(threads=2).hash()
    assert {c["protocol_hash"] for c in mixed.cohorts} == {"b906b8ec34f9", two}
    assert f"hash {two}, fp32, 2 threads on a CPU" in fairness_note(mixed)


def test_bad_input_is_one_line_exit_2(sweep, tmp_path):
    res = bench_cli("report", "--results", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "no runs found" in res.stderr
    res = bench_cli("report", "--results", str(sweep / "results"), "--baseline", "nosuch", "--out", str(tmp_path))
    assert res.returncode == 2 and "swinunet, unet" in res.stderr


# --- the page in a real browser -------------------------------------------------------------



class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, list[dict]] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.setdefault(tag, []).append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.skipif(chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium); "
                                                "CI installs it")
def test_html_renders_in_headless_chromium(sweep):
    page = sweep / "out" / "report.html"
    res = browse(page, "--window-size=1366,900", "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = _Dom()
    dom.feed(res.stdout)
    text = " ".join(dom.text)
    assert len(dom.tags["table"]) >= 9
    assert text.count("swinunet") >= 5 and "convention synapse" in text and "hash b906b8ec34f9" in text
    images = dom.tags["img"]
    assert len(images) == len(PLOTS)
    assert all(img["src"].startswith("data:image/png;base64,") for img in images)
    assert "script" not in dom.tags and "link" not in dom.tags  # nothing to fetch, nothing to run
    assert not [a for t in dom.tags.values() for a in t if str(a.get("src", a.get("href", ""))).startswith("http")]
    assert len(dom.tags["details"]) == len(MODELS) * len(SEEDS)  # the run manifests

    shot = sweep / "out" / "screenshot.png"
    res = browse(page, "--window-size=1366,900", f"--screenshot={shot}")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert rgb.shape == (900, 1366, 3)
    dark = (rgb.max(axis=2) < 90)
    assert dark[:300].mean() > 0.005  # title, fairness line and the headline table are drawn as text
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    assert (spread > 60).sum() > 20_000  # the heatmap's colours: the embedded image is on screen


def test_plots_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from bench.report import plots as P

    (tmp_path / "box_dice.png").write_bytes(b"the plot of the last report")
    fig = Figure()
    fig.add_subplot().plot([0, 1])

    def half_then_full_disk(self, path, **kw):
        Path(path).write_bytes(b"\x89PNG half a plot")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        P.save(fig, tmp_path, "box_dice")
    assert (tmp_path / "box_dice.png").read_bytes() == b"the plot of the last report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box_dice.png"]  # no torn file, no temporary left
