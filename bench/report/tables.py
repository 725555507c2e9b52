"""The report's tables as data: formatted cells, the best values to bold, raw values for CSV.

Each ``Table`` carries a ``note`` (the fairness line: dataset, protocol and hash, metric
convention, seeds, pretrained weights) that every rendering prints with it. Reductions come
from ``bench.report.console`` (mean over cases per seed, then mean +- sd over seeds) and
``bench.report.stats``; this module only arranges and formats them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from bench.report.console import OVERALL, organ_mean_sd
from bench.report.load import Loaded

METRIC_NAMES = {"dice": "DSC (%)", "hd95": "HD95"}
HD_UNITS = {
    "synapse": "HD95 in voxels (the official convention ignores the spacing, although papers print 'mm')",
    "strict": "HD95 in mm (in pixels for images without a voxel spacing)",
}


def _conventions(loaded: Loaded) -> list[str]:
    return sorted({str(c["convention"]) for c in loaded.cohorts})


def hd_unit(loaded: Loaded) -> str:
    """The distance unit of the cohorts' conventions, said plainly."""
    return "; ".join(HD_UNITS.get(c, f"HD95 in the units of convention {c}") for c in _conventions(loaded))


@dataclass
class Table:
    key: str  # file stem and HTML anchor
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to bold
    row_class: list[str] = field(default_factory=list)  # per row, e.g. "bad" for a failed run
    data: pd.DataFrame | None = None  # raw values, written as CSV
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    links: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, column) -> href (HTML only)


def num(v, digits: int = 2, scale: float = 1.0) -> str:
    """A number for a table; '-' for a missing one."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * scale:.{digits}f}"


def pval(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _seeds_text(seeds: dict[str, list[int]]) -> str:
    lists = {tuple(s) for s in seeds.values()}
    if len(lists) == 1:
        return "seeds " + ", ".join(map(str, next(iter(lists))))
    return "seeds " + "; ".join(f"{a} {','.join(map(str, s))}" for a, s in seeds.items())


def pretrained_by_arm(loaded: Loaded) -> dict[str, str]:
    out = {}
    for arm, g in loaded.runs.groupby("arm", sort=True):
        if "external" in g and g["external"].astype(bool).all():
            out[arm] = "external"  # trained elsewhere: its weights are not known here
            continue
        flags = {bool(v) for v in g["pretrained"] if v is not None and v == v}
        out[arm] = "mixed" if len(flags) > 1 else ("yes" if flags == {True} else "no")
    return out


def fairness_note(loaded: Loaded) -> str:
    """Dataset, protocol (name and hash), convention, seeds and pretrained weights, one line."""
    parts = []
    for c in loaded.cohorts:
        parts.append(f"dataset {c['dataset']} (split {str(c['fingerprint'])[:12]}), protocol {c['protocol']} "
                     f"(hash {c['protocol_hash']}, {c['precision']}), convention {c['convention']}")
    if loaded.mixed:
        parts = ["MIXED, not comparable: " + " | ".join(parts)]
    trained = loaded.complete[~loaded.complete["external"].astype(bool)] if "external" in loaded.complete \
        else loaded.complete
    seeds = {a: sorted(g["seed"].tolist()) for a, g in trained.groupby("arm", sort=True)}
    if seeds:
        parts.append(_seeds_text(seeds))
    external = external_sources(loaded)
    if external:
        parts.append("external runs (another tool's predictions, scored here under the same convention; "
                     "no protocol, training split or seeds apply): "
                     + ", ".join(f"{a} from {src}" for a, src in external.items()))
    pre = {a: v for a, v in pretrained_by_arm(loaded).items() if a not in external}
    if pre:
        parts.append("pretrained: " + ", ".join(f"{a} {v}" for a, v in pre.items()))
    return "; ".join(parts)


def external_sources(loaded: Loaded) -> dict[str, str]:
    """External arm -> the folder its predictions came from."""
    out = {}
    if "external" not in loaded.runs:
        return out
    for r in loaded.runs[loaded.runs["external"].astype(bool)].itertuples():
        m = loaded.manifests.get(r.path) or {}
        out[r.arm] = str((m.get("source") or {}).get("predictions", "?"))
    return out


def _context_columns(loaded: Loaded, df: pd.DataFrame) -> pd.DataFrame:
    """Raw CSV rows carry their run context as columns (a CSV has no caption)."""
    info = loaded.complete.groupby("arm").first()
    for col in ("dataset", "protocol", "protocol_hash", "convention"):
        df[col] = df["model"].map(info[col]) if "model" in df and len(info) else None
    df["pretrained"] = df["model"].map(pretrained_by_arm(loaded)) if "model" in df else None
    return df


def organ_table(loaded: Loaded, metric: str) -> Table:
    """Per model: the mean over organs and each organ, mean +- sd over seeds; seeds and cases."""
    long = organ_mean_sd(loaded.metrics, metric)
    scale = 100.0 if metric == "dice" else 1.0
    organs = long[["label", "organ"]].drop_duplicates().sort_values("label")["organ"].tolist()
    arms = loaded.arms()
    counts = loaded.metrics.groupby("model").agg(seeds=("seed", "nunique"), cases=("case", "nunique"))
    header, rows = ["model", *organs, "seeds", "cases"], []
    best: dict[int, list[tuple[float, int]]] = {}
    for i, arm in enumerate(arms):
        cells = [arm]
        for j, organ in enumerate(organs, start=1):
            hit = long[(long["model"] == arm) & (long["organ"] == organ)]
            m, sd = (hit["mean"].iloc[0], hit["sd"].iloc[0]) if len(hit) else (math.nan, math.nan)
            cells.append(num(m, 2, scale) + ("" if math.isnan(sd) else f" ± {num(sd, 2, scale)}"))
            if not math.isnan(m):
                best.setdefault(j, []).append((round(m * scale, 2), i))
        cells += [str(counts.loc[arm, "seeds"]), str(counts.loc[arm, "cases"])]
        rows.append(cells)
    bold = set()
    for j, vals in best.items():
        target = max(v for v, _ in vals) if metric == "dice" else min(v for v, _ in vals)
        bold |= {(i, j) for v, i in vals if v == target and len(vals) > 1}
    name = METRIC_NAMES.get(metric, metric)
    better = "higher" if metric == "dice" else "lower"
    title = (f"{name} per organ: mean over cases per seed, then mean ± sd over seeds "
             f"('{OVERALL}' = mean over organs; {better} is better, best in bold)")
    note = fairness_note(loaded) + ("" if metric == "dice" else f"; {hd_unit(loaded)}")
    data = long.merge(counts, left_on="model", right_index=True, suffixes=("", "_runs")).rename(
        columns={"seeds": "seeds_with_value", "seeds_runs": "seeds"})
    data.insert(3, "metric", metric)
    data["unit"] = "fraction" if metric == "dice" else hd_unit(loaded)
    return Table(f"organ_{metric}", title, header, rows, note, bold, data=_context_columns(loaded, data),
                 numeric=set(range(1, len(header))))


def per_case_frame(loaded: Loaded) -> pd.DataFrame:
    """One row per (model, seed, case, organ): every metric as a column, raw values."""
    m = loaded.metrics
    if m.empty:
        return pd.DataFrame()
    idx = [c for c in ("dataset", "protocol", "protocol_hash", "convention", "model", "seed", "case", "label",
                       "organ", "status") if c in m]
    wide = m.set_index([*idx, "metric"])["value"].unstack("metric").reset_index()
    wide.columns.name = None
    return wide.sort_values(["model", "seed", "case", "label"], kind="stable").reset_index(drop=True)


def _mean_of(g: pd.DataFrame, col: str):
    v = pd.to_numeric(g[col], errors="coerce").dropna()
    return v.mean() if len(v) else math.nan


def _max_of(g: pd.DataFrame, col: str):
    v = pd.to_numeric(g[col], errors="coerce").dropna()
    return v.max() if len(v) else math.nan


def compute_table(loaded: Loaded) -> Table:
    """Per model: weights, size, cost and speed (means over its complete runs)."""
    header = ["model", "pretrained", "parameters (M)", "GFLOPs", "train images/s", "train time (s)",
              "wall time per run (s)", "peak host memory (MB)", "peak CUDA memory (MB)", "lr", "runs complete"]
    rows, raw = [], []
    pre = pretrained_by_arm(loaded)
    for arm, g in loaded.runs.groupby("arm", sort=True):
        ok = g[g["status"] == "complete"]
        src = ok if len(ok) else g
        lrs = sorted({f"{v:g} ({s})" for v, s in zip(g["lr"], g["lr_source"], strict=True)
                      if v is not None and v == v})
        r = {"model": arm, "pretrained": pre[arm], "parameters": _mean_of(src, "parameters"),
             "gflops": _mean_of(src, "gflops"), "train_images_per_second": _mean_of(ok, "train_images_per_second"),
             "train_seconds": _mean_of(ok, "train_seconds"), "wall_seconds": _mean_of(ok, "wall_seconds"),
             "peak_host_memory_mb": _max_of(ok, "peak_host_memory_mb"),
             "peak_cuda_memory_mb": _max_of(ok, "peak_cuda_memory_mb"), "lr": ", ".join(lrs),
             "complete": len(ok), "runs": len(g)}
        raw.append(r)
        rows.append([arm, r["pretrained"], num(r["parameters"], 2, 1e-6), num(r["gflops"], 2),
                     num(r["train_images_per_second"], 2), num(r["train_seconds"], 1), num(r["wall_seconds"], 1),
                     num(r["peak_host_memory_mb"], 0), num(r["peak_cuda_memory_mb"], 0),
                     r["lr"] or "-", f"{len(ok)} / {len(g)}"])
    return Table("compute", "Compute: parameters, GFLOPs per image, training speed and time, peak memory (the "
                 "largest over a model's runs; host: PSS of the training process and its data workers; CUDA: "
                 "max_memory_allocated); - when not recorded", header, rows, fairness_note(loaded),
                 data=pd.DataFrame(raw), numeric={2, 3, 4, 5, 6, 7, 8})


def runs_table(loaded: Loaded) -> Table:
    """Every run, failed ones included: a failure is a row, not a gap."""
    header = ["model", "seed", "status", "wall time (s)", "error"]
    rows, cls = [], []
    for r in loaded.runs.itertuples():
        err = str(r.error) if r.error not in (None, "") and r.error == r.error else ""
        rows.append([r.arm, str(r.seed), r.status, num(r.wall_seconds, 1), err[:300] + ("…" if len(err) > 300 else "")])
        cls.append("" if r.status == "complete" else "bad")
    data = loaded.runs[["arm", "model", "seed", "status", "error", "path", "dataset", "protocol", "protocol_hash",
                        "convention", "wall_seconds"]]
    links = {(i, 1): f"#{manifest_anchor(r.arm, r.seed)}" for i, r in enumerate(loaded.runs.itertuples())}
    return Table("runs", "Runs: every run found, with its status (failed and diverged runs are not in the numbers)",
                 header, rows, fairness_note(loaded), row_class=cls, data=data, numeric={1, 3}, links=links)


def manifest_anchor(arm: str, seed: int) -> str:
    return "manifest-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{arm}-seed{seed}")


def status_table(loaded: Loaded) -> Table:
    """How often each empty-mask rule applied (rows over seeds x cases x organs, DSC rows)."""
    d = loaded.metrics[loaded.metrics["metric"] == "dice"]
    counts = d.groupby(["model", "status"]).size().unstack(fill_value=0) if len(d) and "status" in d else pd.DataFrame()
    cols = list(counts.columns)
    rows = [[arm, *[str(int(counts.loc[arm, c])) for c in cols]] for arm in counts.index]
    return Table("statuses", "Empty-mask statuses (seeds x cases x organs): the convention's rules decide "
                 "these values", ["model", *cols], rows, fairness_note(loaded),
                 data=counts.reset_index() if len(counts) else pd.DataFrame(), numeric=set(range(1, len(cols) + 1)))


def wilcoxon_table(loaded: Loaded, df: pd.DataFrame, metric: str) -> Table:
    scale = 100.0 if metric == "dice" else 1.0
    if metric == "dice":
        unit = "percentage points"
    else:
        unit = "voxels" if _conventions(loaded) == ["synapse"] else "mm or px"
    header = ["model", "baseline", "organ", "pairs", f"median diff ({unit})", "W", "p", "p (Holm)"]
    rows = [[r.model, r.baseline, r.organ, str(r.n), num(r.median_diff, 2, scale), num(r.statistic, 1),
             pval(r.p), pval(r.p_holm)] for r in df.itertuples()]
    bold = {(i, 7) for i, r in enumerate(df.itertuples()) if r.p_holm == r.p_holm and r.p_holm < 0.05}
    title = (f"Paired Wilcoxon signed-rank tests of {METRIC_NAMES.get(metric, metric)} against the baseline: "
             "pairs are test cases (seeds averaged first); diff = model - baseline; Holm-corrected over "
             "the whole table; p < 0.05 after correction in bold; with n pairs the smallest possible p is 2^(1-n)")
    return Table(f"wilcoxon_{metric}", title, header, rows, fairness_note(loaded), bold, data=df,
                 numeric={3, 4, 5, 6, 7})


def bootstrap_table(loaded: Loaded, df: pd.DataFrame) -> Table:
    header = ["model", "cases", "mean DSC (%)", "95% CI (%)"]
    rows = [[r.model, str(r.n), num(r.mean, 2, 100), f"{num(r.lo, 2, 100)} – {num(r.hi, 2, 100)}"]
            for r in df.itertuples()]
    n_boot, seed = (int(df["n_boot"].iloc[0]), int(df["seed"].iloc[0])) if len(df) else (0, 0)
    title = (f"Bootstrap 95% CI of each model's mean DSC over test cases (percentile, {n_boot} resamples "
             f"of cases, seed {seed})")
    return Table("bootstrap", title, header, rows, fairness_note(loaded), data=df, numeric={1, 2, 3})


def ranking_table(loaded: Loaded, df: pd.DataFrame, n_boot: int, seed: int) -> Table:
    header = ["position", "model", "mean rank", "position holds", "first", "organs", "cases"]
    rows = [[str(r.position), r.model, num(r.mean_rank, 2), f"{100 * r.p_holds:.0f}%", f"{100 * r.p_first:.0f}%",
             str(r.organs), str(r.cases)] for r in df.itertuples()]
    title = ("Ranking by mean rank of DSC over organs; how often each position holds over "
             f"{n_boot} bootstrap resamples of cases (seed {seed})")
    return Table("ranking", title, header, rows, fairness_note(loaded), data=df, numeric={0, 2, 3, 4, 5, 6})
