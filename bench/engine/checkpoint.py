"""Checkpoints: what a run needs to resume exactly, stored as tensors and numbers only.

A checkpoint holds the weights, the optimizer and grad-scaler state, the iteration and every
random stream training draws from (torch CPU and CUDA, numpy's and Python's global generators),
all as tensors, plain containers and numbers. It is read back with ``torch.load(weights_only=True)``
only, so a file planted in a results folder (a shared disk, results copied from a colleague) can
never run code: a pickle that asks for anything else is refused with one line naming the file.

Reading tells three cases apart:
- *unreadable*: truncated, corrupt, or not a checkpoint at all (what a kill mid-write or a full
  disk leaves). Reported, and the previous checkpoint (or a fresh start) is used.
- *refused*: a pickle that would build objects other than tensors and numbers. A ``BenchError``:
  such a file is never written by segbench, so someone must look at it.
- anything else (out of memory, a permission error, a bug) propagates with its traceback.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from bench.engine.results import CHECKPOINT, FINAL_WEIGHTS
from bench.errors import BenchError
from bench.files import atomic_write

PREVIOUS = CHECKPOINT + ".prev"
CHECKPOINT_KEYS = {"model", "optimizer", "iteration"}
# pickle opcodes that import or call something: never needed for tensors, numbers and containers
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1",
                 "EXT2", "EXT4"}


class UnsafeCheckpoint(BenchError):
    """A results-folder file that would run code if it were unpickled."""


# --- random streams ---------------------------------------------------------------------------

def capture_rng(device: torch.device) -> dict:
    """Every global random stream as tensors and numbers (loadable with ``weights_only=True``)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np.asarray(key).astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    """Put back the streams :func:`capture_rng` saved (older checkpoints saved only torch's).

    A checkpoint written on a CPU and resumed on a GPU has no CUDA state: the CUDA stream then
    starts from the run's seed (a resume across devices is never bit-identical anyway).
    """
    if "rng" not in state:  # written before numpy and Python's streams were kept
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])


# --- writing ----------------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Replace the checkpoint; the last good one stays as ``checkpoint.pt.prev`` until the new one is in."""
    path, prev = run_dir / CHECKPOINT, run_dir / PREVIOUS
    buf = io.BytesIO()
    torch.save(state, buf)
    if path.exists():
        os.replace(path, prev)
    atomic_write(path, lambda p: p.write_bytes(buf.getvalue()))


def save_final(run_dir: Path, model: torch.nn.Module, iteration: int) -> None:
    """The trained weights alone (half a checkpoint's size: no optimizer state is needed any more)."""
    state = {"model": model.state_dict(), "iteration": iteration}
    atomic_write(run_dir / FINAL_WEIGHTS, lambda p: torch.save(state, p))
    for name in (CHECKPOINT, PREVIOUS):
        (run_dir / name).unlink(missing_ok=True)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what a writer killed mid-write left (``.<name>.*.tmp``); call it holding the run's lock."""
    stale = [p for d in (run_dir, run_dir / "predictions") if d.is_dir() for p in d.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# --- reading ----------------------------------------------------------------------------------

def _code_in_raw_pickle(head: bytes, path: Path) -> list[str]:
    """The opcodes that would import or call something, if ``path`` is a whole bare pickle of any
    protocol (read with pickletools, never executed); [] for anything else."""
    if head.startswith(b"PK"):  # a zip archive, truncated or torn: not a pickle
        return []
    try:
        ops = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}
    except Exception:  # not a well-formed pickle: nothing that could be loaded
        return []
    return sorted(ops & _CODE_OPCODES)


def _archive_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ``torch.save`` archive (truncated, corrupt, other content), or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, EOFError) as e:
        return f"not a whole checkpoint archive: {e}"
    if bad is not None:
        return f"corrupt archive member {bad}"
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "not a torch checkpoint archive (no data.pkl)"
    return None


def _refuse(path: Path, what: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(f"{path}: refused to load: {what}; segbench never writes such a file (remove it, "
                            "or rerun with --force, to start this run afresh)")


def check_safe(path: Path) -> str | None:
    """Raise :class:`UnsafeCheckpoint` if ``path`` would run code when loaded; else why it is
    unreadable (truncated, not a checkpoint), or None when it is a whole, tensors-only archive."""
    with open(path, "rb") as f:
        head = f.read(4)
    problem = _archive_problem(path)
    if problem is not None:
        code = _code_in_raw_pickle(head, path)
        if code:
            raise _refuse(path, f"a pickle that imports or calls objects ({', '.join(code)})")
        return problem
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    unsafe = scan(str(path)) if scan is not None else []  # else torch.load(weights_only=True) refuses them
    if unsafe:
        raise _refuse(path, f"it asks for {', '.join(sorted(unsafe)[:4])}, not only tensors and numbers")
    return None


def read_state(path: Path, keys: set[str], say=print) -> dict | None:
    """``path``'s dict if it exists and holds ``keys``; None (and a line) if it is unreadable.

    Raises :class:`UnsafeCheckpoint` for a file that would run code; other errors propagate.
    """
    if not path.exists():
        return None
    problem = check_safe(path)
    if problem is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # what the static check could not see
            raise _refuse(path, str(e).strip().splitlines()[-1]) from None
        if not isinstance(state, dict):
            problem = f"holds a {type(state).__name__}, not a checkpoint"
        elif not keys <= set(state):
            problem = f"not a checkpoint (no {', '.join(sorted(keys - set(state)))})"
        else:
            return state
    say(f"{path} is unreadable ({problem}); ignoring it")
    return None


def load_final(run_dir: Path, say=print) -> dict | None:
    """A finished training's weights ({"model", "iteration"}), or None."""
    return read_state(run_dir / FINAL_WEIGHTS, {"model", "iteration"}, say)


def load_checkpoint(run_dir: Path, say=print) -> dict | None:
    """The newest readable checkpoint, falling back to the previous one; None for a fresh start."""
    for path in (run_dir / CHECKPOINT, run_dir / PREVIOUS):
        state = read_state(path, CHECKPOINT_KEYS, say)
        if state is not None:
            return state
    return None


def check_run_folder(run_dir: Path) -> None:
    """Before any training: refuse (``UnsafeCheckpoint``) a run folder whose checkpoint or weights
    file would run code when the run resumes."""
    for name in (CHECKPOINT, PREVIOUS, FINAL_WEIGHTS):
        if (run_dir / name).is_file():
            check_safe(run_dir / name)
