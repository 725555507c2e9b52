"""Where things live on disk: a leaf module (it imports nothing of the project)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where generated data goes: $SEGBENCH_CACHE, else ~/.cache/segbench (never the repo)."""
    env = os.environ.get("SEGBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segbench"
