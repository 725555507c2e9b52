"""The steps of ``run_nnunet`` (see bench.experiments.nnunet), each skipped when a previous attempt
finished it, and nnU-Net's own evaluator for the cross-check against ours.

Resuming: the export, plan and prediction steps leave a ``<step>.done`` file when they complete;
training resumes from nnU-Net's checkpoint with ``--c`` (nnU-Net saves ``checkpoint_latest.pth``
every 50 epochs, so a kill costs at most 50 epochs) and is done when ``checkpoint_final.pth`` is.
An unfinished prediction is redone whole (a killed export may leave a torn file).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch

from bench.data.nnunet import MARKER
from bench.data.nnunet_export import Export, check_name, default_name, split_commands
from bench.data.nnunet_raw import NNUNET_SPLITS, dataset_folder_name
from bench.data.synapse import Dataset, case_of
from bench.engine.validation import held_out_view
from bench.errors import BenchError
from bench.experiments.nnunet import (
    ALL,
    CHECKPOINT,
    PLANNERS,
    PROVENANCE,
    NnunetOptions,
    NnunetResult,
    Workspace,
    budget_trainer,
    check_options,
    check_trainer,
    command,
    export_nnunet,
    failure_cause,
    nnunet_version,
    run_step,
    training_fold,
)
from bench.files import atomic_text, write_json
from bench.protocol import Protocol

STEPS = "steps.json"  # seconds of each step, kept across attempts
PRED_INFO = "predictions-info"


def _done(ws: Workspace, step: str) -> Path:
    return ws.root / f"{step}.done"


def export_step(ds: Dataset, protocol: Protocol, ws: Workspace, opts: NnunetOptions, say=print) -> Export:
    """The dataset in ws.raw: exported now, or the export of an earlier attempt if it is of this dataset and split."""
    folder = ws.raw / ws.dataset_name
    view = held_out_view(ds, protocol)
    want = [{"train": sorted({case_of(s) for s in view.train_slices}), "val": sorted(view.test_cases)}]
    if _done(ws, "export").exists() and folder.is_dir():
        mark = json.loads((folder / "dataset.json").read_text()).get(MARKER, {})
        if mark.get("fingerprint") != ds.fingerprint() or json.loads((folder / NNUNET_SPLITS).read_text()) != want:
            raise BenchError(f"{folder}: exported from another dataset or split than {ds.name}; use another run folder")
        return Export(folder, opts.dataset_id, ws.dataset_name, folder / NNUNET_SPLITS,
                      split_commands(ws.dataset_name, folder / NNUNET_SPLITS))
    export = export_nnunet(ds, protocol, opts.dataset_id, ws.raw, ws.dataset_name.split("_", 1)[1], say)
    atomic_text(_done(ws, "export"), ds.fingerprint() + "\n")
    return export


def plan_step(ws: Workspace, opts: NnunetOptions, env: dict[str, str], say=print) -> float | None:
    plans = ws.preprocessed / ws.dataset_name / f"{opts.plans}.json"
    if _done(ws, "plan").exists() and plans.is_file():
        return None
    say(f"nnU-Net: planning and preprocessing ({PLANNERS[opts.plans]}, {opts.configuration}) ...")
    n = str(opts.processes)
    cmd = [command("nnUNetv2_plan_and_preprocess"), "-d", str(opts.dataset_id), "-c", opts.configuration,
           "-pl", PLANNERS[opts.plans], "-np", n, "-npfp", n]
    seconds = run_step(cmd, ws, "plan", "nnUNetv2_plan_and_preprocess", env)
    if not plans.is_file():
        raise BenchError(f"nnUNetv2_plan_and_preprocess wrote no {plans}; see {ws.logs / 'plan.log'}")
    atomic_text(_done(ws, "plan"), f"{seconds:.1f}\n")
    return seconds


def place_split(ws: Workspace, export: Export) -> Path:
    """Our splits_final.json where nnU-Net's training reads it (nnU-Net uses a pre-placed file as it is)."""
    target = ws.preprocessed / ws.dataset_name / NNUNET_SPLITS
    text = export.splits_file.read_text()
    if target.exists() and json.loads(target.read_text()) != json.loads(text):
        raise BenchError(f"{target}: differs from our split {export.splits_file}; nnU-Net would train on other cases")
    if not target.exists():
        atomic_text(target, text)
    return target


def fold_dir(ws: Workspace, opts: NnunetOptions, trainer: str) -> Path:
    """nnU-Net's output folder of the fold (nnunetv2 utilities/file_path_utilities.get_output_folder)."""
    return ws.results / ws.dataset_name / f"{trainer}__{opts.plans}__{opts.configuration}" / f"fold_{ws.fold}"


class _EpochWatch:
    """Says each epoch nnU-Net starts (read from its log), with an ETA from the epochs seen so far."""

    def __init__(self, out: Path, say) -> None:
        self.out, self.say = out, say
        self.epoch = -1
        self.first: tuple[int, float] | None = None  # (epoch, time) of the first epoch seen

    def __call__(self, log: Path) -> None:
        found = re.findall(r"Epoch (\d+)\s*$", log.read_text(errors="replace"), re.MULTILINE)
        if not found or int(found[-1]) == self.epoch:
            return
        self.epoch, now = int(found[-1]), time.perf_counter()
        total = _debug(self.out).get("num_epochs")
        self.first = self.first or (self.epoch, now)
        done = self.epoch - self.first[0]
        eta = f", ETA {(now - self.first[1]) / done * (int(total) - self.epoch):.0f} s" if done and total else ""
        self.say(f"nnU-Net epoch {self.epoch + 1}/{total or '?'}{eta}")


def _debug(out: Path) -> dict:
    path = out / "debug.json"  # the trainer's attributes, written when training starts
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def train_done(ws: Workspace, opts: NnunetOptions, trainer: str) -> bool:
    return (fold_dir(ws, opts, trainer) / CHECKPOINT).is_file() and _done(ws, "train").exists()


def train_step(ws: Workspace, opts: NnunetOptions, trainer: str, device: torch.device, env: dict[str, str],
               say=print) -> float | None:
    out = fold_dir(ws, opts, trainer)
    if train_done(ws, opts, trainer):
        return None
    resume = any((out / f).is_file() for f in ("checkpoint_latest.pth", CHECKPOINT))
    say(f"nnU-Net: training {trainer} on fold {ws.fold} ({device.type})" + (", resuming" if resume else "") + " ...")
    cmd = [command("nnUNetv2_train"), str(opts.dataset_id), opts.configuration, ws.fold, "-tr", trainer,
           "-p", opts.plans, "-device", device.type, *(["--c"] if resume else [])]
    if opts.augmentation_processes is not None:
        env = {**env, "nnUNet_n_proc_DA": str(opts.augmentation_processes)}
    seconds = run_step(cmd, ws, "train", "nnUNetv2_train", env, watch=_EpochWatch(out, say))
    if not (out / CHECKPOINT).is_file():
        raise BenchError(f"nnUNetv2_train left no {out / CHECKPOINT}; see {ws.logs / 'train.log'}")
    atomic_text(_done(ws, "train"), f"{seconds:.1f}\n")
    return seconds


def predict_step(ws: Workspace, opts: NnunetOptions, trainer: str, device: torch.device, env: dict[str, str],
                 test_cases: list[str], ending: str, say=print) -> float | None:
    if _done(ws, "predict").exists():
        return None
    shutil.rmtree(ws.predictions, ignore_errors=True)  # ours; an unfinished attempt may have torn files
    say(f"nnU-Net: predicting {len(test_cases)} test case(s) ...")
    n = str(opts.processes)
    cmd = [command("nnUNetv2_predict"), "-i", str(ws.raw / ws.dataset_name / "imagesTs"), "-o", str(ws.predictions),
           "-d", str(opts.dataset_id), "-c", opts.configuration, "-f", ws.fold, "-tr", trainer, "-p", opts.plans,
           "-chk", CHECKPOINT, "-device", device.type, "-npp", n, "-nps", n, "--disable_progress_bar"]
    seconds = run_step(cmd, ws, "predict", "nnUNetv2_predict", env)
    info = ws.root / PRED_INFO
    info.mkdir(exist_ok=True)
    for f in ws.predictions.glob("*.json"):  # nnU-Net's records of the prediction; the folder keeps the masks only
        f.replace(info / f.name)
    missing = [c for c in test_cases if not (ws.predictions / f"{c}{ending}").is_file()]
    if missing:
        raise BenchError(f"nnUNetv2_predict wrote no prediction for {', '.join(missing[:5])}; see "
                         f"{ws.logs / 'predict.log'}")
    atomic_text(_done(ws, "predict"), f"{seconds:.1f}\n")
    return seconds


def provenance(ws: Workspace, opts: NnunetOptions, trainer: str, device: torch.device, export: Export,
               steps: dict[str, float]) -> dict:
    """What produced the predictions, from nnU-Net's own plans and debug.json."""
    plans = json.loads((ws.preprocessed / ws.dataset_name / f"{opts.plans}.json").read_text())
    cfg = plans["configurations"][opts.configuration]
    arch = cfg.get("architecture", {})
    kwargs = arch.get("arch_kwargs", {})
    debug = _debug(fold_dir(ws, opts, trainer))
    ours = json.loads(export.splits_file.read_text())[0]  # our training cases and their hold-out
    train = sorted(ours["train"] + ours["val"]) if ws.fold == ALL else ours["train"]

    def integer(key: str) -> int | None:
        return int(debug[key]) if str(debug.get(key, "")).isdigit() else None

    return {"tool": "nnunetv2", "version": nnunet_version(), "configuration": opts.configuration,
            "plans": opts.plans, "planner": PLANNERS[opts.plans], "trainer": trainer, "base_trainer": opts.trainer,
            "fold": ws.fold if ws.fold == ALL else int(ws.fold), "dataset": export.dataset_name,
            "patch_size": cfg.get("patch_size"), "batch_size": cfg.get("batch_size"), "spacing": cfg.get("spacing"),
            "normalization": cfg.get("normalization_schemes"),
            "network": {"class": arch.get("network_class_name"), **{k: kwargs[k] for k in (
                "n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
                "n_blocks_per_stage", "n_conv_per_stage_decoder") if k in kwargs}},
            "epochs": integer("num_epochs"), "iterations_per_epoch": integer("num_iterations_per_epoch"),
            "val_iterations_per_epoch": integer("num_val_iterations_per_epoch"),
            "final_validation": opts.final_validation, "device": str(device), "torch": torch.__version__,
            "train_cases": train, "val_cases": train if ws.fold == ALL else ours["val"],
            "held_out_cases": [] if ws.fold == ALL else ours["val"], "step_seconds": steps,
            "wall_seconds": round(sum(steps.values()), 1), "workspace": str(ws.root.resolve())}


def run_nnunet(ds: Dataset, protocol: Protocol, work: Path, opts: NnunetOptions, device: torch.device,
               say=print) -> NnunetResult:
    """Export, plan, place our split, train, predict our test cases; resumes what an earlier attempt left."""
    nnunet_version()
    check_options(opts)
    ws = Workspace(Path(work), dataset_folder_name(opts.dataset_id, check_name(opts.name or default_name(ds))),
                   training_fold(protocol))
    ws.root.mkdir(parents=True, exist_ok=True)
    env = ws.env(opts, device)
    trainer = budget_trainer(ws, opts)
    if not train_done(ws, opts, trainer):  # before the export and the plan, which may take long
        check_trainer(opts.trainer, env)
    steps_file = ws.root / STEPS
    steps: dict[str, float] = json.loads(steps_file.read_text()) if steps_file.is_file() else {}

    def record(step: str, seconds: float | None) -> None:
        if seconds is not None:
            steps[step] = round(seconds, 1)
            atomic_text(steps_file, json.dumps(steps, indent=1) + "\n")

    t0 = time.perf_counter()
    export = export_step(ds, protocol, ws, opts, say)
    record("export", time.perf_counter() - t0 if "export" not in steps else None)
    record("plan", plan_step(ws, opts, env, say))
    place_split(ws, export)
    record("train", train_step(ws, opts, trainer, device, env, say))
    ending = json.loads((export.folder / "dataset.json").read_text())["file_ending"]
    record("predict", predict_step(ws, opts, trainer, device, env, list(ds.test_cases), ending, say))
    prov = provenance(ws, opts, trainer, device, export, steps)
    write_json(ws.root / PROVENANCE, prov)
    return NnunetResult(ws.predictions, prov)


def evaluate_with_nnunet(raw: Path, predictions: Path, plans_file: Path, out: Path, processes: int = 1) -> Path:
    """``nnUNetv2_evaluate_folder`` of ``predictions`` against ``raw``/labelsTs: its summary.json at ``out``."""
    cmd = [command("nnUNetv2_evaluate_folder"), str(raw / "labelsTs"), str(predictions), "-djfile",
           str(raw / "dataset.json"), "-pfile", str(plans_file), "-o", str(Path(out).resolve()), "-np", str(processes)]
    proc = subprocess.run(cmd, env=dict(os.environ, nnUNet_def_n_proc=str(processes)), capture_output=True, text=True)
    if proc.returncode != 0 or not Path(out).is_file():
        raise BenchError(f"nnUNetv2_evaluate_folder failed: {failure_cause(proc.stderr.splitlines())}")
    return Path(out)


def read_summary(path: Path) -> pd.DataFrame:
    """nnU-Net's summary.json per case and label: case, label, dice (NaN when both masks are empty), tp, fp, fn."""
    doc = json.loads(Path(path).read_text())
    rows = []
    for entry in doc["metric_per_case"]:
        name = Path(entry["prediction_file"]).name
        case = re.sub(r"(\.nii\.gz|\.[A-Za-z0-9]+)$", "", name)
        for label, m in entry["metrics"].items():
            rows.append({"case": case, "label": int(label), "dice": float(m["Dice"]), "tp": m["TP"], "fp": m["FP"],
                         "fn": m["FN"]})
    return pd.DataFrame(rows)
