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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

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
from bench.engine.progress import Steps
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


class StopFlag:
    """Turns SIGTERM / SIGINT / SIGUSR1 into a flag checked between iterations (or test cases)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __enter__(self) -> StopFlag:
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


@dataclass
class _Loop:
    """One call of ``train``: what it was given, and what its steps share."""

    model: torch.nn.Module
    ds: Dataset
    protocol: Protocol
    seed: int
    run_dir: Path
    base_lr: float
    device: torch.device
    progress: Progress | None
    label: str
    say: Callable[..., object]
    on_iteration: Callable[[int], None] | None
    tracker: Any
    max_iter: int = 0
    start: int = 0  # the iteration this process starts from (a checkpoint's, or 0)
    opt: torch.optim.SGD = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)
    steps: Steps | None = None
    t0: float = 0.0
    images: int = 0


@dataclass
class _Step:
    """What one iteration gives the rest of the loop."""

    done: int  # iterations done after this one
    loss: float
    ce: float
    dice: float
    lr: float
    row: dict  # its train_log.csv row


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
    loop = _Loop(model, ds, protocol, seed, run_dir, base_lr, device, progress, label, say, on_iteration, tracker)
    trained = _setup(loop)
    if trained is not None:
        return trained
    batches = _resume(loop)
    _start(loop)
    with StopFlag() as stop, open(run_dir / TRAIN_LOG, "a", newline="") as log_file:
        log = csv.DictWriter(log_file, LOG_FIELDS)
        for it, (x, y) in enumerate(batches, start=loop.start):
            step = _step(loop, it, x, y)
            _after_step(loop, step)
            _checkpoint_and_log(loop, step, stop, log, log_file)
            if stop.signal:
                _on_signal(loop, step.done, stop.signal)
    return _finish(loop)


def _setup(loop: _Loop) -> TrainResult | None:
    """Optimizer and numerics; the result at once when the final weights are there already."""
    seed_everything(loop.seed)
    loop.model.to(loop.device)
    p = loop.protocol
    loop.max_iter = p.max_iterations(len(loop.ds.train_slices))
    loop.opt = torch.optim.SGD(
        loop.model.parameters(), lr=loop.base_lr, momentum=p.optimizer.momentum,
        weight_decay=p.optimizer.weight_decay,
    )
    numerics.check_precision(p.precision, loop.device)
    numerics.apply_cudnn(p.cudnn, loop.device)
    loop.scaler = numerics.grad_scaler(p.precision, loop.device)
    for stale in remove_stale_temporaries(loop.run_dir):
        loop.say(f"removed {stale.name}, left by a writer that was killed")
    final = load_final(loop.run_dir, loop.say)
    if final is None or int(final["iteration"]) != loop.max_iter:
        return None
    loop.model.load_state_dict(final["model"])  # trained before, only the evaluation was left
    loop.say(f"resuming {loop.label} after training ({loop.max_iter} iterations done): evaluating {FINAL_WEIGHTS}")
    if loop.tracker is not None:
        loop.tracker.open(loop.max_iter)
    return TrainResult(loop.max_iter, 0.0, 0.0, loop.max_iter)


def _resume(loop: _Loop) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches from the checkpoint's iteration on (or from 0), with its weights and random streams."""
    state = load_checkpoint(loop.run_dir, loop.say)
    if state is not None:
        loop.model.load_state_dict(state["model"])
        loop.opt.load_state_dict(state["optimizer"])
        loop.scaler.load_state_dict(state.get("scaler", {}))
        loop.start = int(state["iteration"])
        loop.say(f"resuming {loop.label} from iteration {loop.start} of {loop.max_iter}")
    _write_log(loop.run_dir, _read_log(loop.run_dir, loop.start))  # rows past the checkpoint go; the log grows
    if loop.tracker is not None:
        loop.tracker.open(loop.start)
    p = loop.protocol
    loader = training_loader(loop.ds, p.input_size, p.augmentation, p.batch_size, loop.seed, loop.start,
                             loop.max_iter, p.num_workers, pin_memory=loop.device.type == "cuda")
    # Starting the iterator draws the workers' base seed from torch's RNG: restore the streams
    # after it (and after anything else that could draw), so a resumed run continues exactly
    # where the checkpoint left them. A fresh run keeps that one draw, as it always has.
    batches = iter(loader)
    if state is not None:
        restore_rng(state, loop.device)
    return batches


def _start(loop: _Loop) -> None:
    """The progress bar (or, without a terminal, a line every tenth), training mode and the clock."""
    loop.steps = Steps(loop.progress, loop.label, loop.max_iter, "iteration", loop.say, loop.start,
                       f"lr {loop.base_lr:.2e}")
    loop.model.train()
    loop.t0 = time.perf_counter()


def _step(loop: _Loop, it: int, x: torch.Tensor, y: torch.Tensor) -> _Step:
    """Iteration ``it``: poly LR, forward, CE + Dice, the divergence check, backward and the update."""
    p = loop.protocol
    lr = poly_lr(loop.base_lr, it, loop.max_iter, p.poly_power)
    for g in loop.opt.param_groups:
        g["lr"] = lr
    x, y = x.to(loop.device, non_blocking=True), y.to(loop.device, non_blocking=True)
    with numerics.autocast(p.precision, loop.device):
        logits = loop.model(x)
    loss, ce, dice = combined_loss(logits.float(), y, p.loss.ce, p.loss.dice)
    value = loss.item()
    if not math.isfinite(value) or value > p.divergence_loss:
        raise Diverged(f"loss {value} at iteration {it}")
    loop.opt.zero_grad(set_to_none=True)
    loop.scaler.scale(loss).backward()
    loop.scaler.step(loop.opt)
    loop.scaler.update()
    loop.images += x.shape[0]
    ce_value, dice_value = ce.item(), dice.item()
    row = {"iteration": it, "loss": f"{value:.6f}", "ce": f"{ce_value:.6f}", "dice": f"{dice_value:.6f}",
           "lr": f"{lr:.8g}", "seconds": f"{time.perf_counter() - loop.t0:.3f}"}
    return _Step(it + 1, value, ce_value, dice_value, lr, row)


def _after_step(loop: _Loop, s: _Step) -> None:
    """The tracker, the ``on_iteration`` callback (validation), the progress bar or line."""
    if loop.tracker is not None:
        loop.tracker.log({"train/loss": s.loss, "train/ce_loss": s.ce, "train/dice_loss": s.dice,
                          "train/lr": s.lr}, s.done)
    if loop.on_iteration is not None:
        loop.on_iteration(s.done)
        loop.model.train()
    assert loop.steps is not None  # made by _start
    loop.steps.advance(f"loss {s.loss:.4f}  lr {s.lr:.2e}")


def _checkpoint_and_log(loop: _Loop, s: _Step, stop: StopFlag, log: csv.DictWriter, log_file: IO[str]) -> None:
    """A checkpoint at the interval or on a signal (not after the last iteration), then the log row."""
    if s.done < loop.max_iter and (s.done % loop.protocol.checkpoint_every == 0 or stop.signal):
        save_checkpoint(loop.run_dir, {
            "model": loop.model.state_dict(), "optimizer": loop.opt.state_dict(), "scaler": loop.scaler.state_dict(),
            "iteration": s.done, "rng": capture_rng(loop.device),
        })
    log.writerow(s.row)  # after the checkpoint: a row in the log means its checkpoint is on disk
    log_file.flush()


def stopped_by(signum: int, message: str) -> Interrupted:
    """The exception of a signal: ``Preempted`` for SIGUSR1 (a scheduler's warning), else ``Interrupted``."""
    return (Preempted if signum == signal.SIGUSR1 else Interrupted)(message)


def _on_signal(loop: _Loop, done: int, signum: int) -> NoReturn:
    """Stop after the iteration a signal arrived in: its checkpoint (or the final weights) is on disk."""
    if done == loop.max_iter:  # training is over: keep its weights, only the evaluation is left
        save_final(loop.run_dir, loop.model, loop.max_iter)
    name = signal.Signals(signum).name
    loop.say(f"{loop.label}: {name} at iteration {done}: checkpoint saved")
    raise stopped_by(signum, f"stopped by {name} at iteration {done}; checkpoint saved")


def _finish(loop: _Loop) -> TrainResult:
    """The final weights, and the figures of this process's training."""
    save_final(loop.run_dir, loop.model, loop.max_iter)
    seconds = time.perf_counter() - loop.t0
    if loop.steps is not None:
        loop.steps.close()
    return TrainResult(loop.max_iter, seconds, loop.images / max(seconds, 1e-9), loop.start)
