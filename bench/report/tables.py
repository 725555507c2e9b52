"""The report's tables as data: formatted cells, the best values to bold, raw values for CSV.

Each ``Table`` carries a ``note`` (the fairness line: dataset, protocol, hash and numerics: precision
and, on a CPU, the thread count and any mix of CPU families; metric convention, seeds, pretrained
weights) that every rendering prints with it. Reductions come from ``bench.report.console`` (mean
over cases per seed, then mean +- sd over seeds) and ``bench.report.stats``; this module only
arranges and formats them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from bench.engine.metrics import REF_ONLY
from bench.engine.runs import split_lr
from bench.report.console import OVERALL, organ_mean_sd
from bench.report.load import COHORT_FIELDS, Loaded, threads_text

METRIC_NAMES = {"dice": "DSC (%)", "hd95": "HD95"}
HD_UNITS = {
    "synapse": "HD95 in voxels (the official convention ignores the spacing, although papers print 'mm')",
    "strict": "HD95 in mm (in pixels for images without a voxel spacing)",
}
HD_UNITS_2D = {  # 2D images: no voxels, and no spacing for the strict convention to use
    "synapse": "HD95 in pixels (the official convention ignores any spacing)",
    "strict": "HD95 in pixels (2D images record no pixel spacing)",
}


def _conventions(loaded: Loaded) -> list[str]:
    return sorted({str(c["convention"]) for c in loaded.cohorts})


def hd_unit(loaded: Loaded) -> str:
    """The distance unit of the cohorts' conventions, said plainly."""
    units = HD_UNITS_2D if loaded.image2d else HD_UNITS
    return "; ".join(units.get(c, f"HD95 in the units of convention {c}") for c in _conventions(loaded))


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


def _numerics_text(c: dict) -> str:
    """A cohort's numerics: hash, precision and, when it has runs on a CPU, their thread count and any
    mix of CPU families."""
    text = f"hash {c['protocol_hash']}, {c['precision']}"
    families = c.get("cpu_families") or []
    if not families:  # on a GPU the CPU threads do not change the numbers
        return text
    text += f", {threads_text(c['threads'])} on a CPU"
    if len(families) > 1:
        text += (f", pooled from {len(families)} CPU families ({'; '.join(families)}): float sums differ "
                 "between CPU families, so their last digits may differ")
    return text


def fairness_note(loaded: Loaded) -> str:
    """Dataset, protocol (name, hash, numerics), convention, seeds and pretrained weights, one line."""
    parts = []
    for c in loaded.cohorts:
        scored = f", scored on {c['subset']} only" if c.get("subset") else ""
        inferred = f", inference: {c['inference']}" if c.get("inference") else ""
        parts.append(f"dataset {c['dataset']} (split {str(c['fingerprint'])[:12]}), protocol {c['protocol']} "
                     f"({_numerics_text(c)}), convention {c['convention']}{scored}{inferred}")
    if loaded.mixed:
        parts = ["MIXED, not comparable: " + " | ".join(parts)]
    trained = loaded.complete[~loaded.complete["external"].astype(bool)] if "external" in loaded.complete \
        else loaded.complete
    seeds = {a: sorted(g["seed"].tolist()) for a, g in trained.groupby("arm", sort=True)}
    if seeds:
        parts.append(_seeds_text(seeds))
    external = external_sources(loaded)
    trained_by = trained_elsewhere(loaded)
    plain = {a: src for a, src in external.items() if a not in trained_by}
    if plain:
        parts.append("external runs (another tool's predictions, scored here under the same convention; "
                     "no protocol, training split or seeds apply): "
                     + ", ".join(f"{a} from {src}" for a, src in plain.items()))
    parts += trained_by.values()
    pre = {a: v for a, v in pretrained_by_arm(loaded).items() if a not in external}
    if pre:
        parts.append("pretrained: " + ", ".join(f"{a} {v}" for a, v in pre.items()))
    lrs = lr_by_arm(loaded, short=False)
    if lrs:
        texts = set(lrs.values())
        parts.append(f"lr {texts.pop()}" if len(texts) == 1 else
                     "lr per model: " + ", ".join(f"{a} {t}" for a, t in lrs.items()))
    return "; ".join(parts)


def trained_elsewhere(loaded: Loaded) -> dict[str, str]:
    """External arm -> what trained it, for runs whose manifest records it (``bench nnunet``): the tool, its
    recipe and budget, and whether it trained on the cases the trained runs train on."""
    out: dict[str, str] = {}
    if "external" not in loaded.runs:
        return out
    runs = loaded.complete
    held = {frozenset((loaded.manifests.get(r.path) or {}).get("validation_cases") or ())
            for r in runs[~runs["external"].astype(bool)].itertuples()}  # what the trained runs did not train on
    for r in runs[runs["external"].astype(bool)].itertuples():
        prov = (loaded.manifests.get(r.path) or {}).get("provenance") or {}
        if prov.get("tool") != "nnunetv2" or "train_cases" not in prov:
            continue
        budget = f"{prov.get('epochs') or '?'} epochs x {prov.get('iterations_per_epoch') or '?'} iterations"
        mine = frozenset(prov.get("held_out_cases") or ())
        n = len(prov["train_cases"])
        if held == {mine}:
            cases = f"the same {n} training cases as the trained runs"
        elif held:
            cases = (f"{n} training cases, not those of the trained runs (nnU-Net held out {len(mine)}, the "
                     f"trained runs {' / '.join(str(len(h)) for h in sorted(held, key=len))})")
        else:
            cases = f"{n} training cases"
        recipe = ", ".join(str(prov.get(k)) for k in ("base_trainer", "plans", "configuration"))
        out[r.arm] = (f"{r.arm} trained by nnU-Net v2 ({prov.get('version')}) with its own recipe ({recipe}, fold "
                      f"{prov.get('fold')}, {budget}, {prov.get('device')}) on {cases}, never on a test case; "
                      "predicted by nnU-Net, scored here")
    return out


def lr_text(value, source, short: bool = True) -> str:
    """An LR with where it came from: ``0.0118 (tuned, trial 3)`` (short) or the manifest's whole source."""
    src = str(source or "")
    if short:
        if src.startswith("protocol"):
            src = "protocol"
        elif src.startswith("study ") and " trial " in src:
            src = "tuned, trial " + src.rpartition(" trial ")[2]
        elif src == "flag --lr":
            src = "--lr"
    return f"{float(value):g}" + (f" ({src})" if src else "")


def lr_by_arm(loaded: Loaded, short: bool = True) -> dict[str, str]:
    """Trained arm -> the LR(s) its runs trained at, with their source (external runs have none)."""
    runs = loaded.runs[~loaded.runs["external"].astype(bool)] if "external" in loaded.runs else loaded.runs
    out = {}
    for arm, g in runs.groupby("arm", sort=True):
        texts = sorted({lr_text(v, src, short) for v, src in zip(g["lr"], g["lr_source"], strict=True)
                        if v is not None and v == v})
        if texts:
            out[str(arm)] = ", ".join(texts)
    return out


def external_sources(loaded: Loaded) -> dict[str, str]:
    """External arm -> the folder its predictions came from."""
    out: dict[str, str] = {}
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


MISSED = "†"  # marks an HD95 mean that counts missed organs as 0 (the synapse convention's value for them)


def noun(loaded: Loaded) -> str:
    """What a label is called: ``class`` on 2D image datasets, ``organ`` on volumes."""
    return "class" if loaded.image2d else "organ"


def missed_counts(loaded: Loaded) -> dict[tuple[str, str], int]:
    """(arm, organ) -> rows where the organ is in the reference and was not predicted, over cases and seeds,
    under the synapse convention (which scores their HD95 0); (arm, OVERALL) is the arm's total."""
    m = loaded.metrics
    if m.empty or "status" not in m:
        return {}
    rows = m[(m["metric"] == "hd95") & (m["status"] == REF_ONLY) & (m.get("convention", "synapse") == "synapse")]
    out = {(str(a), str(o)): int(n) for (a, o), n in rows.groupby(["model", "organ"]).size().items()}
    out |= {(str(a), OVERALL): int(n) for a, n in rows.groupby("model").size().items()}
    return out


def _label_columns(long: pd.DataFrame) -> list[str]:
    """The mean over labels, then each label; with a single label the mean is that label: shown once."""
    organs = long[["label", "organ"]].drop_duplicates().sort_values("label")["organ"].tolist()
    return organs[1:] if len(organs) == 2 and organs[0] == OVERALL else organs


def _best(values: dict[int, list[tuple[float, int, bool]]], higher: bool) -> set[tuple[int, int]]:
    """The best eligible cell of each column (ties share), when the column has more than one value."""
    bold = set()
    for j, vals in values.items():
        eligible = [(v, i) for v, i, ok in vals if ok]
        if len(vals) < 2 or not eligible:
            continue
        target = max(v for v, _ in eligible) if higher else min(v for v, _ in eligible)
        bold |= {(i, j) for v, i in eligible if v == target}
    return bold


def organ_table(loaded: Loaded, metric: str) -> Table:
    """Per model: the mean over organs and each organ, mean +- sd over seeds; seeds and cases. An HD95 mean
    that counts missed organs (0 under the synapse convention) is marked and never bolded as best."""
    long = organ_mean_sd(loaded.metrics, metric)
    scale = 100.0 if metric == "dice" else 1.0
    organs, arms = _label_columns(long), loaded.arms()
    counts = loaded.metrics.groupby("model").agg(seeds=("seed", "nunique"), cases=("case", "nunique"))
    missed = missed_counts(loaded) if metric == "hd95" else {}
    lrs = lr_by_arm(loaded)
    with_lr = len(set(lrs.values())) > 1  # the LR is what differs: say it beside the numbers
    extra = (["missed"] if missed else []) + (["lr"] if with_lr else [])
    header, rows = ["model", *organs, "seeds", "cases", *extra], []
    candidates: dict[int, list[tuple[float, int, bool]]] = {}  # column -> (value, row, may be bolded)
    for i, arm in enumerate(arms):
        cells = [arm]
        for j, organ in enumerate(organs, start=1):
            hit = long[(long["model"] == arm) & (long["organ"] == organ)]
            m, sd = (hit["mean"].iloc[0], hit["sd"].iloc[0]) if len(hit) else (math.nan, math.nan)
            mark = MISSED if missed.get((arm, organ)) else ""
            cells.append(num(m, 2, scale) + ("" if math.isnan(sd) else f" ± {num(sd, 2, scale)}") + mark)
            if not math.isnan(m):
                candidates.setdefault(j, []).append((round(m * scale, 2), i, not mark))
        cells += [str(counts.loc[arm, "seeds"]), str(counts.loc[arm, "cases"])]
        rows.append(cells + ([str(missed.get((arm, OVERALL), 0))] if missed else [])
                    + ([lrs.get(arm, "-")] if with_lr else []))
    what = noun(loaded)
    name, better = METRIC_NAMES.get(metric, metric), "higher" if metric == "dice" else "lower"
    overall = f"'{OVERALL}' = mean over {what}s; " if OVERALL in organs else f"one {what}: no separate mean; "
    title = (f"{name} per {what}: mean over cases per seed, then mean ± sd over seeds ({overall}{better} is better, "
             f"best in bold)") + (f"; {MISSED} = counts missed {what}s as 0 (0 = missed: the synapse convention's "
                                  f"HD95 of a {what} not predicted), never bolded; 'missed' = {what}s in the reference "
                                  "not predicted, over cases and seeds" if missed else "")
    note = fairness_note(loaded) + ("" if metric == "dice" else f"; {hd_unit(loaded)}")
    data = long[long["organ"].isin(organs)].merge(counts, left_on="model", right_index=True,
                                                  suffixes=("", "_runs")).rename(
        columns={"seeds": "seeds_with_value", "seeds_runs": "seeds"})
    data.insert(3, "metric", metric)
    data["unit"] = "fraction" if metric == "dice" else hd_unit(loaded)
    if missed:
        data["missed"] = [missed.get((str(a), str(o)), 0) for a, o in zip(data["model"], data["organ"], strict=True)]
    if with_lr:
        data["lr"] = data["model"].map(lr_by_arm(loaded, short=False))
    return Table(f"organ_{metric}", title, header, rows, note, _best(candidates, metric == "dice"),
                 data=_context_columns(loaded, data), numeric=set(range(1, len(header) - with_lr)))


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


def _compute_row(arm: str, g: pd.DataFrame, pretrained: str) -> dict:
    """One model's compute figures: sizes from any run, speeds the mean over its complete runs, memory the
    largest; a figure no run recorded (runs made before it was, external runs) is NaN."""
    ok = g[g["status"] == "complete"]
    src = ok if len(ok) else g
    lrs = sorted({f"{v:g} ({s})" for v, s in zip(g["lr"], g["lr_source"], strict=True) if v is not None and v == v})
    means = ("train_images_per_second", "train_seconds", "wall_seconds", "eval_slices_per_second",
             "eval_ms_per_slice")
    peaks = ("peak_host_memory_mb", "peak_cuda_memory_mb", "eval_peak_host_memory_mb", "eval_peak_cuda_memory_mb")
    return {"model": arm, "pretrained": pretrained, "parameters": _mean_of(src, "parameters"),
            "gflops": _mean_of(src, "gflops"), **{k: _mean_of(ok, k) for k in means},
            "eval_batch_size": _max_of(ok, "eval_batch_size"), **{k: _max_of(ok, k) for k in peaks},
            "lr": ", ".join(lrs), "complete": len(ok), "runs": len(g)}


def compute_table(loaded: Loaded) -> Table:
    """Per model: weights, size, cost, training speed and memory, and test-time speed and memory (measured
    during each run's evaluation); '-' for what a run did not record."""
    header = ["model", "pretrained", "parameters (M)", "GFLOPs", "train images/s", "train time (s)",
              "wall time per run (s)", "peak host memory (MB)", "peak CUDA memory (MB)", "eval slices/s",
              "eval ms/slice", "eval peak host memory (MB)", "eval peak CUDA memory (MB)", "lr", "runs complete"]
    rows, raw = [], []
    pre = pretrained_by_arm(loaded)
    for arm, g in loaded.runs.groupby("arm", sort=True):
        r = _compute_row(str(arm), g, pre[arm])
        raw.append(r)
        rows.append([r["model"], r["pretrained"], num(r["parameters"], 2, 1e-6), num(r["gflops"], 2),
                     num(r["train_images_per_second"], 2), num(r["train_seconds"], 1), num(r["wall_seconds"], 1),
                     num(r["peak_host_memory_mb"], 0), num(r["peak_cuda_memory_mb"], 0),
                     num(r["eval_slices_per_second"], 1), num(r["eval_ms_per_slice"], 2),
                     num(r["eval_peak_host_memory_mb"], 0), num(r["eval_peak_cuda_memory_mb"], 0),
                     r["lr"] or "-", f"{r['complete']} / {r['runs']}"])
    return Table("compute", "Compute: parameters, GFLOPs per image, training speed and time, peak memory (the "
                 "largest over a model's runs; host: PSS of the training process and its data workers; CUDA: "
                 "max_memory_allocated); test-time figures from each run's own evaluation: eval slices/s = "
                 "model forward passes at the protocol's evaluation batch, eval ms/slice = a native-size slice to "
                 "its labels (resizes included), eval peak memory = the same measures during evaluation only; "
                 "- when not recorded (runs made before these figures were, external runs)", header, rows,
                 fairness_note(loaded), data=pd.DataFrame(raw), numeric=set(range(2, 13)))


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
    return Table("statuses", f"Empty-mask statuses (seeds x cases x {noun(loaded)}s): the convention's rules decide "
                 "these values", ["model", *cols], rows, fairness_note(loaded),
                 data=counts.reset_index() if len(counts) else pd.DataFrame(), numeric=set(range(1, len(cols) + 1)))


def wilcoxon_table(loaded: Loaded, df: pd.DataFrame, metric: str) -> Table:
    scale = 100.0 if metric == "dice" else 1.0
    if metric == "dice":
        unit = "percentage points"
    else:
        unit = "pixels" if loaded.image2d else "voxels" if _conventions(loaded) == ["synapse"] else "mm or px"
    header = ["model", "baseline", noun(loaded), "pairs", f"median diff ({unit})", "W", "p", "p (Holm)"]
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
    header = ["position", "model", "mean rank", "position holds", "first", f"{noun(loaded)}s", "cases"]
    rows = [[str(r.position), r.model, num(r.mean_rank, 2), f"{100 * r.p_holds:.0f}%", f"{100 * r.p_first:.0f}%",
             str(r.organs), str(r.cases)] for r in df.itertuples()]
    title = (f"Ranking by mean rank of DSC over {noun(loaded)}s; how often each position holds over "
             f"{n_boot} bootstrap resamples of cases (seed {seed})")
    return Table("ranking", title, header, rows, fairness_note(loaded), data=df, numeric={0, 2, 3, 4, 5, 6})


def lr_pairs(loaded: Loaded) -> list[tuple[str, str]]:
    """(arm, baseline arm) for every arm at an LR that is not its protocol's (``unet@lr=tuned``) whose
    model also ran at the protocol's LR (``unet``) in the same cohort."""
    runs = loaded.complete[~loaded.complete["external"].astype(bool)]
    at_protocol, others = {}, []
    for arm, g in runs.groupby("arm", sort=True):
        base, tag = split_lr(str(g["model"].iloc[0]))
        key = (base, *(str(g[f].iloc[0]) for f in COHORT_FIELDS))
        if tag is None and all(str(src).startswith("protocol") for src in g["lr_source"]):
            at_protocol[key] = str(arm)
        elif tag is not None:
            others.append((str(arm), key))
    return [(arm, at_protocol[key]) for arm, key in others if key in at_protocol]


def _verdict(r) -> str:
    if r.p_holm == r.p_holm and r.p_holm < 0.05:
        return f"the LR matters: {'higher' if r.median_diff > 0 else 'lower'} DSC at this LR"
    smallest = 2.0 ** (1 - r.n) if r.n else 1.0  # the exact two-sided test's least p with n pairs
    if smallest >= 0.05:
        return f"no test can decide with {r.n} case{'s' if r.n != 1 else ''} (smallest possible p {smallest:.2g})"
    return "no evidence that the LR matters"


def lr_effect_table(loaded: Loaded, df: pd.DataFrame) -> Table:
    """Is the LR to blame? Each model at another LR against itself at its protocol's LR
    (``stats.paired_tests`` over ``lr_pairs``)."""
    lrs = lr_by_arm(loaded)
    header = ["model", "lr", "against", "protocol lr", "cases", "DSC % at lr", "DSC % at protocol lr",
              "median diff (pp)", "W", "p", "p (Holm)", "verdict"]
    rows = [[r.model, lrs.get(r.model, "-"), r.baseline, lrs.get(r.baseline, "-"), str(r.n), num(r.mean, 2, 100),
             num(r.mean_baseline, 2, 100), num(r.median_diff, 2, 100), num(r.statistic, 1), pval(r.p),
             pval(r.p_holm), _verdict(r)] for r in df.itertuples()]
    bold = {(i, 10) for i, r in enumerate(df.itertuples()) if r.p_holm == r.p_holm and r.p_holm < 0.05}
    title = ("Is the LR to blame? Each model at another learning rate against the same model at its protocol's "
             "LR (same protocol, split and seeds): mean DSC over organs per test case, paired Wilcoxon "
             "signed-rank test (pairs are test cases, seeds averaged first; diff = lr - protocol lr), "
             "Holm-corrected over the table; p < 0.05 after correction in bold")
    data = df.assign(lr=df["model"].map(lr_by_arm(loaded, short=False)),
                     protocol_lr=df["baseline"].map(lr_by_arm(loaded, short=False)))
    return Table("lr_effect", title, header, rows, fairness_note(loaded), bold, data=data,
                 numeric={4, 5, 6, 7, 8, 9, 10})
