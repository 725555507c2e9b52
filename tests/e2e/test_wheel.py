"""The built wheel works outside the source tree: protocols and published tables ship with it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest
from helpers import ROOT, subprocess_env


def _source_copy(dest):
    """The checkout's files as git sees them (tracked, or new and not ignored): no stale build/ folder."""
    res = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.skip(f"not a git checkout, cannot list the source files: {res.stderr.strip()}")
    for name in filter(None, res.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _build_wheel(out) -> object:
    src = _source_copy(out.parent / "src")
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    try:  # offline when the environment has a recent setuptools (the test environment does)
        if int(version("setuptools").split(".")[0]) >= 68:
            args.insert(4, "--no-build-isolation")
    except Exception:
        pass
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = list(out.glob("segbench-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel installed into a folder of its own (no dependencies: the test environment has them)."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(base / "dist")
    target = base / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                          str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return base, target


def _from_wheel(target, *args, cwd) -> subprocess.CompletedProcess:
    env = subprocess_env() | {"PYTHONPATH": str(target)}
    code = "import bench, sys; from bench.cli import main; sys.argv[0] = 'bench'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def test_the_wheel_is_what_runs(installed):
    base, target = installed
    env = subprocess_env() | {"PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", "import bench, models; print(bench.__file__, models.__file__)"],
                         cwd=base, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert all(p.startswith(str(target)) for p in res.stdout.split()), res.stdout
    shipped = {p.relative_to(target).as_posix() for p in target.rglob("*.yaml")}
    assert {"bench/protocols/cpu.yaml", "bench/protocols/paper.yaml", "bench/protocols/smoke.yaml",
            "bench/experiments/published/swin-unet.yaml", "bench/experiments/benchmarks/builtin.yaml"} <= shipped
    assert not any(p.startswith("tests/") for p in shipped)


def test_paper_table_from_the_installed_wheel(installed, tiny_dataset):
    base, target = installed
    work = base / "elsewhere"
    work.mkdir()
    res = _from_wheel(target, "paper", "swin-unet-synapse", "--protocol", "smoke", "--dataset", str(tiny_dataset),
                      "--iterations", "1", "--drop-weights", "--results", str(work / "results"),
                      "--out", str(work / "reports"), cwd=work)
    assert res.returncode == 0, res.stdout + res.stderr
    table = (work / "reports" / "tiny" / "smoke@iterations=1" / "papers" / "swin-unet-synapse" / "table.md").read_text()
    assert "79.13" in table  # Swin-Unet's published DSC on Synapse
    assert "| swinunet | ours |" in table
    assert os.path.commonpath([str(ROOT), str(work)]) != str(ROOT)  # it really ran outside the checkout


def test_the_shipped_benchmark_spec_is_found_by_name_from_the_wheel(installed):
    """`bench benchmark builtin` reads the spec inside the wheel (a bad --set stops it before any data or run)."""
    base, target = installed
    res = _from_wheel(target, "benchmark", "builtin", "--set", "input_sise=96", "--results", str(base / "r"), cwd=base)
    assert res.returncode == 2 and "--set: unknown key 'input_sise'" in res.stderr, res.stderr
    assert not (base / "r").exists()
