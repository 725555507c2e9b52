"""Peak memory of a run: host memory of the whole process tree, and CUDA's allocator peak.

Host memory is the proportional set size (PSS) of this process and its children (DataLoader
workers), summed, sampled every half second while the run trains and evaluates: pages shared
between processes count once, so the figure does not double the interpreter and libraries for
every worker. Outside Linux (no ``/proc``) it falls back to this process's peak RSS.
"""
from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

import torch


def _children(pid: int) -> list[int]:
    try:  # processes and threads come and go while they are read: a vanished one has no children
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_mb(pid: int | None = None) -> float:
    """PSS of ``pid`` (default: this process) and all its descendants, in MB."""
    todo, total = [pid or os.getpid()], 0
    while todo:
        p = todo.pop()
        total += _pss_kib(p)
        todo += _children(p)
    return total / 1024


def _cuda_index(device: torch.device) -> int | None:
    """The CUDA device's index (``cuda`` alone is the current one); None for another kind of device."""
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


_WATCHING: list[PeakMemory] = []  # the monitors open now, outermost first


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.record()`` for the manifest.

    Monitors nest (the evaluation's inside the run's): CUDA has one peak counter, which a monitor
    resets when it starts, so the peak so far is first handed to the monitors already open; and a
    nested monitor's host peak counts for the monitors around it (it may sample a moment they miss).
    """

    def __init__(self, device: torch.device, interval: float = 0.5) -> None:
        self.device, self.interval = device, interval
        self.host_mb = 0.0
        self.cuda_mb = 0.0  # the CUDA peak before a nested monitor reset the counter
        self.nested_mb = 0.0  # the host peaks nested monitors saw (their samples are this one's too)
        self._linux = Path("/proc/self/smaps_rollup").exists()
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.host_mb = max(self.host_mb, tree_pss_mb())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            so_far = torch.cuda.max_memory_allocated(self.device) / 2**20
            for outer in _WATCHING:
                if _cuda_index(outer.device) == _cuda_index(self.device):
                    outer.cuda_mb = max(outer.cuda_mb, so_far)
            torch.cuda.reset_peak_memory_stats(self.device)
        _WATCHING.append(self)
        if self._linux:
            self.host_mb = tree_pss_mb()
            self._thread = threading.Thread(target=self._watch, name="segbench-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self in _WATCHING:
            _WATCHING.remove(self)
        if self._linux:
            self._stop.set()
            self._thread.join()
            self.host_mb = max(self.host_mb, tree_pss_mb())
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.host_mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
        self.host_mb = max(self.host_mb, self.nested_mb)
        for outer in _WATCHING:
            outer.nested_mb = max(outer.nested_mb, self.host_mb)

    def record(self, prefix: str = "") -> dict:
        """``peak_host_memory_mb`` and, on CUDA, ``peak_cuda_memory_mb`` (max_memory_allocated), each
        key after ``prefix`` (``eval_``: the evaluation's)."""
        out = {"peak_host_memory_mb": round(self.host_mb, 1),
               "peak_host_memory": "PSS of the process tree" if self._linux else "peak RSS of the process"}
        if self.device.type == "cuda":
            peak = max(self.cuda_mb, torch.cuda.max_memory_allocated(self.device) / 2**20)
            out["peak_cuda_memory_mb"] = round(peak, 1)
        return {prefix + k: v for k, v in out.items()}
