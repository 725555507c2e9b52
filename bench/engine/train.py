"""One training loop for every model: poly LR per iteration, CE + Dice, exact resume.

Data order and augmentation come from (seed, epoch, index); dropout / drop-path draw from
torch's RNG, whose state is saved in every checkpoint. A run killed at any point and resumed
from its last checkpoint therefore ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from bench.data.sampling import IterationBatches, TrainSlices
from bench.data.synapse import Dataset
from bench.engine.losses import combined_loss
from bench.engine.results import CHECKPOINT, FINAL_WEIGHTS, TRAIN_LOG
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


def _worker_init(worker_id: int) -> None:
    # Items draw from their own (seed, epoch, index) generator; this only tames stray global use.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    return base_lr * (1 - iteration / max_iter) ** power


@dataclass
class TrainResult:
    iterations: int
    seconds: float
    images_per_second: float
    resumed_from: int


def _save_checkpoint(run_dir: Path, state: dict) -> None:
    path = run_dir / CHECKPOINT
    prev = run_dir / (CHECKPOINT + ".prev")
    buf = io.BytesIO()
    torch.save(state, buf)
    if path.exists():
        os.replace(path, prev)  # keep the last good one until the new one is in place
    atomic_write(path, lambda p: p.write_bytes(buf.getvalue()))


def _save_final(run_dir: Path, model: torch.nn.Module, iteration: int) -> None:
    """The trained weights alone (half a checkpoint's size: no optimizer state is needed any more)."""
    state = {"model": model.state_dict(), "iteration": iteration}
    atomic_write(run_dir / FINAL_WEIGHTS, lambda p: torch.save(state, p))
    for name in (CHECKPOINT, CHECKPOINT + ".prev"):
        (run_dir / name).unlink(missing_ok=True)


def _read_state(path: Path, keys: set[str], weights_only: bool, say) -> dict | None:
    """``path``'s dict if it exists, reads and holds ``keys``; a line and None if it is unreadable."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=weights_only)
        if not keys <= set(state):
            raise ValueError("missing keys")
        return state
    except Exception as e:
        say(f"[yellow]{path} is unreadable ({type(e).__name__}: {e}); ignoring it[/]")
        return None


def load_final(run_dir: Path, say=print) -> dict | None:
    """A finished training's weights ({"model", "iteration"}), or None."""
    return _read_state(run_dir / FINAL_WEIGHTS, {"model", "iteration"}, True, say)


def load_checkpoint(run_dir: Path, say=print) -> dict | None:
    """The newest readable checkpoint, falling back to the previous one; None for a fresh start."""
    for path in (run_dir / CHECKPOINT, run_dir / (CHECKPOINT + ".prev")):
        state = _read_state(path, {"model", "optimizer", "iteration", "torch_rng"}, False, say)
        if state is not None:
            return state
    return None


def _read_log(run_dir: Path, before: int) -> list[dict]:
    path = run_dir / TRAIN_LOG
    if not path.exists():
        return []
    with open(path) as f:
        return [r for r in csv.DictReader(f) if int(r["iteration"]) < before]


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
) -> TrainResult:
    """Train ``model`` in place under ``protocol``; resumes from ``run_dir``'s checkpoint if any.

    ``on_iteration(done)`` runs after every iteration (the LR search validates and prunes
    there); it may switch the model to eval mode, training mode is restored afterwards.
    """
    seed_everything(seed)
    model.to(device)
    max_iter = protocol.max_iterations(len(ds.train_slices))
    opt = torch.optim.SGD(
        model.parameters(), lr=base_lr, momentum=protocol.optimizer.momentum,
        weight_decay=protocol.optimizer.weight_decay,
    )
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    final = load_final(run_dir, say)
    if final is not None and int(final["iteration"]) == max_iter:
        model.load_state_dict(final["model"])  # trained before, only the evaluation was left
        say(f"resuming {label} after training ({max_iter} iterations done): evaluating {FINAL_WEIGHTS}")
        return TrainResult(max_iter, 0.0, 0.0, max_iter)
    start = 0
    state = load_checkpoint(run_dir, say)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state.get("scaler", {}))
        torch.set_rng_state(state["torch_rng"])
        if use_amp and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start = int(state["iteration"])
        say(f"resuming {label} from iteration {start} of {max_iter}")
    log = _read_log(run_dir, start)

    data = TrainSlices(ds, protocol.input_size, protocol.augmentation, seed)
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=IterationBatches(len(data), protocol.batch_size, seed, start, max_iter),
        num_workers=protocol.num_workers,
        worker_init_fn=_worker_init,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )

    def checkpoint(iteration: int) -> None:
        _save_checkpoint(run_dir, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "iteration": iteration, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if use_amp else None,
        })
        _write_log(run_dir, log)

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
    with _StopFlag() as stop:
        for it, (x, y) in enumerate(loader, start=start):
            lr = poly_lr(base_lr, it, max_iter, protocol.poly_power)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            loss, ce, dice = combined_loss(logits, y, protocol.loss.ce, protocol.loss.dice)
            value = loss.item()
            if not math.isfinite(value) or value > protocol.divergence_loss:
                raise Diverged(f"loss {value} at iteration {it}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            images += x.shape[0]
            log.append({"iteration": it, "loss": f"{value:.6f}", "ce": f"{ce.item():.6f}",
                        "dice": f"{dice.item():.6f}", "lr": f"{lr:.8g}",
                        "seconds": f"{time.perf_counter() - t0:.3f}"})
            done = it + 1
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
            if stop.signal:
                name = signal.Signals(stop.signal).name
                say(f"{label}: {name} at iteration {done}: checkpoint saved")
                kind = Preempted if stop.signal == signal.SIGUSR1 else Interrupted
                raise kind(f"stopped by {name} at iteration {done}; checkpoint saved")
    _write_log(run_dir, log)
    _save_final(run_dir, model, max_iter)
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress.remove_task(task)
    return TrainResult(max_iter, seconds, images / max(seconds, 1e-9), start)
