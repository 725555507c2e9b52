"""nnU-Net v2 as a competitor, driven through its own entry points on our split.

``run_nnunet(ds, protocol, work, opts, device)`` does, in a folder of the run (``work``):

1. export ``ds`` as ``work/nnUNet_raw/DatasetNNN_NAME`` (bench.data.nnunet_export): our training cases
   in imagesTr, our test cases in imagesTs only; fold 0 of its ``splits_final.json`` trains on our
   training cases without the protocol's validation hold-out (``bench.engine.validation.held_out_view``,
   the cases ``bench tune`` scores) and validates on it;
2. ``nnUNetv2_plan_and_preprocess -d N -c 2d -np 1 -npfp 1`` (the planner of the ``--plans`` preset);
3. put our split where training reads it (``nnUNet_preprocessed/DatasetNNN_NAME/splits_final.json``;
   nnU-Net uses a pre-placed file as it is);
4. ``nnUNetv2_train N 2d FOLD -tr TRAINER -p PLANS -device D`` on the cases our trained runs train on
   under the same protocol (``training_fold``): fold ``all`` (every training case; nnU-Net then
   monitors on them too) when ``bench run`` trains on every training case (``validation.during_run``
   false), fold 0 (without the hold-out) when it holds them out; a short budget (epochs, iterations per
   epoch) runs through a subclass of the trainer written into ``work/trainers/`` and found through
   nnU-Net's ``nnUNet_extTrainer`` hook; after a kill, ``--c`` resumes from nnU-Net's checkpoint;
5. ``nnUNetv2_predict`` of our test cases (imagesTs) into ``work/predictions/`` (one file per case;
   nnU-Net's own json files go to ``work/predictions-info/``);
6. provenance: nnunetv2 version, configuration, plans, trainer, fold, patch size and network from the
   plans, epochs and iterations (nnU-Net's debug.json), wall time per step, device.

nnUNet_raw / nnUNet_preprocessed / nnUNet_results point into ``work``; ``nnUNet_def_n_proc`` and the
process counts come from ``opts.processes`` (1 on a 2-core machine: nnU-Net's default of 8 made its
validation six times slower there). Nothing is downloaded. Bad input is one BenchError line.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.data.nnunet_export import Export, write_nnunet
from bench.data.synapse import Dataset, case_of
from bench.engine.validation import held_out_view
from bench.errors import BenchError
from bench.files import atomic_text
from bench.protocol import Protocol

# --plans presets and the planner that writes each (nnunetv2 2.8)
PLANNERS = {"nnUNetPlans": "ExperimentPlanner", "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
            "nnUNetResEncUNetLPlans": "nnUNetPlannerResEncL", "nnUNetResEncUNetXLPlans": "nnUNetPlannerResEncXL"}
CONFIGURATIONS = ("2d", "3d_fullres")
FOLD = 0  # the fold of splits_final.json whose train / val lists are ours (with the hold-out)
ALL = "all"  # nnU-Net's fold of every case in imagesTr (its val is its train)
PROVENANCE = "nnunet.json"
CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class NnunetOptions:
    """How nnU-Net is run; None keeps the trainer's own value (1000 epochs of 250 iterations, 50 validation)."""

    dataset_id: int = 1  # inside ``work`` only: nnU-Net's folders there hold this one dataset
    name: str | None = None
    configuration: str = "2d"
    trainer: str = "nnUNetTrainer"
    plans: str = "nnUNetPlans"
    epochs: int | None = None
    iterations: int | None = None  # training iterations per epoch
    val_iterations: int | None = None  # validation iterations per epoch
    final_validation: bool = True  # nnU-Net's prediction of fold 0's val cases after training (budget runs only)
    processes: int = 1  # nnUNet_def_n_proc and every -np / -npfp / -npp / -nps
    # nnUNet_n_proc_DA of the training step (None: nnU-Net's choice, min(12, cores)); 0: augment in the training
    # process. Not set for planning, whose torch.set_num_threads takes it too and refuses 0.
    augmentation_processes: int | None = None

    @property
    def budget(self) -> bool:
        return any(v is not None for v in (self.epochs, self.iterations, self.val_iterations)) or \
            not self.final_validation


@dataclass
class NnunetResult:
    predictions: Path  # <case><ending> for every test case, nothing else
    provenance: dict = field(default_factory=dict)


def nnunet_version() -> str:
    """The installed nnunetv2's version; a BenchError when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        raise BenchError("nnunetv2 is not installed: pip install 'segbench[nnunet]' (nnU-Net v2 from PyPI)") from None


def command(name: str) -> str:
    """An nnU-Net console script: beside this Python first (its venv), else on PATH."""
    nnunet_version()
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise BenchError(f"{name}: not found beside {sys.executable} or on PATH (is nnunetv2 installed here?)")
    return found


def export_nnunet(ds: Dataset, protocol: Protocol, dataset_id: int, out: Path, name: str | None = None,
                  say=print) -> Export:
    """``bench data export-nnunet``: ``ds`` as ``out/DatasetNNN_NAME``, fold 0 = our training cases with the
    protocol's validation hold-out; ``Export.commands`` put that split in place."""
    view = held_out_view(ds, protocol)
    train, val = sorted({case_of(s) for s in view.train_slices}), sorted(view.test_cases)
    return write_nnunet(ds, dataset_id, out, train, val, name, say)


def training_fold(protocol: Protocol) -> str:
    """The nnU-Net fold that trains on the cases ``bench run`` trains on under ``protocol``: every training
    case (``all``) unless the protocol holds its validation cases out during runs (then fold 0 of our split).
    nnU-Net predicts with its final checkpoint, so its validation cases never choose the weights."""
    return str(FOLD) if protocol.validation.during_run else ALL


@dataclass(frozen=True)
class Workspace:
    root: Path
    dataset_name: str
    fold: str = str(FOLD)  # nnU-Net's fold: "0" (our split's fold 0) or "all"

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def trainers(self) -> Path:
        return self.root / "trainers"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def env(self, opts: NnunetOptions, device: torch.device | None = None) -> dict[str, str]:
        env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results), nnUNet_def_n_proc=str(opts.processes))
        env["nnUNet_extTrainer"] = os.pathsep.join(p for p in (str(self.trainers), os.environ.get("nnUNet_extTrainer"))
                                                   if p)
        if device is not None and device.type == "cuda" and device.index is not None:
            # nnU-Net takes "-device cuda" and the GPU from CUDA_VISIBLE_DEVICES (an index into it, if set)
            visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
            env["CUDA_VISIBLE_DEVICES"] = visible[device.index] if device.index < len(visible) else str(device.index)
        return env


def _tail(log: Path) -> str:
    """The cause in a failed step's log: its last exception line, else its last lines."""
    text = [s.strip() for s in log.read_text(errors="replace").splitlines() if s.strip()] if log.exists() else []
    return failure_cause(text)


def failure_cause(lines: list[str]) -> str:
    lines = [s.strip() for s in lines if s.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line):
            return line[:400]
    return " | ".join(lines[-3:])[-400:] or "no output"


def run_step(cmd: list[str], ws: Workspace, step: str, what: str, env: dict[str, str], watch=None) -> float:
    """Run one nnU-Net command with its output appended to logs/<step>.log; seconds taken."""
    ws.logs.mkdir(parents=True, exist_ok=True)
    log = ws.logs / f"{step}.log"
    t0 = time.perf_counter()
    with open(log, "a") as f:  # a resumed step keeps the log of the attempt before
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ws.root)
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                if watch is not None:
                    watch(log)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise BenchError(f"{what} failed (exit {proc.returncode}); {log}: {_tail(log)}")
    return time.perf_counter() - t0


def check_options(opts: NnunetOptions) -> None:
    if opts.plans not in PLANNERS:
        raise BenchError(f"--plans {opts.plans}: not a preset here (use {', '.join(PLANNERS)})")
    if opts.configuration not in CONFIGURATIONS:
        raise BenchError(f"--configuration {opts.configuration}: use {' or '.join(CONFIGURATIONS)}")
    for flag, value in (("--epochs", opts.epochs), ("--iterations", opts.iterations),
                        ("--val-iterations", opts.val_iterations), ("--processes", opts.processes)):
        if value is not None and value < 1:
            raise BenchError(f"{flag} {value}: must be at least 1")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", opts.trainer):
        raise BenchError(f"--trainer {opts.trainer!r}: not a Python class name")


def check_trainer(name: str, env: dict[str, str]) -> None:
    """Does nnU-Net know this trainer (its own, or one under nnUNet_extTrainer)? Asked of nnU-Net itself."""
    code = ("import sys; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "f(sys.argv[1])")
    env = {**env, "nnUNet_extTrainer": os.environ.get("nnUNet_extTrainer", "")}  # not ours: it names the budget
    if not env["nnUNet_extTrainer"]:
        del env["nnUNet_extTrainer"]
    proc = subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        known = "nnU-Net's trainers" + (" and those under nnUNet_extTrainer" if "nnUNet_extTrainer" in env else "")
        if "Could not find requested nnunet trainer" in proc.stderr:
            raise BenchError(f"--trainer {name}: not among {known} (nnunetv2 {nnunet_version()})")
        raise BenchError(f"--trainer {name}: nnU-Net could not load it ({failure_cause(proc.stderr.splitlines())})")


def budget_trainer(ws: Workspace, opts: NnunetOptions) -> str:
    """The trainer to train with: ``opts.trainer``, or a subclass with the budget written into ws.trainers."""
    if not opts.budget:
        return opts.trainer
    tag = "_".join(f"{k}{'d' if v is None else v}" for k, v in
                   (("e", opts.epochs), ("i", opts.iterations), ("v", opts.val_iterations)))
    name = f"{opts.trainer}__segbench_{tag}" + ("" if opts.final_validation else "_nofinalval")
    sets = [f"        self.{attr} = {value}" for attr, value in (
        ("num_epochs", opts.epochs), ("num_iterations_per_epoch", opts.iterations),
        ("num_val_iterations_per_epoch", opts.val_iterations)) if value is not None]
    skip = [] if opts.final_validation else [
        "", "    def perform_actual_validation(self, save_probabilities: bool = False):",
        "        self.print_to_log_file('segbench: final validation skipped (--no-final-validation)')"]
    text = "\n".join([
        f'"""Written by segbench: {opts.trainer} with a shorter budget, found through nnUNet_extTrainer."""',
        "import torch", "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name", "",
        f"_Base = recursive_find_trainer_class_by_name({opts.trainer!r})", "", "",
        f"class {name}(_Base):",
        "    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device('cuda')):",
        "        super().__init__(plans, configuration, fold, dataset_json, device)", *sets, *skip, ""])
    path = ws.trainers / f"segbench_{name}.py"
    if not path.exists() or path.read_text() != text:
        atomic_text(path, text)
    return name
