"""LR-search workers that die or are preempted lose no trial and duplicate none: on a journal
file a trial whose worker stopped beating is failed and retried once; a preempted worker's
trial is retried and the requeued worker adds only the trials it still owes."""
from __future__ import annotations

import io
import time

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from rich.console import Console

from bench.engine.settings import RunSettings
from bench.engine.train import Preempted
from bench.experiments.options import RunOptions
from bench.experiments.tune import liveness
from bench.experiments.tune import search as tune_mod
from bench.experiments.tune.search import EXIT_PREEMPTED, tune
from bench.experiments.tune.studies import open_storage

MODEL = "swinunet-nano"
LR = FloatDistribution(1e-3, 1e-1, log=True)  # the smoke protocol's search range


def _opts(dataset, results) -> RunOptions:
    console = Console(file=io.StringIO(), width=200)
    return RunOptions(protocol="smoke", dataset=str(dataset), run=RunSettings(results=results, device="cpu"),
                      console=console)


def _trial(state, worker, **attrs):
    return optuna.create_trial(state=state, params={"lr": 0.01}, distributions={"lr": LR},
                               value=0.5 if state == TrialState.COMPLETE else None,
                               user_attrs={"worker": worker, **attrs})


def test_a_requeued_worker_adds_only_the_trials_it_still_owes(monkeypatch):
    study = optuna.create_study(direction="maximize")
    for t in (_trial(TrialState.COMPLETE, "9_0"), _trial(TrialState.PRUNED, "9_0"), _trial(TrialState.COMPLETE, "9_1"),
              _trial(TrialState.FAIL, "9_0", interrupted=True)):
        study.add_trial(t)
    monkeypatch.delenv(liveness.WORKER_ENV, raising=False)
    assert liveness.owed(study, 3) == 3  # a local process: --trials N more
    monkeypatch.setenv(liveness.WORKER_ENV, "9_0")
    assert liveness.owed(study, 3) == 1  # the interrupted trial is retried, not counted
    assert liveness.owed(study, 1) == 0


def test_a_trial_whose_worker_stopped_beating_is_failed_and_retried_once(tiny_dataset, tmp_path, one_thread):
    url = f"journal:{tmp_path / 'tune.log'}"
    study = optuna.create_study(storage=open_storage(url), study_name="S", direction="maximize")
    dead = study.ask()
    lr = dead.suggest_float("lr", LR.low, LR.high, log=True)
    dead.set_user_attr("heartbeat", time.time() - liveness.GRACE_SECONDS - 60)
    alive = study.ask()  # another worker's trial, beating: left alone
    alive.suggest_float("lr", LR.low, LR.high, log=True)
    alive.set_user_attr("heartbeat", time.time())

    assert tune([MODEL], _opts(tiny_dataset, tmp_path / "results"), n_trials=1, storage=url, studies=["S"]) == 0
    study = optuna.load_study(study_name="S", storage=open_storage(url))
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.COMPLETE]
    retried = study.trials[2]
    assert retried.params["lr"] == lr and retried.system_attrs["failed_trial"] == dead.number
    assert liveness.fail_stale(study) == 0 and len(study.trials) == 3  # a second look retries nothing more


def test_a_preempted_workers_trial_is_retried_and_the_requeued_worker_adds_what_it_owes(tiny_dataset, tmp_path,
                                                                                       monkeypatch, one_thread):
    url = f"journal:{tmp_path / 'tune.log'}"
    monkeypatch.setenv(liveness.WORKER_ENV, "12_1")
    real_train = tune_mod.train

    def warned(*args, **kwargs):
        raise Preempted("stopped by SIGUSR1 at iteration 2; checkpoint saved")

    monkeypatch.setattr(tune_mod, "train", warned)
    opts = _opts(tiny_dataset, tmp_path / "results")
    assert tune([MODEL], opts, n_trials=2, storage=url, studies=["S"]) == EXIT_PREEMPTED
    monkeypatch.setattr(tune_mod, "train", real_train)
    assert tune([MODEL], opts, n_trials=2, storage=url, studies=["S"]) == 0  # the requeued worker
    trials = optuna.load_study(study_name="S", storage=open_storage(url)).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["interrupted"] is True
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0
    assert not trials[1].user_attrs["interrupted"] and trials[1].user_attrs["worker"] == "12_1"
    assert tune([MODEL], opts, n_trials=2, storage=url, studies=["S"]) == 0 and len(
        optuna.load_study(study_name="S", storage=open_storage(url)).trials) == 3  # owes nothing more


@pytest.fixture(autouse=True)
def _no_worker(monkeypatch):
    monkeypatch.delenv(liveness.WORKER_ENV, raising=False)
