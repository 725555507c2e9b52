"""Live tracking of runs: TensorBoard event files in the run folder, and/or an MLflow run.

``--track tensorboard,mlflow`` names the trackers; both are optional packages
(``pip install 'segbench[track]'``). A tracker receives every iteration's loss, CE and Dice loss
terms and learning rate, the validation scores when the protocol validates during training,
and at the end the per-organ test metrics and the run's settings as parameters.

Tracking never costs a run: a tracker that fails says so once and stops, training goes on.
Nothing leaves the machine unless the user points ``MLFLOW_TRACKING_URI`` elsewhere: the default
MLflow store is SQLite under the results folder, and MLflow's usage telemetry is off unless
``MLFLOW_DISABLE_TELEMETRY`` says otherwise.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import BenchError
from bench.files import atomic_text
from bench.urls import display_url, redact

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # name -> module that must be importable
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlflow"  # under the results folder: mlflow.db and artifacts/
MLFLOW_RUN_FILE = "mlflow_run.json"  # in the run folder: which MLflow run a resumed run continues
SUPPRESS_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"

if TYPE_CHECKING:
    import pandas as pd


def parse_track(names: Iterable[str]) -> list[str]:
    """The requested trackers, checked: known names whose packages are installed."""
    out = []
    for name in names:
        name = name.strip().lower()
        if not name:
            continue
        if name not in TRACKERS:
            raise BenchError(f"--track: unknown tracker '{name}'; choose from {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise BenchError(f"--track {name}: the {name} package is not installed; "
                             f"pip install 'segbench[track]'")
        if name not in out:
            out.append(name)
    return out


def mlflow_uri(results: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store under the results folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(results) / MLFLOW_DIR / 'mlflow.db').resolve()}"


class _TensorBoard:
    def __init__(self, folder: Path, start: int, params: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if start == 0:  # a fresh start (or --force): no curve of an earlier attempt stays
            shutil.rmtree(folder, ignore_errors=True)
        # purge_step: a resumed run's events past its checkpoint are dropped when TensorBoard reads them
        self.writer = SummaryWriter(str(folder), purge_step=start or None, flush_secs=10)
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("settings", "| setting | value |\n| --- | --- |\n" + rows, start)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self, status: str, step: int) -> None:
        self.writer.add_text("status", status, step)
        self.writer.close()


class _MLflow:
    FLUSH_SECONDS, FLUSH_COUNT = 10.0, 500

    def __init__(self, uri: str, artifacts: Path, experiment: str, name: str, run_dir: Path, start: int,
                 params: dict) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        for logger in ("mlflow", "alembic"):  # table creation and migrations log at INFO
            logging.getLogger(logger).setLevel(logging.WARNING)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client, self.uri = MlflowClient(uri), uri
        self.pending: list = []
        self.last_flush = time.monotonic()
        exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
        exp_id = self._experiment(exp_name, artifacts)
        marker = run_dir / MLFLOW_RUN_FILE
        run_id: str | None = None
        shown = display_url(uri)  # what is written down: never a password or token (bench.urls)
        if start > 0 and marker.exists():  # a resumed run continues its MLflow run
            try:
                saved = json.loads(marker.read_text())
                if saved.get("uri") in (shown, uri) and self.client.get_run(saved["run_id"]):
                    run_id = str(saved["run_id"])
                    self.client.update_run(run_id, status="RUNNING")
            except Exception:  # unreadable marker or run deleted: a new MLflow run
                run_id = None
        if run_id is None:
            tags = {"segbench.run_dir": str(run_dir.resolve()), **{f"segbench.{k}": str(v) for k, v in params.items()}}
            run_id = str(self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id)
            atomic_text(marker, json.dumps({"uri": shown, "run_id": run_id, "experiment": exp_name}))
            self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        self.run_id: str = run_id

    def _experiment(self, name: str, artifacts: Path) -> str:
        for attempt in range(5):  # two processes may create it at once
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            try:
                location = (artifacts / re.sub(r"[^A-Za-z0-9._-]", "_", name)).resolve().as_uri()
                return self.client.create_experiment(name, artifact_location=location)
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise RuntimeError("unreachable")

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self.pending) >= self.FLUSH_COUNT or time.monotonic() - self.last_flush > self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        while self.pending:  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=self.pending[:1000])
            self.pending = self.pending[1000:]
        self.last_flush = time.monotonic()

    def close(self, status: str, step: int) -> None:
        self.flush()
        self.client.set_tag(self.run_id, "segbench.status", status)
        state = {"complete": "FINISHED", "interrupted": "KILLED", "pruned": "KILLED"}.get(status, "FAILED")
        # MLflow prints "View run at <URI>/#/..." on stdout here, password included: not when the URI holds a secret
        quiet = {SUPPRESS_URL: "true"} if display_url(self.uri) != self.uri else {}
        previous = {key: os.environ.get(key) for key in quiet}
        os.environ.update(quiet)
        try:
            self.client.set_terminated(self.run_id, status=state)
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class Tracking:
    """The trackers of one run. ``open(start)`` once the training knows where it starts, ``log`` as it
    goes, ``test_metrics`` after evaluation, ``close(status)`` at the end; every call is safe to make
    with no tracker at all."""

    def __init__(self, names: Iterable[str], *, results: Path, run_dir: Path, experiment: str, name: str,
                 params: dict, say=print) -> None:
        self.names, self.results, self.run_dir = list(names), Path(results), Path(run_dir)
        self.experiment, self.name, self.params, self.say = experiment, name, params, say
        self.active: dict[str, object] = {}
        self.opened = False
        self.step = 0

    def _guard(self, name: str, what: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # tracking must never cost the run
            self.active.pop(name, None)
            first = str(e).splitlines()[0] if str(e) else ""
            # the tracker's error may quote its URI: its secrets are hidden on the storage URLs' rule
            first = redact(first, mlflow_uri(self.results)) if name == "mlflow" else first
            self.say(f"--track {name}: {what} failed ({type(e).__name__}: {first}); no more tracking of this run")

    def open(self, start: int) -> None:
        if self.opened:
            return
        self.opened, self.step = True, start
        for name in self.names:
            def make(name=name):
                if name == "tensorboard":
                    self.active[name] = _TensorBoard(self.run_dir / TENSORBOARD_DIR, start, self.params)
                else:
                    self.active[name] = _MLflow(mlflow_uri(self.results), self.results / MLFLOW_DIR / "artifacts",
                                                self.experiment, self.name, self.run_dir, start, self.params)
            self._guard(name, "opening", make)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.step = max(self.step, step)
        metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        for name, tracker in list(self.active.items()):
            self._guard(name, "logging", lambda t=tracker: t.log(metrics, step))

    def test_metrics(self, metrics: pd.DataFrame) -> None:
        """Per-organ means over test cases of each metric, and their means over organs."""
        if not self.names:
            return
        self.open(self.step)
        fg = metrics[metrics["label"] != 0]
        values: dict[str, float] = {}
        for metric, g in fg.groupby("metric"):
            per_organ = g.groupby("organ")["value"].mean()
            values |= {f"test/{metric}/{organ}": v for organ, v in per_organ.items()}
            values[f"test/{metric}"] = per_organ.mean()
        self.log(values, self.step)

    def close(self, status: str) -> None:
        for name, tracker in list(self.active.items()):
            self._guard(name, "closing", lambda t=tracker: t.close(status, self.step))
        self.active.clear()
