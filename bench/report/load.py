"""Reading what runs wrote (manifests, metrics, training logs) and the fairness guard.

Nothing here trains or scores: the report is built from run folders alone. Runs whose numbers
are not comparable (another dataset, protocol hash or metric convention) form separate
*cohorts*; more than one cohort stops the report unless ``allow_mixed``, and then every model
is labelled with its cohort (``unet [smoke 8de840]``) so that nothing is pooled silently.

External runs (another tool's predictions scored by ``bench evaluate --pred``) have no protocol:
they join the cohort of the trained runs on the same dataset, split, convention and NSD tolerance,
and are labelled ``<name> (external)`` wherever they appear. Each run contributes the metric rows of
its own convention (or the one asked for) at its own NSD tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.engine.numerics import precision_of, protocol_hash_of, threads_of
from bench.engine.results import METRICS, TRAIN_LOG, read_manifest, recorded_evaluation, row_set
from bench.engine.runs import list_runs, parse_run_path
from bench.engine.validation import VALIDATION_LOG
from bench.errors import BenchError
from bench.protocol import Evaluation, evaluation_settings

# What must agree for two runs to be compared; the display name of each field. The CPU thread count
# is in the hash as well; a cohort names it (``threads``) because the fairness line shows it.
COHORT_FIELDS = {"dataset": "dataset", "fingerprint": "split", "protocol": "protocol",
                 "protocol_hash": "hash", "convention": "convention", "precision": "precision", "threads": "threads"}
EXTERNAL_TAG = " (external)"
# Measured during a run's evaluation (bench.engine.runner); absent from runs made before, and from external runs.
EVAL_FIGURES = ("eval_slices_per_second", "eval_ms_per_slice", "eval_batch_size", "eval_peak_host_memory_mb",
                "eval_peak_cuda_memory_mb")
RUN_COLUMNS = ["path", "arm", "model", "seed", "status", "error", *COHORT_FIELDS, "nsd_tolerance_mm", "cpu_family",
               "subset", "inference", "external", "pretrained", "weights",
               "parameters", "gflops", "train_images_per_second", "train_seconds", "wall_seconds",
               "iterations", "lr", "lr_source", "peak_host_memory_mb", "peak_cuda_memory_mb", *EVAL_FIGURES]


@dataclass
class Loaded:
    """The runs of one report: one row per run, the metrics of the usable ones, their manifests."""

    runs: pd.DataFrame  # RUN_COLUMNS; ``arm`` is the model name, with its cohort when mixed
    metrics: pd.DataFrame  # long rows of complete runs, ``model`` replaced by the arm
    manifests: dict[str, dict | None]  # run path -> manifest (None: unreadable, status "unreadable")
    cohorts: list[dict]
    mixed: bool
    organs: dict[int, str] = field(default_factory=dict)
    image2d: bool = False  # every run is of 2D images (pixels and classes, not voxels and organs)

    @property
    def complete(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "complete"]

    def arms(self) -> list[str]:
        """Arms with numbers, in name order."""
        return sorted(self.metrics["model"].unique()) if len(self.metrics) else []


def _row(path: Path, m: dict | None) -> dict:
    try:
        rid = parse_run_path(path)
    except BenchError:
        rid = None
    if m is None:  # torn manifest: still a row, never silently dropped
        return {"path": str(path), "model": rid.model if rid else path.parent.name, "seed": rid.seed if rid else -1,
                "status": "unreadable", "error": "manifest.json could not be parsed",
                "dataset": rid.dataset if rid else "?", "protocol": rid.protocol if rid else "?"}
    run = m.get("run") or {}
    ds = m.get("dataset") or {}
    return {
        "path": str(path), "model": run.get("model", m.get("model")), "seed": int(run.get("seed", m.get("seed", -1))),
        "status": m.get("status", "unknown"), "error": m.get("error"),
        "dataset": ds.get("name", run.get("dataset")), "fingerprint": ds.get("fingerprint"),
        "protocol": m.get("protocol_name") or run.get("protocol"), "protocol_hash": protocol_hash_of(m),
        "convention": m.get("convention"), "precision": precision_of(m), "threads": str(threads_of(m)),
        "cpu_family": _cpu_family(m), "subset": _subset(m), "inference": _inference(m),
        "external": m.get("kind") == "external",
        "nsd_tolerance_mm": _nsd_tolerance(m),
        "pretrained": m.get("pretrained", m.get("weights") is not None), "weights": m.get("weights"),
        **{k: m.get(k) for k in ("parameters", "gflops", "train_images_per_second", "train_seconds",
                                 "wall_seconds", "iterations", "lr", "lr_source", "peak_host_memory_mb",
                                 "peak_cuda_memory_mb", *EVAL_FIGURES)},
    }


def _cpu_family(m: dict) -> str | None:
    """Vendor and model of the CPU a run computed on (None for a run on a GPU, or another tool's)."""
    if m.get("kind") == "external" or not str(m.get("device", "")).startswith("cpu"):
        return None
    return " ".join(str(p) for p in (m.get("cpu_vendor"), m.get("cpu")) if p) or "unknown"


def _subset(m: dict) -> str:
    """The part of the test set the run scored, in words (``""``: all of it); see ``Evaluation.subset``."""
    try:
        return Evaluation.model_validate(recorded_evaluation(m)).subset()
    except ValueError:  # a manifest of other keys: its scores are still read, the subset is not said
        return ""


def _nsd_tolerance(m: dict) -> float:
    """The NSD tolerance of the run's own metric rows (2 mm, the default, where a manifest does not say)."""
    try:
        return float(recorded_evaluation(m).get("nsd_tolerance_mm", 2.0))
    except (TypeError, ValueError):
        return 2.0


def _inference(m: dict) -> str:
    """The run's inference-side options in words (``""``: none); see ``Evaluation.inference``."""
    ev = m.get("evaluation") or (m.get("protocol") or {}).get("evaluation") or {}
    try:
        return Evaluation.model_validate(ev).inference()
    except ValueError:
        return ""


def _join_trained(df: pd.DataFrame) -> pd.DataFrame:
    """External runs take the protocol (name, hash, precision, threads) of the trained runs scored on the same
    dataset, split, convention and cases, when those agree on one; otherwise they form their own cohort."""
    df = df.copy()
    ext = df["external"].fillna(False).astype(bool)
    for i in df.index[ext]:
        same = df[~ext & (df["dataset"] == df.at[i, "dataset"]) & (df["fingerprint"] == df.at[i, "fingerprint"])
                  & (df["convention"] == df.at[i, "convention"]) & (df["status"] != "unreadable")
                  & (df["subset"].fillna("") == (df.at[i, "subset"] or ""))  # scored on the same cases
                  & (df["nsd_tolerance_mm"] == df.at[i, "nsd_tolerance_mm"])]
        protocols = set(zip(same["protocol"].astype(str), same["protocol_hash"].astype(str),
                            same["precision"].astype(str), same["threads"].astype(str), strict=True))
        if len(protocols) == 1:
            df.loc[i, ["protocol", "protocol_hash", "precision", "threads"]] = list(protocols.pop())
    return df


def _cohort_key(row: pd.Series) -> tuple:
    return tuple(str(row[f]) for f in COHORT_FIELDS)


def _arm_labels(runs: pd.DataFrame) -> pd.Series:
    """The model name, followed by the cohort fields that differ between cohorts (when mixed)."""
    varying = [f for f in COHORT_FIELDS if runs[f].astype(str).nunique() > 1]

    def name(row: pd.Series) -> str:
        return str(row["model"]) + (EXTERNAL_TAG if bool(row.get("external")) else "")

    if not varying:
        return runs.apply(name, axis=1)

    def label(row: pd.Series) -> str:
        parts = [f"{COHORT_FIELDS[f]} {str(row[f])[:6]}" if f in ("protocol_hash", "fingerprint")
                 else threads_text(row[f]) if f == "threads" else str(row[f]) for f in varying]
        return f"{name(row)} [{' '.join(parts)}]"

    return runs.apply(label, axis=1)


def describe_cohorts(runs: pd.DataFrame) -> list[dict]:
    """One dict per cohort: its fields, the runs in it (model -> seeds) and the CPU families its CPU runs
    computed on (``cpu_families``; more than one: their last digits may differ)."""
    out: list[dict] = []
    if runs.empty:
        return out
    for key, group in runs.groupby(runs.apply(_cohort_key, axis=1), sort=True):
        members = {m: sorted(g["seed"].tolist()) for m, g in group.groupby("model")}
        subset = next((str(v) for v in group["subset"] if isinstance(v, str) and v), "")
        inference = next((str(v) for v in group.get("inference", ()) if isinstance(v, str) and v), "")
        families = sorted({str(f) for f in group["cpu_family"] if isinstance(f, str)}) if "cpu_family" in group \
            else []
        out.append(dict(zip(COHORT_FIELDS, key, strict=False)) | {"runs": members, "cpu_families": families,
                                                                "subset": subset, "inference": inference})
    return out


def threads_text(threads: object) -> str:
    """``2 threads``, ``1 thread`` (a CPU thread count as the report shows it)."""
    return f"{threads} thread{'' if str(threads) == '1' else 's'}"


def mismatch_message(cohorts: list[dict], hint: bool = True) -> str:
    """One line naming what differs and which runs sit on each side (and, with ``hint``, what to do)."""
    differ = [COHORT_FIELDS[f] for f in COHORT_FIELDS if len({c[f] for c in cohorts}) > 1]
    sides = []
    for c in cohorts:
        who = "; ".join(f"{m} seed{'s' if len(s) > 1 else ''} {','.join(map(str, s))}" for m, s in c["runs"].items())
        sides.append(f"{c['dataset']}/{c['protocol']} hash {c['protocol_hash']} {c['precision']} "
                     f"{threads_text(c['threads'])} convention {c['convention']} ({who})")
    text = f"runs differ in {', '.join(differ)} and are not comparable: " + " | ".join(sides)
    if hint:
        text += (". Select one with --dataset / --protocol / --convention, or pass --allow-mixed to show "
                 "them side by side, marked")
    return text


def load_runs(
    results: Path, runs: list[Path] | None = None, dataset: str | None = None, protocol: str | None = None,
    convention: str | None = None, allow_mixed: bool = False,
) -> Loaded:
    """Read the given run folders (default: every run under ``results``), filtered and checked.

    ``convention`` picks the metric rows to report (``bench evaluate`` can add rows of another
    convention to a run); by default each run's own. A complete run without rows of that
    convention becomes a ``no-metrics`` row with the command that adds them.
    """
    if convention is not None:
        evaluation_settings(convention=convention)  # the one check of a convention's name
    paths = [Path(p) for p in runs] if runs is not None else list_runs(results)
    if not paths:
        raise BenchError(f"no runs found under {results} (expected <dataset>/<protocol>/<model>/seed<k>/manifest.json)")
    manifests = {str(p): read_manifest(p) for p in paths}
    df = pd.DataFrame([_row(p, manifests[str(p)]) for p in paths]).reindex(columns=RUN_COLUMNS)
    df["external"] = df["external"].fillna(False).astype(bool)
    df = _selected(df, dataset, protocol)
    if convention is not None:  # failed runs have no numbers: they sit with the chosen convention
        df["convention"] = convention
    df = _join_trained(df)
    df = df.sort_values(["model", "seed"], kind="stable").reset_index(drop=True)
    frames = _metric_rows(df)
    known = df[df["status"] != "unreadable"]
    cohorts = describe_cohorts(known)
    mixed = len(cohorts) > 1
    if mixed and not allow_mixed:
        raise BenchError(mismatch_message(cohorts))
    df["arm"] = df["model"].astype(str) + df["external"].map({True: EXTERNAL_TAG, False: ""})
    if len(known):
        df.loc[known.index, "arm"] = _arm_labels(known)
    metrics = (pd.concat([rows.assign(model=df.loc[i, "arm"]) for i, rows in frames.items()], ignore_index=True)
               if frames else pd.DataFrame(columns=["model", "seed", "case", "label", "organ", "metric", "value"]))
    organs: dict[int, str] = {}
    for m in manifests.values():
        for k, v in ((m or {}).get("dataset") or {}).get("organs", {}).items():
            organs.setdefault(int(k), v)
    kept = {p: m for p, m in manifests.items() if p in set(df["path"])}
    # external runs record no preprocessing: the trained runs beside them say what the images are
    kinds = {(((m or {}).get("dataset") or {}).get("preprocessing") or {}).get("kind") for m in kept.values()}
    return Loaded(df, metrics, kept, cohorts, mixed, dict(sorted(organs.items())),
                  "image2d" in kinds and "volume" not in kinds)


def _selected(df: pd.DataFrame, dataset: str | None, protocol: str | None) -> pd.DataFrame:
    """The runs of ``--dataset`` and ``--protocol`` (external runs have no protocol: they stay)."""
    for name, value in (("dataset", dataset), ("protocol", protocol)):
        if value is not None:
            if value not in set(df[name]):
                raise BenchError(f"--{name} {value}: no runs; found {', '.join(sorted(map(str, set(df[name]))))}")
            df = df[(df[name] == value) | (df["external"] & (name == "protocol"))]
    return df


def _metric_rows(df: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Each complete run's metric rows of its convention; a run without them is marked ``no-metrics`` in ``df``."""
    frames: dict[int, pd.DataFrame] = {}
    for i, row in df.iterrows():
        if row["status"] != "complete":
            continue
        path = Path(row["path"]) / METRICS
        try:
            rows = pd.read_parquet(path)
        except Exception as e:  # missing or torn: the run is listed with the reason, not dropped
            df.loc[i, ["status", "error"]] = ["no-metrics", f"{METRICS} unreadable ({type(e).__name__}: {e})"]
            continue
        # the run's own NSD tolerance: rows `bench evaluate --nsd-tolerance` added beside them are not pooled in
        rows = row_set(rows, row["convention"], row["nsd_tolerance_mm"])
        if rows.empty:
            df.loc[i, ["status", "error"]] = ["no-metrics", f"{METRICS} has no rows of convention "
                                              f"{row['convention']}; add them with `bench evaluate "
                                              f"{row['path']} --convention {row['convention']}`"]
            continue
        frames[int(i)] = rows
    return frames


def train_logs(loaded: Loaded, name: str = TRAIN_LOG) -> pd.DataFrame:
    """train_log.csv (or ``name``) of every run that has one, with arm and seed columns (failed runs too)."""
    frames = []
    for r in loaded.runs.itertuples():
        path = Path(r.path) / name
        if path.exists():
            try:
                log = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                continue  # a torn log only costs its curve
            frames.append(log.assign(arm=r.arm, seed=r.seed, status=r.status))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def validation_logs(loaded: Loaded) -> pd.DataFrame:
    """validation_log.csv of runs that validated during training (``validation.during_run``)."""
    return train_logs(loaded, VALIDATION_LOG)
