"""Turning a ``--dataset`` value into a dataset on disk."""
from __future__ import annotations

import os
from pathlib import Path

from bench.data import LIST_DIR, Dataset, open_synapse
from bench.errors import BenchError
from bench.labels import SYNAPSE_ORGANS


def cache_dir() -> Path:
    """Where generated data goes: $SEGBENCH_CACHE, else ~/.cache/segbench (never the repo)."""
    env = os.environ.get("SEGBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segbench"


def synthetic(seed: int = 0, say=print) -> Dataset:
    """The built-in synthetic abdomen, generated into the cache on first use."""
    from bench import synth

    root = cache_dir() / f"synthetic-seed{seed}"
    if not synth.is_current(root, seed):
        say(f"generating the synthetic abdomen (seed {seed}) into {root} ...")
        synth.generate(root, seed=seed)
    return open_synapse(root, "synthetic", SYNAPSE_ORGANS)


def resolve_dataset(spec: str, say=print) -> Dataset:
    """``synthetic`` or a folder in the Synapse layout."""
    if spec == "synthetic":
        return synthetic(say=say)
    root = Path(spec).expanduser()
    if not root.exists():
        raise BenchError(f"dataset folder not found: {root}")
    if not root.is_dir() or not any(root.iterdir()):
        raise BenchError(f"dataset folder is empty or not a folder: {root}")
    if not (root / LIST_DIR).is_dir():
        raise BenchError(f"{root}: not a dataset in the Synapse layout (no {LIST_DIR}/)")
    return open_synapse(root, root.name, SYNAPSE_ORGANS)
