"""The qualitative figure: the best, median and worst test case, one axial slice each.

Cases are ordered by their mean DSC over models (each model's value: the mean over organs,
seeds averaged). For each picked case the slice with the most reference foreground is shown
with the reference contours, then each model's contours from its saved prediction
(``predictions/<case>.npz``) of its lowest complete seed. The image comes from the dataset
folder recorded in the run's manifest; when that folder is gone the figure is skipped with a
note, the rest of the report stands.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from bench.data import layout
from bench.data.synapse import Dataset, load_volume
from bench.engine.evaluation import evaluated_slices, load_prediction
from bench.errors import BenchError
from bench.protocol import Evaluation
from bench.report.load import Loaded
from bench.report.plots import Plot, _figure, save


def pick_cases(cases_dice: pd.DataFrame) -> list[tuple[str, str]]:
    """(role, case) for best, median and worst; fewer when there are fewer cases."""
    overall = cases_dice[cases_dice["label"] == 0].dropna(subset=["value"])
    per_case = overall.groupby("case")["value"].mean().reset_index().sort_values(["value", "case"])
    order = per_case["case"].tolist()
    if not order:
        return []
    picks, seen = [], set()
    for role, case in (("best", order[-1]), ("median", order[(len(order) - 1) // 2]), ("worst", order[0])):
        if case not in seen:
            picks.append((role, case))
            seen.add(case)
    return picks


def _dataset_root(manifest: dict, results: Path) -> Path | None:
    """The dataset folder: as recorded, else (a relative path) next to the results folder."""
    root = Path(manifest["dataset"]["root"]).expanduser()
    for candidate in (root, Path(results).resolve().parent / root):
        if (candidate / "lists").is_dir():
            return candidate
    return None


def _volume(manifest: dict, root: Path, case: str) -> tuple[np.ndarray, np.ndarray, slice]:
    """The case's image and reference, and the slices its runs scored (the protocol's ``max_slices``)."""
    info = manifest["dataset"]
    organs = {int(k): v for k, v in info["organs"].items()}
    split = "test" if layout.files(root).volume(case).exists() else "val"
    ds = Dataset(name=info["name"], root=root, train_slices=[], test_cases=[case], organs=organs, eval_split=split)
    image, label, _ = load_volume(ds, case)
    ev = Evaluation.model_validate(manifest.get("evaluation") or (manifest.get("protocol") or {}).get("evaluation")
                                   or {})
    slab = evaluated_slices(len(label), ev)
    return image[slab], label[slab], slab


def _contours(ax, mask: np.ndarray, colors: dict[int, tuple], **kw) -> None:
    for k, color in colors.items():
        m = mask == k
        if m.any() and not m.all():
            ax.contour(m.astype(float), levels=[0.5], colors=[color], **kw)


def qualitative(loaded: Loaded, cases_dice: pd.DataFrame, results: Path, out: Path) -> tuple[Plot | None, str]:
    """The figure, or None and the reason it was skipped."""
    picks = pick_cases(cases_dice)
    ok = loaded.complete.sort_values(["arm", "seed"]).groupby("arm", sort=True).first()
    if not picks or ok.empty:
        return None, "no complete run with scored test cases"
    manifest = loaded.manifests[ok["path"].iloc[0]]
    assert manifest is not None  # a complete run has a readable manifest
    root = _dataset_root(manifest, results)
    if root is None:
        return None, f"dataset folder {manifest['dataset']['root']} (from the manifests) not found"
    colors = dict(zip(loaded.organs, sns.color_palette("tab10" if len(loaded.organs) <= 10 else "hls",
                                                       len(loaded.organs)), strict=False))
    per_seed = loaded.metrics[loaded.metrics["metric"] == "dice"].groupby(["model", "seed", "case"])["value"].mean()
    arms = list(ok.index)
    fig = _figure(2.5 * (1 + len(arms)), 2.7 * len(picks) + 0.5)
    axes = np.atleast_2d(fig.subplots(len(picks), 1 + len(arms), squeeze=False))
    for row, (role, case) in enumerate(picks):
        try:
            image, ref, slab = _volume(manifest, root, case)
        except BenchError as e:
            return None, str(e)
        z = int(np.argmax((ref > 0).reshape(ref.shape[0], -1).sum(axis=1)))
        lo, hi = np.percentile(image[z], [1, 99])
        for col in range(1 + len(arms)):
            ax = axes[row, col]
            ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                _contours(ax, ref[z], colors, linewidths=1.3)
                ax.set_title(f"{case} ({role})\nreference, slice {z + slab.start}", fontsize=9)
                continue
            arm = arms[col - 1]
            run = ok.loc[arm]
            try:
                pred = load_prediction(Path(run["path"]), case)
            except (OSError, BenchError):  # missing, or damaged: the page shows the others
                ax.set_title(f"{arm}\nno saved prediction", fontsize=9)
                continue
            if len(pred) > len(ref) and pred[slab].shape == ref.shape:
                pred = pred[slab]  # a whole volume (another tool's) beside runs that scored a slab of it
            if pred.shape != ref.shape:
                ax.set_title(f"{arm}\nprediction shape {pred.shape} != {ref.shape}", fontsize=9)
                continue
            _contours(ax, ref[z], {k: (1, 1, 1) for k in colors}, linewidths=0.6, linestyles="dotted")
            _contours(ax, pred[z], colors, linewidths=1.3)
            dsc = per_seed.get((arm, int(run["seed"]), case), np.nan)
            ax.set_title(f"{arm} seed {int(run['seed'])}\nDSC {100 * dsc:.1f}% (this case)", fontsize=9)
    handles = [Line2D([], [], color=colors[k], linewidth=2, label=name) for k, name in loaded.organs.items()]
    handles.append(Line2D([], [], color="grey", linestyle="dotted", label="reference (on model panels)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    caption = ("Best, median and worst test case by mean DSC over models: the slice with the most reference "
               "foreground; reference contours, then each model's (dotted: reference).")
    return Plot("qualitative", "Qualitative: best, median and worst case", caption, save(fig, out, "qualitative")), ""
