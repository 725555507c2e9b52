"""Helpers the tests import: where things are, and calling the CLI as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout
# ../shared beside the checkout (CI has it; a user's clone may not); SEGBENCH_SHARED points elsewhere
# (a git worktree in another folder)
SHARED = Path(os.environ.get("SEGBENCH_SHARED") or ROOT.parent / "shared")


def subprocess_env() -> dict[str, str]:
    """Subprocess environment: one torch thread each, so concurrent test processes don't thrash."""
    return dict(os.environ, COLUMNS="200", NO_COLOR="1", OMP_NUM_THREADS="1")


def bench_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m bench ARGS`` in a fresh process and capture its output."""
    env = subprocess_env()
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
