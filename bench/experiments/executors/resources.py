"""What one run asks a scheduler for, and which executor options make sense together."""
from __future__ import annotations

import re

from bench.errors import BenchError
from bench.experiments.options import EXECUTORS, ExecutorOptions
from bench.protocol import Protocol, parse_protocol_name

# The shipped protocols meant for a CPU (see the README's protocol table); any other asks for a GPU.
CPU_PROTOCOLS = ("cpu", "smoke")
SLURM_ONLY = {"partition": "--partition", "mem": "--mem", "time": "--time", "max_parallel": "--max-parallel",
              "slurm_args": "--slurm-arg", "slurm_overrides": "--slurm-override"}


def gpus_per_run(ex: ExecutorOptions, device: str, protocol: Protocol) -> int:
    """``--gpus-per-run``, else 1 when the run will want CUDA: ``--device cuda``, or ``auto`` under
    a GPU protocol (``paper`` or your own file); 0 with ``--device cpu`` or under ``cpu`` / ``smoke``."""
    if ex.gpus_per_run is not None:
        return ex.gpus_per_run
    if device.startswith("cuda"):
        return 1
    if device == "cpu":
        return 0
    return 0 if parse_protocol_name(protocol.name)[0] in CPU_PROTOCOLS else 1


def cpus_per_run(ex: ExecutorOptions, protocol: Protocol) -> int:
    """``--cpus-per-run``, else the protocol's threads plus one CPU per data-loader worker (each worker
    is a process of its own with one thread). Fewer CPUs than the protocol's threads is an error: the
    run would still use its threads (they are part of its numbers), on CPUs it was not given."""
    if ex.cpus_per_run is None:
        return protocol.threads + protocol.num_workers
    if ex.cpus_per_run < protocol.threads:
        raise BenchError(f"--cpus-per-run {ex.cpus_per_run}: protocol {protocol.name} runs {protocol.threads} "
                         f"threads per run (its 'threads', part of its numbers); ask for at least "
                         f"{protocol.threads} (the default is {protocol.threads + protocol.num_workers}: "
                         f"+ {protocol.num_workers} data-loader workers), or --set threads={ex.cpus_per_run} "
                         "for another recipe")
    return ex.cpus_per_run


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


# sbatch options the harness writes into every batch script (slurm.submit, and submitit under it). These are
# never replaced by --slurm-arg: each has a flag of its own, or the harness cannot work without it.
SLURM_OWN = {"partition": "use --partition", "time": "use --time", "mem": "use --mem",
             "cpus-per-task": "use --cpus-per-run", "gpus-per-node": "use --gpus-per-run",
             "array": "one array task per run; use --max-parallel for its %K",
             "requeue": "always on: a preempted task is requeued and resumes from its checkpoint",
             "no-requeue": "requeue is always on: a preempted task is requeued and resumes from its checkpoint"}
# These hold up what the harness promises; --slurm-arg replaces one only when --slurm-override KEY names it.
SLURM_RESERVED = {
    "signal": "the warning (USR1@120) on which a run checkpoints and requeues itself",
    "output": "the batch log beside the task log that job.json and bench status name",
    "error": "the batch log beside the task log that job.json and bench status name",
    "open-mode": "a requeued task appends to its logs", "nodes": "one process per run",
    "ntasks": "one process per run", "ntasks-per-node": "one process per run",
    "job-name": "the name the harness gives its jobs", "wckey": "the workload key submitit sets",
}
# how submitit spells the keys it writes itself (an override must replace that entry, not add a second line)
SUBMITIT_SPELLING = {"job-name": "job_name"}
_KEY = re.compile(r"[a-z][a-z0-9-]*")
_PREFIX_OPTIONS = ("gpus",)  # sbatch options of their own that are also prefixes of a key above


def slurm_key(key: str) -> str:
    """The sbatch option a --slurm-arg key means: without dashes, ``_`` as ``-``, and an abbreviation of a key
    the harness writes (sbatch, like getopt, takes ``--sig`` for ``--signal``) as that key."""
    name = key.strip().lstrip("-").replace("_", "-").lower()
    if name in _PREFIX_OPTIONS or name in SLURM_OWN or name in SLURM_RESERVED:
        return name
    return next((full for full in (*SLURM_OWN, *SLURM_RESERVED) if full.startswith(name)), name) if name else name


def _check_slurm_arg(item: str, key: str, value: str, overrides: set[str]) -> None:
    if not key or not value.strip() or not _KEY.fullmatch(key):
        raise BenchError(f"--slurm-arg expects KEY=VALUE with an sbatch option name (e.g. account=mylab), got {item!r}")
    if not value.isprintable():
        raise BenchError(f"--slurm-arg {key}: the value holds a newline or another control character ({value!r}); "
                         "each --slurm-arg is one line of the batch script")
    if key in SLURM_OWN:
        raise BenchError(f"--slurm-arg {item.strip()}: the harness sets {key} ({SLURM_OWN[key]})")
    if key in SLURM_RESERVED and key not in overrides:
        raise BenchError(f"--slurm-arg {item.strip()}: the harness sets {key} ({SLURM_RESERVED[key]}); "
                         f"add --slurm-override {key} to replace it anyway")


def parse_slurm_args(items: list[str], overrides: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """``--slurm-arg KEY=VALUE`` (any sbatch option without its dashes: account=lab, qos=high), checked.

    A value is one line (no newline or control character); a key the harness writes itself is refused:
    those it cannot work without or that have a flag of their own always (``SLURM_OWN``, the message
    names the flag), the others (``SLURM_RESERVED``) unless ``--slurm-override KEY`` names them: then
    they replace the harness's value.
    """
    wanted = set()
    for name in overrides:
        key = name.strip().lstrip("-").replace("_", "-").lower()
        if key in SLURM_OWN:
            raise BenchError(f"--slurm-override {name}: {key} cannot be overridden ({SLURM_OWN[key]})")
        if key not in SLURM_RESERVED:
            raise BenchError(f"--slurm-override {name}: not a key the harness sets (those are "
                             f"{', '.join(SLURM_RESERVED)}); other keys need no override")
        wanted.add(key)
    out: dict[str, str] = {}
    for item in items:
        raw, sep, value = item.partition("=")
        key = slurm_key(raw) if sep else ""
        _check_slurm_arg(item, key, value, wanted)
        out[SUBMITIT_SPELLING.get(key, key)] = value.strip()
    unused = wanted - {slurm_key(k) for k in out}
    if unused:
        raise BenchError(f"--slurm-override {', '.join(sorted(unused))}: no --slurm-arg sets it")
    return out


_TIME = re.compile(r"(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


def slurm_minutes(text: str) -> int:
    """A Slurm time limit in whole minutes (rounded up): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _TIME.fullmatch(text.strip())
    if not m:
        raise BenchError(f"--time expects a Slurm time such as 90, 8:00:00 or 2-00:00:00, got '{text}'")
    d, a, b, c = (int(v) if v is not None else None for v in m.group("d", "a", "b", "c"))
    a = a or 0  # the pattern always has it
    if d is not None:  # D-H[:M[:S]]
        seconds = d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + (b or 0) * 60 + c
    elif b is not None:  # M:S
        seconds = a * 60 + b
    else:  # M
        seconds = a * 60
    return -(-seconds // 60)
