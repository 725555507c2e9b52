"""Compute accounting for model tables and run manifests: parameters, forward FLOPs, training and
inference speed."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast for a training step at ``precision`` (fp32: none; bf16 / fp16: autocast to that type)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def gflops(model: nn.Module, img_size: int, in_channels: int = 1) -> float:
    """Forward GFLOPs for one ``in_channels x img_size x img_size`` image, counted by PyTorch's
    ``FlopCounterMode``: a multiply-add is 2 FLOPs (so this is twice the "GMACs" many papers quote),
    and only matrix products, convolutions and attention are counted (not norms, activations,
    pooling or interpolation).

    The model runs once in eval mode on a zero image and is put back in its previous mode: no batch
    statistics, dropout masks or random numbers are consumed. Attention is routed through PyTorch's
    math kernel while counting, because the fused CPU kernel is not in the counter's table.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_channels, img_size, img_size, device=_device(model))
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


@dataclass
class TrainingSpeed:
    """Throughput of forward + backward + SGD step, and the memory it took."""

    images_per_second: float
    peak_memory_mb: float  # CUDA: max_memory_allocated; CPU: the process's peak RSS during the measurement
    memory_growth_mb: float  # the peak minus what was in use (CUDA: allocated; CPU: resident) before
    device: str
    batch: int
    steps: int  # timed steps; the rate is over their median
    step_seconds: float = 0.0  # the median step
    precision: str = "fp32"


def _reset_peak_rss() -> None:
    # Hand freed memory back to the OS (glibc keeps it resident otherwise, and a model measured after a
    # larger one would seem to need nothing), then reset the RSS high-water mark, which getrusage
    # reports, to the current RSS: each measurement sees its own peak. Linux only; elsewhere a no-op.
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, AttributeError):
        pass


def _max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def time_steps(step: Callable[[], object], steps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step()`` after ``warmup`` untimed ones (CUDA synchronised)."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def _reset_peak_memory(device: torch.device) -> float:
    """Start measuring peak memory now; the baseline (CUDA: bytes allocated; CPU: peak RSS in MB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return float(torch.cuda.memory_allocated(device))
    _reset_peak_rss()
    return _max_rss_mb()


def _peak_memory(device: torch.device, before: float) -> tuple[float, float]:
    """(peak MB, growth MB over ``before`` from ``_reset_peak_memory``)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        return peak, peak - before / 2**20
    peak = _max_rss_mb()
    return peak, peak - before


def measure_training(model: nn.Module, img_size: int, batch: int = 4, steps: int = 5, warmup: int = 2,
                     in_channels: int = 1, device: str | torch.device | None = None,
                     precision: str = "fp32") -> TrainingSpeed:
    """Training images per second (``batch`` over the median of ``steps`` timed steps, after ``warmup``
    untimed ones) and peak memory, with random images and labels, cross-entropy and SGD (lr 0.01,
    momentum 0.9), at ``precision`` as training runs it (see ``autocast``, ``grad_scaler``). The median
    keeps a step slowed by another process on a shared machine from counting.

    Trains ``model`` in place on ``device`` (default: CUDA if available): its weights change. On a CPU
    the memory is the process's peak RSS from ``resource.getrusage``, which includes the interpreter,
    libraries and the model itself; the growth is the part the training steps added. Where the peak
    cannot be reset (outside Linux) it is the peak of the whole process so far.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, in_channels, img_size, img_size, device=device, generator=g)
    with torch.no_grad():  # in eval mode: batch norm over one image would fail in training mode
        num_classes = model(x[:1]).shape[1]
    model.train()
    y = torch.randint(0, num_classes, (batch, img_size, img_size), device=device, generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = grad_scaler(precision, device)
    before = _reset_peak_memory(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            logits = model(x)
        scaler.scale(F.cross_entropy(logits.float(), y)).backward()
        scaler.step(optimizer)
        scaler.update()

    times = time_steps(step, steps, warmup, device)
    peak, growth = _peak_memory(device, before)
    optimizer.zero_grad(set_to_none=True)
    median = statistics.median(times)
    return TrainingSpeed(images_per_second=batch / median, peak_memory_mb=peak, memory_growth_mb=growth,
                         device=str(device), batch=batch, steps=steps, step_seconds=median, precision=precision)


@dataclass
class InferenceSpeed:
    """Throughput of evaluation-mode forward passes, and the memory they took."""

    slices_per_second: float  # at ``batch`` slices per forward pass
    ms_per_slice: float  # one slice per forward pass (the official evaluation's loop)
    peak_memory_mb: float  # as TrainingSpeed's
    memory_growth_mb: float
    device: str
    batch: int
    repeats: int
    precision: str = "fp32"


@torch.no_grad()
def measure_inference(model: nn.Module, img_size: int, batch: int = 8, repeats: int = 5, warmup: int = 1,
                      in_channels: int = 1, device: str | torch.device | None = None,
                      precision: str = "fp32") -> InferenceSpeed:
    """Evaluation-mode forward passes on random ``img_size`` slices at ``precision``: slices per second
    at ``batch`` slices per pass and milliseconds per slice one at a time, each over the median of
    ``repeats`` timed passes after ``warmup`` untimed ones; and the peak memory of the batched passes.

    The model is moved to ``device`` (default: CUDA if available) and left in eval mode; its weights
    are not changed. Memory is measured as in :func:`measure_training`.
    """
    if repeats < 1 or batch < 1:
        raise ValueError(f"repeats and batch must be at least 1, got {repeats} and {batch}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, in_channels, img_size, img_size, device=device, generator=g)

    def forward(inputs: torch.Tensor) -> Callable[[], object]:
        def run() -> object:
            with autocast(precision, device):
                return model(inputs)
        return run

    single = statistics.median(time_steps(forward(x[:1]), repeats, warmup, device))
    before = _reset_peak_memory(device)
    batched = statistics.median(time_steps(forward(x), repeats, warmup, device))
    peak, growth = _peak_memory(device, before)
    return InferenceSpeed(slices_per_second=batch / batched, ms_per_slice=1000 * single, peak_memory_mb=peak,
                          memory_growth_mb=growth, device=str(device), batch=batch, repeats=repeats,
                          precision=precision)
