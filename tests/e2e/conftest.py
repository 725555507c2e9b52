"""Fixtures of the whole-CLI fault tests: the short protocol of ``resume_runs`` as a file, and one
uninterrupted run of it that interrupted runs are compared with, bit for bit."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import bench_cli
from resume_runs import RESUME_MODELS, RESUME_PROTOCOL, resume_args


@pytest.fixture(scope="session")
def resume_protocol(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("protocol") / "resume.yaml"
    path.write_text(RESUME_PROTOCOL)
    return path


@pytest.fixture(scope="session")
def resume_reference(tiny_dataset, resume_protocol, tmp_path_factory) -> Path:
    """The results folder of an uninterrupted run of both models (weights kept)."""
    results = tmp_path_factory.mktemp("reference") / "results"
    res = bench_cli(*resume_args(resume_protocol, tiny_dataset, results, ",".join(RESUME_MODELS)))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    return results
