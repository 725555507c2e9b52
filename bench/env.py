"""What a run records about the machine and the code it ran on."""
from __future__ import annotations

import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from bench.errors import BenchError

PACKAGES = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "numpy", "scipy", "medpy", "pandas")


def git_revision() -> str:
    """HEAD of the project checkout, with ``-dirty`` when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` of /proc/cpuinfo (Linux), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model string (``Intel(R) Xeon(R) Processor``, ``AMD EPYC 7B13``)."""
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_vendor() -> str:
    """The CPU's vendor (``GenuineIntel``, ``AuthenticAMD``; elsewhere the architecture, ``arm64``)."""
    return _cpuinfo("vendor_id") or platform.machine() or "unknown"


def device_info(device: torch.device) -> dict:
    """The manifest's account of the machine: device, torch threads, host and the CPU family (vendor and
    model: float sums differ between families, so a CPU run's last digits may too)."""
    info = {"device": str(device), "threads": torch.get_num_threads(), "host": socket.gethostname(),
            "cpu": cpu_name(), "cpu_vendor": cpu_vendor()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_device(name: str) -> torch.device:
    """``--device NAME`` as a torch device, without asking whether this machine has it."""
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise BenchError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None


def pick_device(name: str = "auto") -> torch.device:
    """The device to run on: ``auto`` (a GPU if there is one), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    A device this machine does not have is refused here, before anything runs.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise BenchError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BenchError(f"--device {name}: there are {torch.cuda.device_count()} GPUs (cuda:0 .. "
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise BenchError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu")
    elif device.type != "cpu":
        raise BenchError(f"--device {name}: segbench runs on auto, cpu, cuda, cuda:N or mps")
    return device
