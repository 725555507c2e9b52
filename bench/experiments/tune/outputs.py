"""What the learning-rate search leaves for the report: per study, the trials table and two plots.

``<results>/tune/<study>/trials.csv`` (one row per trial: number, state, lr, value, other
parameters, last intermediate score, error, times), ``history.png`` (score per trial with the
best so far) and ``lr_vs_score.png`` (score against the learning rate, failures marked; both with the untrained
model's score, the floor a trial must beat), and ``study.json`` (the study's name, storage,
attributes and ``signal``: ``none``, ``weak`` or ``ok``, ``studies.signal``). Written after every ``bench tune``
call; files are replaced atomically, so concurrent workers never leave half a file.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.experiments.tune.studies import UNTRAINED, signal
from bench.files import atomic_write, write_json
from bench.report.plots import set_lr_ticks

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

TRIALS = "trials.csv"
HISTORY = "history.png"
LR_VS_SCORE = "lr_vs_score.png"
RC: dict[RcKeyType, Any] = {"font.size": 9, "axes.titlesize": 10}


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial; ``value`` only for complete trials, ``last_value`` for pruned ones too."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        rows.append({
            "study": study.study_name, "number": t.number, "state": t.state.name,
            "lr": t.params.get("lr"),
            "value": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
            **{k: v for k, v in t.params.items() if k != "lr"},
            "last_step": steps[-1] if steps else None,
            "last_value": t.intermediate_values[steps[-1]] if steps else None,
            "error": t.user_attrs.get("error", ""), "host": t.user_attrs.get("host", ""),
            "seconds": t.user_attrs.get("seconds"),
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
            "direction": "maximize",
        })
    columns = ["study", "number", "state", "lr", "value"]
    df = pd.DataFrame(rows, columns=None if rows else columns)
    return df.sort_values("number", ignore_index=True) if rows else df


def _figure() -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(5.6, 3.8), layout="constrained")


def _save(fig: Figure, path: Path) -> None:
    with matplotlib.rc_context(RC):
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, metadata={"Software": None}))


def _title(ax, what: str, study: str, verdict: str | None) -> None:
    """What the plot shows on top, the study's name (wrapped: names run long) in small type below it."""
    head = what + (": NO SIGNAL (no trial beat the untrained model)" if verdict == "none" else "")
    ax.set_title(head + "\n" + "\n".join(textwrap.wrap(study, 80)), fontsize=8, loc="left",
                 color="tab:red" if verdict == "none" else "black")


def _floor_line(ax, untrained: float | None) -> None:
    if untrained is not None:
        ax.axhline(untrained, color="grey", linestyle=":", linewidth=1.2, label=f"untrained model {untrained:.4f}")


def _y_from_zero(ax) -> None:
    """Scores are in [0, 1]: a little room below 0 for the failed trials' marks and above the best
    score, none wasted beneath."""
    top = 1.08 * max(float(ax.dataLim.y1) if np.isfinite(ax.dataLim.y1) else 0.0, 0.01)
    ax.set_ylim(-0.04 * top, top)


def plot_history(df: pd.DataFrame, title: str, untrained: float | None = None, verdict: str | None = None) -> Figure:
    """Validation DSC per trial (pruned: last score reported), with the best so far and the untrained model's."""
    fig = _figure()
    ax = fig.add_subplot()
    done = df[df["state"] == "COMPLETE"]
    pruned = df[df["state"] == "PRUNED"]
    failed = df[df["state"] == "FAIL"]
    ax.scatter(done["number"], done["value"], s=22, color="tab:blue", label="complete", zorder=3)
    if len(pruned):
        ax.scatter(pruned["number"], pruned["last_value"], s=22, marker="v", color="grey", label="pruned")
    if len(done):
        best = done["value"].cummax()
        ax.step(np.r_[done["number"], df["number"].max()], np.r_[best, best.iloc[-1]], where="post",
                color="tab:red", linewidth=1.2, label="best so far")
    if len(failed):
        ax.scatter(failed["number"], np.zeros(len(failed)), s=30, marker="x", color="tab:red", label="failed")
    _floor_line(ax, untrained)
    ax.set(xlabel="trial", ylabel="validation DSC (mean over organs)")
    _title(ax, "search history", title, verdict)
    _y_from_zero(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    return fig


def plot_lr_vs_score(df: pd.DataFrame, title: str, lr_range: tuple[float, float] | None = None,
                     untrained: float | None = None, verdict: str | None = None) -> Figure:
    """Validation DSC against the learning rate (log scale) over the searched range; failed trials
    sit on the x axis; the best LR is marked only when the study has a signal."""
    fig = _figure()
    ax = fig.add_subplot()
    done = df[df["state"] == "COMPLETE"]
    pruned = df[df["state"] == "PRUNED"]
    failed = df[(df["state"] == "FAIL") & df["lr"].notna()]
    ax.scatter(done["lr"], done["value"], s=22, color="tab:blue", label="complete", zorder=3)
    if len(pruned):
        ax.scatter(pruned["lr"], pruned["last_value"], s=22, marker="v", color="grey", label="pruned")
    if len(failed):
        ax.scatter(failed["lr"], np.zeros(len(failed)), s=30, marker="x", color="tab:red", label="failed")
    if len(done) and verdict != "none":
        top = done.loc[done["value"].idxmax()]
        ax.axvline(top["lr"], color="tab:red", linestyle="--", linewidth=1, label=f"best lr {top['lr']:.3g}")
    _floor_line(ax, untrained)
    ax.set(xscale="log", xlabel="learning rate", ylabel="validation DSC (mean over organs)")
    _title(ax, "learning rate vs validation DSC", title, verdict)
    _y_from_zero(ax)
    tried = df["lr"].dropna()
    lo, hi = lr_range if lr_range is not None else ((tried.min(), tried.max()) if len(tried) else (1e-3, 1e-1))
    if lo < hi:
        ax.set_xlim(lo / 1.2, hi * 1.2)
        set_lr_ticks(ax, lo, hi)
    ax.legend(fontsize=7)
    return fig


def write_outputs(study: optuna.Study, folder: Path, storage: str) -> list[Path]:
    """Write the trials table, both plots and study.json into ``folder``; returns their paths."""
    df = trials_table(study)
    paths = [folder / TRIALS, folder / HISTORY, folder / LR_VS_SCORE]
    atomic_write(paths[0], lambda p: df.to_csv(p, index=False))
    name, untrained, verdict = study.study_name, study.user_attrs.get(UNTRAINED), signal(study)
    _save(plot_history(df, name, untrained, verdict), paths[1])
    ranges = [d for t in study.get_trials(deepcopy=False)
              if isinstance(d := t.distributions.get("lr"), optuna.distributions.FloatDistribution)]
    lr_range = (min(d.low for d in ranges), max(d.high for d in ranges)) if ranges else None
    _save(plot_lr_vs_score(df, name, lr_range, untrained, verdict), paths[2])
    write_json(folder / "study.json", {"study": name, "storage": storage, "trials": len(df),
                                       **study.user_attrs, "signal": verdict})
    return paths
