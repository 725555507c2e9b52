"""What a user typed or a file holds reaches the console as it is, and every name that becomes a path
follows the one name rule (issue 25: items 15, 16, 17, 20, 21, 22, 24, 26, the stray ``seedabc``
folder and ``name: ".hidden"``). Refusals run in process through ``bench.cli.main`` (the entry point's
code path); ``bench status`` in a fresh process, to read its table as a user's terminal shows it."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from helpers import bench_cli

from bench.cli import main
from bench.protocol import load_protocol


@pytest.fixture()
def bench(capsys, monkeypatch):
    """``bench ARGS`` in this process: (exit status, stderr)."""

    def call(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        return e.value.code, capsys.readouterr().err

    return call


def _one_line(result: tuple[int, str], *needles: str) -> None:
    code, err = result
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("path", ["w/[bold]preds", "w/[/]preds", "w/[red]x[/]/:smile:"])
def test_a_path_is_printed_as_it_was_given_never_as_markup(bench, tmp_path, tiny_dataset, path):
    """Items 15 and 16: `[/]` raised rich's MarkupError, `[bold]` vanished from the path, `:smile:` became an emoji."""
    _one_line(bench("evaluate", "--pred", tmp_path / path, "--ref", tiny_dataset, "--name", "x",
                    "--results", tmp_path / "r"), f"error: --pred {tmp_path / path}: folder not found")
    _one_line(bench("predict", tmp_path / "run", "--input", tmp_path / f"{path}.nii.gz", "--out", tmp_path / "o"),
              f"--input {tmp_path / path}.nii.gz")


def _manifest(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(fields))
    return folder


def test_status_shows_texts_as_they_are_reads_odd_job_files_lists_external_runs_and_names_stray_folders(tmp_path):
    """Items 15, 16, 17, 24 and the stray `seedabc` folder, through `bench status`."""
    results = tmp_path / "results"
    error = "ValueError: unknown keys [foo, bar] in [/]x :smile:"
    _manifest(results / "tiny" / "smoke" / "unet" / "seed0", status="failed", error=error)
    partial = results / "tiny" / "smoke" / "swinunet" / "seed0"
    partial.mkdir(parents=True)
    (partial / "job.json").write_text('{"executor": "slurm"}')
    _manifest(results / "tiny" / "external" / "nnunet", kind="external", status="complete",
              source={"predictions": "/data/[bold]nnunet", "files": {"case0001": "case0001.nii.gz"}})
    _manifest(results / "tiny" / "smoke" / "unet" / "seedabc", status="complete")
    res = bench_cli("status", "--results", str(results))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert error in res.stdout and "/data/[bold]nnunet" in res.stdout
    assert "job.json names no Slurm job" in res.stdout
    row = next(line for line in res.stdout.splitlines() if "nnunet" in line)
    assert "external" in row and "1 cases" in row and "complete" in row
    assert "skipped 1 folder(s) that hold a manifest or job.json but are not run folders" in res.stdout
    assert str(results / "tiny" / "smoke" / "unet" / "seedabc") in res.stdout
    assert "1 complete, 1 failed, 1 unknown" in res.stdout


@pytest.mark.parametrize("study, problem", [("..", "contains '..'"), ("../elsewhere", "contains a path separator"),
                                            (".hidden", "starts with '.'")])
def test_a_study_name_that_would_leave_the_tune_folder_is_refused(bench, tmp_path, study, problem):
    """Item 20: `--study ..` wrote study.json, trials.csv, the plots and trial0/ into the results root."""
    results = tmp_path / "results"
    _one_line(bench("tune", "--model", "unet", "--study", study, "--trials", "1", "--results", results),
              f"--study: study name {study!r} {problem}")
    assert not results.exists()


@pytest.mark.parametrize("args, needle", [
    (["--slurm-arg", "account=lab\ntouch X"], "--slurm-arg account: the value holds a newline"),  # item 21
    (["--slurm-arg", "signal=KILL@1"], "the harness sets signal"),  # item 22
    (["--slurm-arg", "output=/tmp/elsewhere.log"], "add --slurm-override output to replace it anyway"),
    (["--slurm-override", "account", "--slurm-arg", "account=lab"], "--slurm-override account: not a key"),
])
def test_slurm_args_are_checked_before_anything_is_submitted(bench, tmp_path, args, needle):
    _one_line(bench("run", "--models", "unet", "--executor", "slurm", *args, "--results", tmp_path / "r"), needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("file, name, needle", [
    ("external.yaml", None, "name 'external' must be a plain folder name (it names the runs' folder): it is reserved"),
    ("p.yaml", ".hidden", "name '.hidden' must be a plain folder name (it names the runs' folder): it starts with '.'"),
])
def test_a_protocol_may_not_be_called_external_or_hide(bench, tmp_path, file, name, needle):
    """Item 26 (`external` made trained and external runs share a folder) and `name: ".hidden"`."""
    data = load_protocol("smoke").model_dump(exclude={"name"}, mode="json") | ({"name": name} if name else {})
    path = tmp_path / file
    path.write_text(yaml.safe_dump(data))
    _one_line(bench("run", "--models", "unet", "--protocol", path, "--results", tmp_path / "r"), str(path), needle)
    assert not (tmp_path / "r").exists()


def test_the_consoles_read_no_markup_and_no_emoji_codes():
    """The rule behind items 15 and 16: every console a command prints on takes text as it is."""
    from rich.console import Console
    from rich.text import Text

    from bench.cli.options import console, err_console
    from bench.engine.progress import progress_display
    from bench.experiments.options import RunOptions

    for c in (console, err_console, RunOptions().out):
        assert not c._markup and not c._emoji
    quiet = Console(file=open(os.devnull, "w"), markup=False)
    column = progress_display(quiet).columns[0]
    task = type("Task", (), {"description": "swinunet@depths=[2,2] [/]"})()
    assert column.render(task) == Text("swinunet@depths=[2,2] [/]")
