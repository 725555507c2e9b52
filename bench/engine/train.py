"""One training loop for every model: poly LR per iteration, CE + Dice, exact resume.

Data order and augmentation come from (seed, epoch, index); dropout / drop-path draw from
torch's RNG, whose state (with numpy's, Python's and CUDA's) is saved in every checkpoint and
restored after everything that could draw from it is set up (starting the loader's iterator
draws a seed from it). A run killed at any point and resumed from its last checkpoint therefore
ends with the same weights, bit for bit, as an uninterrupted one.
Precision and cuDNN flags come from the protocol (``bench.engine.numerics``), never from the device.
``train_log.csv`` grows by one row per iteration, written after that iteration's checkpoint.
"""
from __future__ import annotations

import csv
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from bench.data.sampling import training_loader
from bench.data.synapse import Dataset
from bench.engine import numerics
from bench.engine.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_final,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
    save_final,
)
from bench.engine.losses import combined_loss
from bench.engine.results import FINAL_WEIGHTS, TRAIN_LOG
from bench.files import atomic_write
from bench.protocol import Protocol

LOG_FIELDS = ["iteration", "loss", "ce", "dice", "lr", "seconds"]


class Diverged(RuntimeError):
    """The loss became NaN/inf or exploded: the run is recorded as diverged."""


class Interrupted(RuntimeError):
    """SIGTERM / SIGINT arrived; a checkpoint was written before stopping."""


class Preempted(Interrupted):
    """SIGUSR1 arrived: a scheduler's warning before preemption or the time limit (``sbatch
    --signal=USR1@...``). A checkpoint was written; whoever runs the job requeues it."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    return base_lr * (1 - iteration / max_iter) ** power


@dataclass
class TrainResult:
    iterations: int
    seconds: float
    images_per_second: float
    resumed_from: int


def _read_log(run_dir: Path, before: int) -> list[dict]:
    path = run_dir / TRAIN_LOG
    if not path.exists():
        return []
    with open(path) as f:  # a row torn by a kill mid-write has empty fields: it is dropped
        rows = [r for r in csv.DictReader(f) if all(r.get(k) not in (None, "") for k in LOG_FIELDS)]
    return [r for r in rows if int(r["iteration"]) < before]


def _write_log(run_dir: Path, rows: list[dict]) -> None:
    def write(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)

    atomic_write(run_dir / TRAIN_LOG, write)


class _StopFlag:
    """Turns SIGTERM / SIGINT / SIGUSR1 into a flag checked between iterations."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __enter__(self) -> _StopFlag:
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(
    model: torch.nn.Module,
    ds: Dataset,
    protocol: Protocol,
    seed: int,
    run_dir: Path,
    base_lr: float,
    device: torch.device,
    progress: Progress | None = None,
    label: str = "train",
    say=print,
    on_iteration: Callable[[int], None] | None = None,
    tracker=None,
) -> TrainResult:
    """Train ``model`` in place under ``protocol``; resumes from ``run_dir``'s checkpoint if any.

    ``on_iteration(done)`` runs after every iteration (validation and the LR search's pruning
    happen there); it may switch the model to eval mode, training mode is restored afterwards.
    ``tracker`` (a ``bench.engine.tracking.Tracking``) gets each iteration's loss terms and LR.
    """
    seed_everything(seed)
    model.to(device)
    max_iter = protocol.max_iterations(len(ds.train_slices))
    opt = torch.optim.SGD(
        model.parameters(), lr=base_lr, momentum=protocol.optimizer.momentum,
        weight_decay=protocol.optimizer.weight_decay,
    )
    cuda = device.type == "cuda"
    numerics.check_precision(protocol.precision, device)
    numerics.apply_cudnn(protocol.cudnn, device)
    scaler = numerics.grad_scaler(protocol.precision, device)
    for stale in remove_stale_temporaries(run_dir):
        say(f"removed {stale.name}, left by a writer that was killed")
    final = load_final(run_dir, say)
    if final is not None and int(final["iteration"]) == max_iter:
        model.load_state_dict(final["model"])  # trained before, only the evaluation was left
        say(f"resuming {label} after training ({max_iter} iterations done): evaluating {FINAL_WEIGHTS}")
        if tracker is not None:
            tracker.open(max_iter)
        return TrainResult(max_iter, 0.0, 0.0, max_iter)
    start = 0
    state = load_checkpoint(run_dir, say)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state.get("scaler", {}))
        start = int(state["iteration"])
        say(f"resuming {label} from iteration {start} of {max_iter}")
    _write_log(run_dir, _read_log(run_dir, start))  # rows past the checkpoint go; the log grows from here
    if tracker is not None:
        tracker.open(start)
    loader = training_loader(ds, protocol.input_size, protocol.augmentation, protocol.batch_size, seed, start,
                             max_iter, protocol.num_workers, pin_memory=cuda)
    # Starting the iterator draws the workers' base seed from torch's RNG: restore the streams
    # after it (and after anything else that could draw), so a resumed run continues exactly
    # where the checkpoint left them. A fresh run keeps that one draw, as it always has.
    batches = iter(loader)
    if state is not None:
        restore_rng(state, device)

    def checkpoint(iteration: int) -> None:
        save_checkpoint(run_dir, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "iteration": iteration, "rng": capture_rng(device),
        })

    task = None
    if progress is not None:
        task = progress.add_task(label, total=max_iter, completed=start, loss=float("nan"), lr=base_lr)
    # Without a terminal (CI logs, nohup) the bar is invisible: print a line every tenth instead.
    interactive = progress is not None and progress.console.is_terminal
    report_every = max(1, max_iter // 10)
    model.train()
    t0 = time.perf_counter()
    images = 0
    it = start
    with _StopFlag() as stop, open(run_dir / TRAIN_LOG, "a", newline="") as log_file:
        log = csv.DictWriter(log_file, LOG_FIELDS)
        for it, (x, y) in enumerate(batches, start=start):
            lr = poly_lr(base_lr, it, max_iter, protocol.poly_power)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with numerics.autocast(protocol.precision, device):
                logits = model(x)
            loss, ce, dice = combined_loss(logits.float(), y, protocol.loss.ce, protocol.loss.dice)
            value = loss.item()
            if not math.isfinite(value) or value > protocol.divergence_loss:
                raise Diverged(f"loss {value} at iteration {it}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            images += x.shape[0]
            ce_value, dice_value = ce.item(), dice.item()
            row = {"iteration": it, "loss": f"{value:.6f}", "ce": f"{ce_value:.6f}", "dice": f"{dice_value:.6f}",
                   "lr": f"{lr:.8g}", "seconds": f"{time.perf_counter() - t0:.3f}"}
            done = it + 1
            if tracker is not None:
                tracker.log({"train/loss": value, "train/ce_loss": ce_value, "train/dice_loss": dice_value,
                             "train/lr": lr}, done)
            if on_iteration is not None:
                on_iteration(done)
                model.train()
            if progress is not None:
                progress.update(task, advance=1, loss=value, lr=lr)
            if not interactive and (done % report_every == 0 or done == max_iter):
                spent = time.perf_counter() - t0
                eta = spent / (done - start) * (max_iter - done)
                say(f"{label}: iteration {done}/{max_iter}  loss {value:.4f}  lr {lr:.2e}  "
                    f"{spent:.0f} s elapsed, eta {eta:.0f} s")
            if done < max_iter and (done % protocol.checkpoint_every == 0 or stop.signal):
                checkpoint(done)
            log.writerow(row)  # after the checkpoint: a row in the log means its checkpoint is on disk
            log_file.flush()
            if stop.signal:
                if done == max_iter:  # training is over: keep its weights, only the evaluation is left
                    save_final(run_dir, model, max_iter)
                name = signal.Signals(stop.signal).name
                say(f"{label}: {name} at iteration {done}: checkpoint saved")
                kind = Preempted if stop.signal == signal.SIGUSR1 else Interrupted
                raise kind(f"stopped by {name} at iteration {done}; checkpoint saved")
    save_final(run_dir, model, max_iter)
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress.remove_task(task)
    return TrainResult(max_iter, seconds, images / max(seconds, 1e-9), start)
