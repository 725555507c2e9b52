"""Helpers the tests import: where things are, and calling the CLI as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` made truly read-only for the block: chmod for a normal user; for root, whom
    permissions do not stop, a read-only bind mount of the folder onto itself (skips if not allowed)."""
    folder = Path(folder)
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            yield folder
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without permission to bind-mount a folder read-only")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
