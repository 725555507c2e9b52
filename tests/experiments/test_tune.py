"""The learning-rate search: `bench tune` under the smoke protocol, resuming, two workers on one
storage, failures as rows, pruning, equal budgets, the hand-off to `bench run --lr tuned`, and
that no test case is ever read while tuning.

The slow path (training) uses swinunet-nano, the cheapest model; the CLI tests run the real
command in subprocesses with one torch thread each.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import optuna
import pandas as pd
import pytest
from helpers import bench_cli, subprocess_env
from rich.console import Console

import bench.data.synapse
import bench.engine.evaluation
from bench.data.synapse import case_of
from bench.engine.settings import RunSettings
from bench.engine.train import Diverged
from bench.errors import BenchError
from bench.experiments.options import RunOptions
from bench.experiments.tune import search as tune_mod
from bench.experiments.tune import studies
from bench.experiments.tune.search import TrialSeededTPE, tune
from bench.experiments.tune.studies import (
    display_url,
    load_or_create_study,
    open_storage,
    redact,
    study_name,
    summary,
    tuned_lr,
)
from bench.protocol import load_protocol
from models.registry import UnknownModelError

MODEL = "swinunet-nano"


def _tune_args(dataset: Path, results: Path, storage: str, study: str, trials: int) -> list[str]:
    return ["tune", "--model", MODEL, "--trials", str(trials), "--protocol", "smoke", "--dataset", str(dataset),
            "--results", str(results), "--storage", storage, "--study", study, "--device", "cpu"]


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).trials


@pytest.fixture(scope="module")
def study(tiny_dataset, tmp_path_factory):
    """`bench tune --trials 3` into a fresh SQLite storage."""
    out = tmp_path_factory.mktemp("tune")
    storage = f"sqlite:///{out / 'X.db'}"
    res = bench_cli(*_tune_args(tiny_dataset, out / "results", storage, "S", 3))
    assert res.returncode == 0, res.stdout + res.stderr
    return out, storage, res


def _quiet(dataset: Path, results: Path, **changes) -> RunOptions:
    """Options of a smoke-protocol command on the CPU whose output goes nowhere."""
    console = Console(file=io.StringIO(), width=200)
    return RunOptions(protocol="smoke", dataset=str(dataset), run=RunSettings(results=results, device="cpu"),
                      console=console, **changes)


def _tune(dataset: Path, results: Path, models=(MODEL,), trials: int = 1, storage: str | None = None) -> int:
    return tune(list(models), _quiet(dataset, results), n_trials=trials, storage=storage)


def test_a_short_study_completes(study):
    out, storage, res = study
    trials = _trials(storage, "S")
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # validation scores every 2 of the 4 smoke iterations, the last one is the trial's value
    assert all(sorted(t.intermediate_values) == [2, 4] and t.value == t.intermediate_values[4] for t in trials)
    assert all(1e-3 <= t.params["lr"] <= 1e-1 for t in trials)
    folder = out / "results" / "tune" / "S"
    df = pd.read_csv(folder / "trials.csv")
    assert list(df["number"]) == [0, 1, 2] and set(df["state"]) == {"COMPLETE"}
    assert {"number", "state", "lr", "value", "datetime_start", "datetime_complete"} <= set(df.columns)
    assert (folder / "history.png").stat().st_size > 0 and (folder / "lr_vs_score.png").stat().st_size > 0
    for k in range(3):  # the training log stays, the weights don't
        assert (folder / f"trial{k}" / "train_log.csv").is_file()
        assert not list((folder / f"trial{k}").glob("checkpoint.pt*"))
        assert json.loads((folder / f"trial{k}" / "trial.json").read_text())["state"] == "COMPLETE"
    assert not (out / "results" / "tiny").exists()  # trials are not runs: nothing in the run tree
    said = " ".join(res.stdout.split())
    assert "3 trials added, 3 in the study" in said and "3 more trials per model" in said
    # the floor a trial must beat: the seeded model before training, measured once, kept with the study
    untrained = optuna.load_study(study_name="S", storage=storage).user_attrs["untrained_dsc"]
    assert 0 <= untrained < 1 and f"untrained (seed 0): validation DSC {untrained:.4f}" in said
    assert json.loads((folder / "study.json").read_text())["untrained_dsc"] == untrained


def test_a_second_call_adds_trials_to_the_same_study(study, tiny_dataset):
    out, storage, _ = study
    res = bench_cli(*_tune_args(tiny_dataset, out / "results", storage, "S", 2))
    assert res.returncode == 0, res.stdout + res.stderr
    trials = _trials(storage, "S")
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert len({t.params["lr"] for t in trials}) == 5  # a resumed sampler doesn't repeat itself
    assert len(pd.read_csv(out / "results" / "tune" / "S" / "trials.csv")) == 5


def test_two_workers_on_one_storage_share_the_study(tiny_dataset, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = _tune_args(tiny_dataset, tmp_path / "results", storage, "W", 2)
    procs = [subprocess.Popen([sys.executable, "-m", "bench", *args], env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stdout + stderr
    trials = _trials(storage, "W")
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["lr"] for t in trials}) == 4


def test_run_with_tuned_lr_records_the_study_and_trial(study, tiny_dataset):
    out, storage, _ = study
    best = optuna.load_study(study_name="S", storage=storage).best_trial
    res = bench_cli("run", "--models", MODEL, "--protocol", "smoke", "--dataset", str(tiny_dataset),
                    "--results", str(out / "results"), "--reports", str(out / "reports"),
                    "--lr", "tuned", "--storage", storage, "--study", "S")
    assert res.returncode == 0, res.stdout + res.stderr
    run = out / "results" / "tiny" / "smoke" / f"{MODEL}@lr=tuned-S" / "seed0"  # --study S: not the default study
    m = json.loads((run / "manifest.json").read_text())
    assert m["lr"] == pytest.approx(best.params["lr"])
    assert m["lr_source"] == f"study S trial {best.number}" and m["run"]["model"] == f"{MODEL}@lr=tuned-S"
    log = pd.read_csv(run / "train_log.csv")
    assert log["lr"].iloc[0] == pytest.approx(best.params["lr"], rel=1e-6)


def test_tuned_lr_errors_are_clear(study, tiny_dataset, tmp_path):
    from bench.experiments.sweep import sweep

    out, storage, _ = study

    def run(**kwargs):
        args = dict(lr="tuned") | kwargs
        return sweep([MODEL], _quiet(tiny_dataset, tmp_path / "r", reports=tmp_path / "rep"), **args)

    with pytest.raises(BenchError, match="no study 'nope'.*studies there: S"):
        run(storage=storage, studies=["nope"])
    with pytest.raises(BenchError, match="no tuning storage"):
        run()  # the default storage under an empty results folder
    with pytest.raises(BenchError, match="use them with --lr tuned"):
        run(lr="0.01", storage=storage)
    with pytest.raises(BenchError, match="expects numbers, 'default' or 'tuned'"):
        run(lr="fast")
    with pytest.raises(BenchError, match="lists an LR twice"):
        run(lr="tuned,0.02,tuned")


def test_tuning_never_reads_a_test_case(tiny_dataset, tmp_path, monkeypatch, one_thread):
    from bench.data.resolve import resolve_dataset

    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    ds = resolve_dataset(str(tiny_dataset), say=lambda *a: None)  # the one-off layout check, done beforehand
    test_cases = set(ds.test_cases)
    opened, volumes, slices = [], [], []
    real_file, real_volume, real_slice = h5py.File, bench.engine.evaluation.load_volume, bench.data.synapse.load_slice
    monkeypatch.setattr(h5py, "File", lambda path, *a, **k: opened.append(Path(path)) or real_file(path, *a, **k))
    monkeypatch.setattr(bench.engine.evaluation, "load_volume",
                        lambda d, c: volumes.append((d.eval_split, c)) or real_volume(d, c))
    monkeypatch.setattr(bench.data.synapse, "load_slice", lambda d, n: slices.append(n) or real_slice(d, n))
    assert _tune(tiny_dataset, tmp_path / "results") == 0
    assert volumes and slices  # the spies saw the validation and the training reads
    assert not {c for _, c in volumes} & test_cases
    assert not {case_of(s) for s in slices} & test_cases
    assert not [p for p in opened if p.name.split(".")[0] in test_cases]


def test_failed_trials_are_rows_and_the_study_goes_on(tiny_dataset, tmp_path, monkeypatch, one_thread):
    real_train, calls = tune_mod.train, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise Diverged("loss nan at iteration 0")
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tune_mod, "train", flaky)
    assert _tune(tiny_dataset, tmp_path / "results", trials=3) == 0
    name = study_name("tiny", MODEL, load_protocol("smoke"))
    folder = tmp_path / "results" / "tune" / name
    df = pd.read_csv(folder / "trials.csv")
    assert list(df["state"]) == ["FAIL", "FAIL", "COMPLETE"]
    assert df["error"].iloc[0].startswith("diverged: loss nan") and "out of memory" in df["error"].iloc[1]
    assert "traceback" in json.loads((folder / "trial1" / "trial.json").read_text())
    # the completed trial is the one --lr tuned takes (whether 4 smoke iterations beat the untrained model
    # is another question: test_a_study_without_signal_names_no_winner_and_is_refused)
    monkeypatch.setattr(studies, "no_signal", lambda study, best: None)
    lr, source = tuned_lr(f"sqlite:///{tmp_path / 'results' / 'tune' / 'optuna.db'}", name, MODEL,
                          load_protocol("smoke"), say=lambda *a: None)
    assert lr == pytest.approx(df["lr"].iloc[2]) and source == f"study {name} trial 2"


def test_equal_budgets_one_study_per_model(tiny_dataset, tmp_path, monkeypatch):
    def diverge(*args, **kwargs):
        raise Diverged("loss nan at iteration 0")

    monkeypatch.setattr(tune_mod, "train", diverge)
    models = (MODEL, "transunet-tiny")
    assert _tune(tiny_dataset, tmp_path / "results", models=models, trials=2) == 1  # no trial completed
    storage = f"sqlite:///{tmp_path / 'results' / 'tune' / 'optuna.db'}"
    smoke = load_protocol("smoke")
    names = optuna.study.get_all_study_names(open_storage(storage))
    assert sorted(names) == sorted(study_name("tiny", m, smoke) for m in models)
    for m in models:
        trials = _trials(storage, study_name("tiny", m, smoke))
        assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    # the same seeded sampler proposes the same learning rates to every model
    assert ([t.params["lr"] for t in _trials(storage, study_name("tiny", models[0], smoke))]
            == [t.params["lr"] for t in _trials(storage, study_name("tiny", models[1], smoke))])
    with pytest.raises(BenchError, match="no completed trial"):
        tuned_lr(storage, study_name("tiny", MODEL, smoke), MODEL, smoke)
    with pytest.raises(BenchError, match=f"tuned model {MODEL}"):
        tuned_lr(storage, study_name("tiny", MODEL, smoke), "unet", smoke)


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_pruned_trial_stops_at_the_first_validation(tiny_dataset, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(tune_mod, "make_pruner", lambda protocol: _AlwaysPrune())
    assert _tune(tiny_dataset, tmp_path / "results") == 1  # pruned is not complete
    name = study_name("tiny", MODEL, load_protocol("smoke"))
    (trial,) = _trials(f"sqlite:///{tmp_path / 'results' / 'tune' / 'optuna.db'}", name)
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [2]
    folder = tmp_path / "results" / "tune" / name / "trial0"
    assert json.loads((folder / "trial.json").read_text())["state"] == "PRUNED"
    assert not list(folder.glob("checkpoint.pt*"))


def test_resumed_or_parallel_samplers_never_repeat_and_stay_reproducible():
    storage = optuna.storages.InMemoryStorage()
    dist = optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)

    def ask(sampler, n):
        study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True, sampler=sampler,
                                    direction="maximize")
        out = []
        for _ in range(n):
            trial = study.ask({"lr": dist})
            study.tell(trial, 0.5)
            out.append(trial.params["lr"])
        return out

    first, second = ask(TrialSeededTPE(0), 2), ask(TrialSeededTPE(0), 2)  # two processes, one after the other
    assert len(set(first + second)) == 4
    again = optuna.create_study(sampler=TrialSeededTPE(0), direction="maximize")
    assert [again.ask({"lr": dist}).params["lr"] for _ in range(2)] == first


@pytest.mark.parametrize("url, shown, secret", [
    ("postgresql://bench:s3cret@db.lab/optuna", "postgresql://bench:***@db.lab/optuna", "s3cret"),
    ("postgresql://u:RET@PW@db.lab:5432/optuna", "postgresql://u:***@db.lab:5432/optuna", "RET@PW"),  # '@' in it
    ("postgresql://u:pa/ss?w@db.lab/optuna", "postgresql://u:***@db.lab/optuna", "pa/ss?w"),  # '/' and '?', raw
    ("mysql://u:p%40ss@db.lab/optuna", "mysql://u:***@db.lab/optuna", "p%40ss"),  # percent-encoded
    ("postgresql://db.lab/optuna?user=u&password=s3cret&sslmode=require",
     "postgresql://db.lab/optuna?user=u&password=***&sslmode=require", "s3cret"),
    ("postgresql://u@db.lab/optuna?sslpassword=k3y", "postgresql://u@db.lab/optuna?sslpassword=***", "k3y"),
    ("postgresql://db.lab/optuna?user=me@lab.org", "postgresql://db.lab/optuna?user=me@lab.org", None),
    ("sqlite:////data/tune/optuna.db", "sqlite:////data/tune/optuna.db", None),
    ("journal:/shared/segbench/tune.log", "journal:/shared/segbench/tune.log", None),
])
def test_storage_urls_are_shown_without_their_secrets(url, shown, secret):
    assert display_url(url) == shown
    message = redact(f"Could not parse SQLAlchemy URL from string '{url}'", url)
    assert shown in message
    if secret is not None:
        for part in {secret, secret.replace("%40", "@"), *secret.split("@")}:
            assert part not in message and part not in shown, part


def test_a_storage_error_never_prints_the_password():
    with pytest.raises(BenchError) as e:
        open_storage("postgresql+nosuchdriver://u:RET@PW@db.lab/optuna")
    assert "RET" not in str(e.value) and "PW" not in str(e.value) and "u:***@db.lab" in str(e.value)


def test_storages_and_their_errors(tmp_path):
    journal = f"journal:{tmp_path / 'j' / 'optuna.log'}"
    study = load_or_create_study(open_storage(journal), "J", {"model": "unet"})
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.02}, distributions=dist, value=0.4))
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.05}, distributions=dist, value=0.6))
    assert tuned_lr(journal, "J", "unet", load_protocol("smoke"), say=lambda *a: None) == (0.05, "study J trial 1")
    with pytest.raises(BenchError, match="never mixed"):
        load_or_create_study(open_storage(journal), "J", {"model": "swinunet"})
    with pytest.raises(BenchError, match="expects a URL"):
        open_storage("results/optuna.db")
    with pytest.raises(BenchError, match="no tuning storage"):
        open_storage(f"sqlite:///{tmp_path / 'missing.db'}", create=False)


def test_bad_tune_input_is_refused(tiny_dataset, tmp_path):
    cases = (({"models": ["nonesuch"]}, "unknown model 'nonesuch'"), ({"n_trials": 0}, "--trials"),
             ({"search_space": "lr,momentum"}, "--search"),
             ({"sets": ["tuning.lr_min=0.5", "tuning.lr_max=0.1"]}, "lr_min"),
             ({"studies": ["a", "b"]}, "one study per model"))
    for kwargs, message in cases:
        models, sets = kwargs.pop("models", [MODEL]), kwargs.pop("sets", ())
        # a model name is the registry's to check (its UnknownModelError is one line in the CLI too)
        with pytest.raises(UnknownModelError if models == ["nonesuch"] else BenchError, match=message):
            tune(models, _quiet(tiny_dataset, tmp_path, sets=sets), **(dict(n_trials=1) | kwargs))


def test_an_unknown_model_is_one_line_before_anything_is_trained(tiny_dataset, tmp_path):
    res = bench_cli("tune", "--model", "nosuch", "--trials", "1", "--protocol", "smoke", "--dataset",
                    str(tiny_dataset), "--results", str(tmp_path / "results"), "--device", "cpu")
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: unknown model 'nosuch'; valid models: ")
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "results" / "tune").exists()  # no storage, no trial folder


def test_workers_on_a_cluster_are_not_started_for_an_unknown_model(tiny_dataset, tmp_path, monkeypatch):
    from bench.experiments.executors import slurm
    from bench.experiments.options import ExecutorOptions
    from bench.experiments.tune.launch import launch

    monkeypatch.setattr(slurm, "submit", lambda *a, **k: pytest.fail("workers were submitted"))
    journal = tmp_path / "tune.log"
    opts = _quiet(tiny_dataset, tmp_path / "results", executor=ExecutorOptions(name="slurm", workers=2))
    with pytest.raises(UnknownModelError, match="unknown model 'nosuch'"):
        launch(["nosuch"], opts, n_trials=1, storage=f"journal:{journal}")
    assert not journal.exists()


def _made_study(storage: str, name: str, values: list[float], **attrs) -> optuna.Study:
    """A study with completed trials of these validation scores (lr 0.01, 0.02, ...), no training."""
    study = load_or_create_study(open_storage(storage), name, {"model": MODEL, **attrs})
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    for i, value in enumerate(values):
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.01 * (i + 1)}, distributions=dist, value=value))
    return study


def test_a_study_without_signal_names_no_winner_and_is_refused(tiny_dataset, tmp_path):
    from bench.experiments.tune.outputs import write_outputs

    storage, smoke = f"sqlite:///{tmp_path / 'x.db'}", load_protocol("smoke")
    zeros = _made_study(storage, "zeros", [0.0, 0.0, 0.0])  # made before the untrained model was measured
    floor = _made_study(storage, "floor", [0.03, 0.05], untrained_dsc=0.05)  # no better than the untrained model
    for study, beaten in ((zeros, "0 (an empty prediction)"), (floor, "the untrained model's 0.0500")):
        name = study.study_name
        with pytest.raises(BenchError, match=rf"study '{name}' has no signal: .*no better than {re.escape(beaten)}"):
            tuned_lr(storage, name, MODEL, smoke)
        line = summary(study, MODEL)
        assert "no signal" in line and "best:" not in line
        write_outputs(study, tmp_path / name, storage)
        assert json.loads((tmp_path / name / "study.json").read_text())["signal"] == "none"
    notes: list[str] = []
    _made_study(storage, "weak", [0.055], untrained_dsc=0.05)
    assert tuned_lr(storage, "weak", MODEL, smoke, say=notes.append) == (0.01, "study weak trial 0")
    assert "weak signal" in notes[0]
    res = bench_cli("run", "--models", MODEL, "--protocol", "smoke", "--dataset", str(tiny_dataset), "--results",
                    str(tmp_path / "r"), "--lr", "tuned", "--storage", storage, "--study", "zeros")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "has no signal" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "tiny").exists()  # refused before any run folder


@pytest.mark.parametrize("lo, hi", [(1e-3, 1e-1), (5e-3, 5e-2), (0.02, 0.08), (0.021, 0.028), (1e-6, 1.0)])
def test_lr_axis_ticks_are_few_and_inside_the_range(lo, hi):
    from bench.report.plots import lr_ticks

    ticks = lr_ticks(lo, hi)
    assert 3 <= len(ticks) <= 8 and ticks == sorted(ticks)
    assert all(lo * 0.99 <= t <= hi * 1.01 for t in ticks)


def test_the_search_header_lists_what_it_tries():
    smoke = load_protocol("smoke")
    text = tune_mod.space_text(smoke, ("lr", "batch_size"))
    assert "lr 0.001..0.1 log-uniform" in text and "batch size 1, 2, 4" in text
    assert "batch size 3, 5" in tune_mod.space_text(smoke.derive({"tuning.batch_sizes": [3, 5]}), ("lr", "batch_size"))
