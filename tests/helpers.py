"""Helpers the tests import: where things are, and calling the CLI as a user would."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


def need_nnunet() -> None:
    """Skip without nnunetv2, saying why; with SEGBENCH_REQUIRE_NNUNET (CI) a missing nnunetv2 fails instead."""
    from bench.errors import BenchError
    from bench.experiments.nnunet import nnunet_version

    try:
        nnunet_version()
    except BenchError as e:
        if os.environ.get("SEGBENCH_REQUIRE_NNUNET"):
            pytest.fail(f"{e} (SEGBENCH_REQUIRE_NNUNET is set)")
        pytest.skip(str(e))


def _disc_scene(seed: int, disc: bool = True, bar: bool = True):
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    label = np.zeros((64, 64), np.uint8)
    if disc:
        cy, cx, r = rng.integers(22, 42), rng.integers(22, 42), rng.integers(7, 13)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    if bar:
        x0 = int(rng.integers(8, 40))
        label[4:10, x0 : x0 + 16] = 2
    image = (50 + 140 * (label == 1) + 70 * (label == 2) + rng.normal(0, 15, (64, 64))).clip(0, 255)
    return image.astype(np.uint8), label


def nnunet_discs(root: Path) -> Path:
    """An nnU-Net raw 2D dataset (64 x 64 PNG) of 8 training and 3 test images, a disc (1) and a bar (2) on
    noise: the test cases hold both, a disc only, and nothing, so every empty-mask case of a Dice occurs."""
    import json

    from PIL import Image

    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    cases = [(f"tr_{i}", "Tr", _disc_scene(i, bar=i % 3 != 0)) for i in range(8)]
    cases += [("ts_both", "Ts", _disc_scene(20)), ("ts_disc", "Ts", _disc_scene(21, bar=False)),
              ("ts_none", "Ts", _disc_scene(22, disc=False, bar=False))]
    for name, split, (image, label) in cases:
        Image.fromarray(image).save(root / f"images{split}" / f"{name}_0000.png")
        Image.fromarray(label).save(root / f"labels{split}" / f"{name}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "gray"}, "labels": {"background": 0, "disc": 1, "bar": 2}, "numTraining": 8,
        "file_ending": ".png"}))
    return root


def chromium() -> str | None:
    """Chromium (or Chrome) on PATH, for the tests that render a report in a real browser."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def browse(html: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``html`` with ``args`` (``--dump-dom``, ``--screenshot=...``), a fresh profile."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             *args, html.resolve().as_uri()], capture_output=True, text=True, timeout=180)
