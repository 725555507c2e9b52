"""A run's numerics: autocast precision, gradient scaling, cuDNN flags and CPU threads, as the protocol says.

The protocol decides, never the device: a GPU run trains in fp32 unless its protocol asks for
bf16 or fp16 (the official recipe is fp32), and a CPU run uses the protocol's thread count whatever
the machine or executor would have given it. What was applied, and whether the run can be repeated
bit for bit on this device, goes into the manifest (``record``).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bench.errors import BenchError
from bench.protocol import DEFAULT_THREADS, Cudnn, Protocol, recipe_hash
from models.compute import autocast, grad_scaler

__all__ = ["autocast", "grad_scaler", "check_precision", "apply_cudnn", "threads", "record", "legacy_autocast",
           "precision_of", "threads_of", "protocol_hash_of"]


def check_precision(precision: str, device: torch.device) -> None:
    """A BenchError when ``device`` cannot train at ``precision`` (before any run starts)."""
    if precision == "fp32":
        return
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise BenchError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                             "use --set precision=fp16 or fp32")
        return
    if device.type == "cpu" and precision == "bf16":
        return
    raise BenchError(f"precision {precision} is not available on {device.type} (fp16 needs CUDA; a CPU trains "
                     "in fp32 or bf16): use --set precision=fp32 or --set precision=bf16")


def apply_cudnn(cudnn: Cudnn, device: torch.device) -> None:
    """Set the protocol's cuDNN flags for this run (CUDA only: they mean nothing elsewhere)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn.benchmark
        torch.backends.cudnn.deterministic = cudnn.deterministic


@contextmanager
def threads(protocol: Protocol, device: torch.device) -> Iterator[None]:
    """The protocol's torch thread count for the block, on a CPU; the process's count again after it.

    On CUDA (or MPS) nothing changes: the CPU threads do not change a GPU run's numbers, and the
    process keeps the cores it was given for loading and scoring."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(protocol.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def record(protocol: Protocol, device: torch.device) -> dict:
    """The manifest's account of the numerics: precision, autocast, scaler, cuDNN and reproducibility."""
    cuda = device.type == "cuda"
    if device.type == "cpu":
        reproducible = True
        why = (f"CPU: the same seed gives the same weights and metrics with {protocol.threads} thread"
               f"{'s' if protocol.threads != 1 else ''} (the protocol's), the same CPU family and library versions")
    elif not cuda:
        reproducible = True
        why = f"{device.type}: the same seed gives the same weights and metrics on this device and library versions"
    elif protocol.cudnn.benchmark or not protocol.cudnn.deterministic:
        reproducible = False
        why = "CUDA with cuDNN autotuning or nondeterministic cuDNN algorithms"
    elif torch.are_deterministic_algorithms_enabled():
        reproducible = True
        why = "CUDA with deterministic cuDNN and torch.use_deterministic_algorithms"
    else:
        reproducible = False
        why = ("CUDA: cuDNN is deterministic, but other kernels (atomic adds in backward passes, e.g. "
               "index_put and upsampling) are not; metrics may differ slightly between runs of one seed")
    return {
        "precision": protocol.precision,
        "autocast": {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}[protocol.precision],
        "grad_scaler": protocol.precision == "fp16",
        "cudnn": {**protocol.cudnn.model_dump(), "applied": cuda},
        "threads_applied": device.type == "cpu",  # else ``threads`` is the process's count, not the numbers'
        "bit_reproducible": reproducible,
        "reproducibility": why,
    }


def legacy_autocast(manifest: dict) -> bool:
    """A run made on CUDA before precision was a protocol key: it trained under fp16 autocast, whatever
    its protocol hash says, so it is never the same run as today's fp32 one."""
    protocol = manifest.get("protocol") or {}
    return str(manifest.get("device", "")).startswith("cuda") and "precision" not in protocol


def precision_of(manifest: dict) -> str:
    """The precision a run trained at, from its manifest (runs made before the key: fp32, fp16 on CUDA)."""
    if manifest.get("precision"):
        return manifest["precision"]
    return "fp16" if legacy_autocast(manifest) else "fp32"


def threads_of(manifest: dict) -> int:
    """The CPU thread count that decided a run's numbers, from its manifest: the protocol's; for a run
    made before ``threads`` was a protocol key, the count it recorded on a CPU, and the neutral 1 on
    a GPU (where the CPU threads do not change the numbers)."""
    protocol = manifest.get("protocol") or {}
    if protocol.get("threads") is not None:
        return int(protocol["threads"])
    if str(manifest.get("device", "cpu")).startswith("cpu") and manifest.get("threads"):
        return int(manifest["threads"])
    return DEFAULT_THREADS


def protocol_hash_of(manifest: dict) -> str | None:
    """The hash of the recipe a run trained under: the one it recorded, except for a run made on a CPU
    before ``threads`` was a key with a count other than 1, which is the hash of its protocol with
    that count (an old ``cpu`` run with 2 threads has the hash of today's ``cpu``, which says 2)."""
    recorded = manifest.get("protocol_hash")
    protocol = manifest.get("protocol")
    if not isinstance(protocol, dict) or "threads" in protocol or threads_of(manifest) == DEFAULT_THREADS:
        return recorded
    return recipe_hash(protocol | {"threads": threads_of(manifest)})
