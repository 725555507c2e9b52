"""The report's plots, each saved as PNG and SVG: box + strip plots, heatmap, learning curves, LR search.

Figures are built with matplotlib's object API (no pyplot, no global state, no display) and
seaborn, and saved without dates or random ids, so the same runs give the same files.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from bench.files import atomic_write
from bench.report.console import OVERALL

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

RC: dict[RcKeyType, Any] = {"svg.hashsalt": "segbench", "svg.fonttype": "path", "font.size": 10, "axes.titlesize": 11}
DPI = 110


@dataclass
class Plot:
    key: str
    title: str
    caption: str
    png: Path


def palette(arms: list[str]) -> dict[str, tuple]:
    """One fixed colour per model, shared by every plot of the report."""
    return dict(zip(arms, sns.color_palette("tab10", max(len(arms), 1)), strict=False))


def save(fig: Figure, out: Path, key: str) -> Path:
    """``key``.png and ``key``.svg, each written whole or not at all (a temporary file renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(RC):
        atomic_write(out / f"{key}.png", lambda p: fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight",
                                                               metadata={"Software": None}))
        atomic_write(out / f"{key}.svg", lambda p: fig.savefig(p, format="svg", bbox_inches="tight",
                                                               metadata={"Date": None, "Creator": None}))
    return out / f"{key}.png"


def _figure(w: float, h: float) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(w, h), layout="constrained")


def box_strip(cases: pd.DataFrame, metric: str, arms: list[str], out: Path, noun: str = "organ") -> Plot | None:
    """Per organ (``noun``: class on 2D images), one box (quartiles, no fliers) per model with each test case as a
    dot (seeds averaged)."""
    df = cases[cases["label"] != 0].dropna(subset=["value"]).copy()
    if df.empty:
        return None
    scale = 100.0 if metric == "dice" else 1.0
    df["value"] *= scale
    name = "DSC (%)" if metric == "dice" else "HD95"
    organs = df.sort_values("label")["organ"].unique().tolist()
    fig = _figure(max(7.0, 1.0 + 0.55 * len(organs) * max(len(arms), 1) ** 0.5 * 1.6), 4.2)
    ax = fig.add_subplot()
    kw = dict(data=df, x="organ", y="value", hue="model", order=organs, hue_order=arms, ax=ax,
              palette=palette(arms))
    with matplotlib.rc_context(RC):
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11 a deprecated argument
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            sns.boxplot(showfliers=False, boxprops={"alpha": 0.45}, linewidth=0.9, **kw)
        state = np.random.get_state()  # seaborn jitters with numpy's global generator: seed it, then restore
        np.random.seed(0)
        try:
            sns.stripplot(dodge=True, size=3.5, jitter=0.15, edgecolor="black", linewidth=0.3, legend=False, **kw)
        finally:
            np.random.set_state(state)
    ax.set(xlabel="", ylabel=name, title=f"{name} per {noun} and model (dots: test cases, seeds averaged)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(title="model", fontsize=8, title_fontsize=8, loc="best")
    key = f"box_{metric}"
    return Plot(key, f"{name} per {noun}", f"Box (quartiles) and strip plot of {name} per test case, "
                "the mean over seeds.", save(fig, out, key))


def heatmap(table: pd.DataFrame, out: Path, noun: str = "organ") -> Plot | None:
    """model x organ mean DSC (%) (mean over cases per seed, then over seeds); a single class once, not twice."""
    if table.empty:
        return None
    single = table.shape[1] == 2  # the mean over one class is that class
    table = table.iloc[:, 1:] if single else table
    fig = _figure(max(6.0, 1.2 + 0.75 * table.shape[1]), 1.4 + 0.45 * table.shape[0])
    ax = fig.add_subplot()
    with matplotlib.rc_context(RC):
        sns.heatmap(table * 100, annot=True, fmt=".1f", vmin=0, vmax=100, cmap="viridis", ax=ax,
                    cbar_kws={"label": "DSC (%)"}, linewidths=0.5, annot_kws={"fontsize": 8})
    ax.set(xlabel="", ylabel="", title=f"Mean DSC (%) per model and {noun}")
    ax.tick_params(axis="x", rotation=30)
    ax.tick_params(axis="y", rotation=0)
    mean = "" if single else f"; '{OVERALL}' is the mean over {noun}s"
    return Plot("heatmap_dice", "DSC heatmap", f"Mean DSC (%) per model and {noun}{mean}.",
                save(fig, out, "heatmap_dice"))


def learning_curves(logs: pd.DataFrame, out: Path, validation: pd.DataFrame | None = None) -> Plot | None:
    """Training loss (raw and a moving mean) and learning rate against iteration, one line per run;
    with ``validation`` rows (runs that validated during training), a third panel of validation DSC."""
    if logs.empty or not {"iteration", "loss", "lr"} <= set(logs.columns):
        return None
    val = validation if validation is not None and {"iteration", "dice"} <= set(validation.columns) else None
    arms = sorted(logs["arm"].unique())
    colors = palette(arms)
    fig = _figure(15.5 if val is not None else 10.5, 3.8)
    axes = fig.subplots(1, 3 if val is not None else 2)
    ax_loss, ax_lr = axes[0], axes[1]
    for (arm, seed), g in logs.groupby(["arm", "seed"], sort=True):
        g = g.sort_values("iteration")
        window = max(1, len(g) // 50)
        ax_loss.plot(g["iteration"], g["loss"], color=colors[arm], alpha=0.25, linewidth=0.7)
        ax_loss.plot(g["iteration"], g["loss"].rolling(window, min_periods=1).mean(), color=colors[arm],
                     linewidth=1.4, label=f"{arm} seed {seed}" + ("" if g["status"].iloc[0] == "complete"
                                                                 else f" ({g['status'].iloc[0]})"))
        ax_lr.plot(g["iteration"], g["lr"], color=colors[arm], linewidth=1.2)
    ax_loss.set(xlabel="iteration", ylabel="training loss (CE + Dice)", title="Loss")
    ax_lr.set(xlabel="iteration", ylabel="learning rate", title="Learning rate")
    ax_loss.legend(fontsize=7)
    caption = ("Training loss (faint: per iteration; solid: moving mean) and learning rate against iteration, "
               "one line per run.")
    if val is not None:
        for (arm, _seed), g in val.groupby(["arm", "seed"], sort=True):
            g = g.sort_values("iteration")
            axes[2].plot(g["iteration"], 100 * g["dice"], marker="o", markersize=3, color=colors.get(arm, "gray"))
        axes[2].set(xlabel="iteration", ylabel="validation DSC (%)", title="Validation (held-out training cases)")
        caption += " Right: mean foreground DSC on the held-out training cases (validation.during_run)."
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return Plot("learning_curves", "Learning curves", caption, save(fig, out, "learning_curves"))


def lr_ticks(lo: float, hi: float) -> list[float]:
    """Plain-number ticks for a log LR axis over [lo, hi]: 1-2-5 steps (finer for a narrow range, coarser
    for a wide one), between 3 and 8 of them, so labels never run into each other."""
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    options = [[m * 10.0 ** e for e in decades for m in subs if lo <= m * 10.0 ** e <= hi]
               for subs in ((1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1,))]
    fits = [t for t in options if 3 <= len(t) <= 8]
    if fits:
        return fits[0]
    if len(options[0]) < 3:  # narrower than the finest steps: round points spread evenly on the log scale
        return sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi, 4)})
    return options[-1][:: max(1, len(options[-1]) // 6)]


def set_lr_ticks(ax, lo: float, hi: float) -> None:
    """A log LR axis labelled with ``lr_ticks`` only (no minor labels to collide with them)."""
    ticks = lr_ticks(lo, hi)
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def read_study(path: Path) -> pd.DataFrame | None:
    """One LR-search study CSV, or None when it does not have the expected columns.

    ``bench tune`` writes ``<results>/tune/<study>/trials.csv``; a plain ``<results>/tune/<name>.csv``
    is read too. One row per trial, columns (``optuna``'s ``trials_dataframe()`` names work too):

    - ``number`` (or ``trial``): the trial number, from 0;
    - ``lr`` (or ``params_lr``): the learning rate tried;
    - ``value``: the objective (validation DSC), empty for trials that did not complete; higher
      is better unless a ``direction`` column says ``minimize``;
    - ``state``: ``COMPLETE``, ``PRUNED``, ``FAIL`` or ``RUNNING`` (only complete trials count
      for the best-so-far line);
    - optional ``study``: the study's name (else the folder's or file's name).
    """
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    df = df.rename(columns={"trial": "number", "params_lr": "lr"})
    if not {"number", "lr", "value", "state"} <= set(df.columns) or df.empty:
        return None
    df["state"] = df["state"].astype(str).str.upper().str.replace("TRIALSTATE.", "", regex=False)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["lr"] = pd.to_numeric(df["lr"], errors="coerce")
    if "study" not in df:
        df["study"] = path.parent.name if path.name == "trials.csv" else path.stem
    return df.sort_values("number")


def _study_signal(path: Path) -> tuple[float | None, str | None]:
    """The untrained model's score and the verdict (``none``, ``weak``, ``ok``) that ``bench tune`` wrote
    beside a study's trials.csv (study.json); (None, None) for a study without them."""
    try:
        info = json.loads((path.parent / "study.json").read_text()) if path.name == "trials.csv" else {}
    except (OSError, ValueError):
        return None, None
    untrained = info.get("untrained_dsc")
    return (float(untrained) if isinstance(untrained, int | float) else None), info.get("signal")


def study_files(results: Path, hashes: set[str]) -> list[Path]:
    """Study CSVs under ``<results>/tune/``, less those whose default name (``...-<protocol hash>``)
    names a protocol other than the report's; a folder without studies gives none, quietly."""
    tune = Path(results) / "tune"
    if not tune.is_dir():
        return []
    out = []
    for path in sorted([*tune.glob("*.csv"), *tune.glob("*/trials.csv")]):
        name = path.parent.name if path.name == "trials.csv" else path.stem
        found = re.search(r"-([0-9a-f]{12})$", name)
        if found is None or not hashes or found.group(1) in hashes:
            out.append(path)
    return out


def lr_search(results: Path, out: Path, hashes: frozenset[str] | set[str] = frozenset()) -> list[Plot]:
    """One figure per study: the search history and LR vs score; nothing when there is no study."""
    plots = []
    tune = Path(results) / "tune"
    for path in study_files(results, set(hashes)):
        df = read_study(path)
        if df is None:
            continue
        study = str(df["study"].iloc[0])
        done = df[df["state"] == "COMPLETE"].dropna(subset=["value", "lr"])
        minimize = "direction" in df and str(df["direction"].iloc[0]).lower().startswith("min")
        fig = _figure(10.5, 3.6)
        ax_h, ax_lr = fig.subplots(1, 2)
        other = df[df["state"] != "COMPLETE"]
        ax_h.scatter(done["number"], done["value"], s=18, color="tab:blue", label="complete")
        if len(other):
            y = other["value"].fillna(other.get("last_value", pd.Series(dtype=float)))
            ax_h.scatter(other["number"], y, s=18, marker="x", color="grey", label="pruned / failed")
        untrained, verdict = _study_signal(path)
        if len(done):
            best = done["value"].cummin() if minimize else done["value"].cummax()
            ax_h.step(done["number"], best, where="post", color="tab:red", label="best so far")
            ax_lr.scatter(done["lr"], done["value"], s=18, color="tab:blue")
            top = done.loc[done["value"].idxmin() if minimize else done["value"].idxmax()]
            if verdict != "none":  # a study without signal names no winner
                ax_lr.axvline(top["lr"], color="tab:red", linestyle="--", linewidth=1,
                              label=f"best lr {top['lr']:.3g}")
        for ax in (ax_h, ax_lr) if untrained is not None else ():
            ax.axhline(untrained, color="grey", linestyle=":", linewidth=1.2, label=f"untrained model {untrained:.4f}")
        if len(done) or untrained is not None:
            ax_lr.legend(fontsize=7)
        flag = " (NO SIGNAL: no trial beat the untrained model)" if verdict == "none" else ""
        ax_h.set(xlabel="trial", ylabel="objective", title=f"Search history: {study}{flag}")
        ax_h.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_h.legend(fontsize=7)
        ax_lr.set(xscale="log", xlabel="learning rate", ylabel="objective", title="Learning rate vs objective")
        tried = df["lr"].dropna()
        if len(tried) and tried.min() < tried.max():
            set_lr_ticks(ax_lr, float(tried.min()), float(tried.max()))
        rel = str(path.relative_to(tune).with_suffix(""))
        key = "lr_search_" + re.sub(r"[^A-Za-z0-9_-]", "_", rel.removesuffix("/trials"))
        plots.append(Plot(key, f"LR search: {study}{flag}", f"Trials of study {study} ({len(df)} trials, "
                          f"{len(done)} complete): objective per trial with the best so far, and against the "
                          "learning rate (log scale)" + (", with the untrained model's score, the floor a trial "
                          "must beat" if untrained is not None else "") + ".", save(fig, out, key)))
    return plots
