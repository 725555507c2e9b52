"""Misuse of the real ``bench`` entry point: click's short usage message and exit 2, never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import bench_cli, subprocess_env

BENCH = Path(sys.executable).parent / "bench"  # the console script pip installed


def _bench(*args: str) -> subprocess.CompletedProcess:
    if not BENCH.exists():
        pytest.skip(f"no `bench` entry point beside {sys.executable}: install the project (pip install -e .)")
    return subprocess.run([str(BENCH), *args], env=subprocess_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("args", "expected"), [
    (("run", "--modls", "unet"), "No such option: --modls"),
    (("run",), "Missing option '--models'"),
    (("runn",), "No such command 'runn'. Did you mean 'run'?"),
    (("run", "--models", "unet", "--iterations", "many"), "Invalid value for '--iterations'"),
    (("data", "split"), "Missing argument 'dataset'"),
])
def test_usage_errors_are_short(args, expected):
    res = _bench(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert expected in res.stderr
    assert "Usage: bench" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert len(res.stderr.splitlines()) <= 8


def test_project_errors_are_one_line(tmp_path):
    res = _bench("run", "--models", "nosuch", "--protocol", "smoke", "--results", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.startswith("error: unknown model 'nosuch'; valid models: ")
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only the project's own errors are turned into one line: a KeyError from a bug is not hidden."""
    code = ("import sys; import bench.cli, bench.experiments.sweep as s\n"
            "def boom(*a, **k): raise KeyError('a bug')\n"
            "s.sweep = boom\n"
            "sys.argv = ['bench', 'run', '--models', 'unet']\n"
            "bench.cli.main()\n")
    res = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1 and "Traceback" in res.stderr and "KeyError: 'a bug'" in res.stderr


def test_help_works():
    res = _bench("--help")
    assert res.returncode == 0 and "run" in res.stdout and "paper" in res.stdout


def test_an_inference_size_the_model_cannot_take_is_one_line(tmp_path):
    res = bench_cli("run", "--models", "swinunet", "--protocol", "smoke", "--set", "evaluation.inference_size=448",
                    "--results", str(tmp_path))
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert errors[0].startswith("error: swinunet cannot infer at evaluation.inference_size 448 under protocol "
                                "smoke@evaluation.inference_size=448 (trained at 64): its weights at 448 differ")
    assert not any(tmp_path.rglob("model.pt"))


@pytest.mark.parametrize("columns", ["80", "200"])
def test_the_track_help_names_the_extra(columns):
    env = subprocess_env() | {"COLUMNS": columns}
    if not BENCH.exists():
        pytest.skip(f"no `bench` entry point beside {sys.executable}: install the project (pip install -e .)")
    res = subprocess.run([str(BENCH), "run", "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert "'segbench[track]'" in res.stdout  # Rich reads [track] as markup unless it is escaped
