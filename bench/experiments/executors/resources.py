"""What one run asks a scheduler for, and which executor options make sense together."""
from __future__ import annotations

import re

from bench.errors import BenchError
from bench.experiments.options import EXECUTORS, ExecutorOptions
from bench.protocol import Protocol

# The shipped protocols meant for a CPU (see the README's protocol table); any other asks for a GPU.
CPU_PROTOCOLS = ("cpu", "smoke")
SLURM_ONLY = {"partition": "--partition", "mem": "--mem", "time": "--time", "max_parallel": "--max-parallel",
              "slurm_args": "--slurm-arg"}


def gpus_per_run(ex: ExecutorOptions, device: str, protocol: Protocol) -> int:
    """``--gpus-per-run``, else 1 when the run will want CUDA: ``--device cuda``, or ``auto`` under
    a GPU protocol (``paper`` or your own file); 0 with ``--device cpu`` or under ``cpu`` / ``smoke``."""
    if ex.gpus_per_run is not None:
        return ex.gpus_per_run
    if device.startswith("cuda"):
        return 1
    if device == "cpu":
        return 0
    return 0 if protocol.name.split("@")[0] in CPU_PROTOCOLS else 1


def cpus_per_run(ex: ExecutorOptions, protocol: Protocol) -> int:
    """``--cpus-per-run``, else the protocol's data-loader workers plus the training process."""
    return ex.cpus_per_run if ex.cpus_per_run is not None else protocol.num_workers + 1


def check(ex: ExecutorOptions) -> None:
    """One clear error for options that don't fit the chosen executor."""
    if ex.name not in EXECUTORS:
        raise BenchError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{ex.name}'")
    if ex.name != "slurm":
        given = [flag for attr, flag in SLURM_ONLY.items() if getattr(ex, attr)]
        if given:
            raise BenchError(f"{', '.join(given)} only apply to --executor slurm")
    if ex.name != "ray" and ex.ray_address:
        raise BenchError("--ray-address only applies to --executor ray")
    if ex.name == "local" and (ex.gpus_per_run is not None or ex.cpus_per_run is not None):
        raise BenchError("--gpus-per-run and --cpus-per-run apply to --executor slurm or ray; local runs use "
                         "this machine (choose the device with --device)")
    for flag, value in (("--gpus-per-run", ex.gpus_per_run), ("--cpus-per-run", ex.cpus_per_run)):
        if value is not None and value < (0 if flag == "--gpus-per-run" else 1):
            raise BenchError(f"{flag} must be at least {0 if flag == '--gpus-per-run' else 1}, got {value}")
    if ex.max_parallel is not None and ex.max_parallel < 1:
        raise BenchError(f"--max-parallel must be at least 1, got {ex.max_parallel}")
    if ex.workers < 1:
        raise BenchError(f"--workers must be at least 1, got {ex.workers}")
    if ex.name == "local" and ex.workers != 1:
        raise BenchError("--workers applies to --executor slurm or ray (on one machine, start several "
                         "`bench tune` processes on one --storage instead)")
    if ex.time is not None:
        slurm_minutes(ex.time)
    if ex.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", ex.mem.strip(), re.IGNORECASE):
        raise BenchError(f"--mem expects a Slurm size such as 32G or 64000M, got '{ex.mem}'")


def parse_slurm_args(items: list[str]) -> dict[str, str]:
    """``--slurm-arg KEY=VALUE`` (any sbatch option without its dashes: account=lab, qos=high)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not value.strip():
            raise BenchError(f"--slurm-arg expects KEY=VALUE (e.g. account=mylab), got '{item}'")
        out[key] = value.strip()
    return out


_TIME = re.compile(r"(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


def slurm_minutes(text: str) -> int:
    """A Slurm time limit in whole minutes (rounded up): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise BenchError(f"--time expects a Slurm time such as 90, 8:00:00 or 2-00:00:00, got '{text}'")
    d, a, b, c = (int(v) if v is not None else None for v in m.group("d", "a", "b", "c"))
    if d is not None:  # D-H[:M[:S]]
        seconds = d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # M:S
        seconds = a * 60 + b
    else:  # M
        seconds = a * 60
    return -(-seconds // 60)
