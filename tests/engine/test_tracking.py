"""Tracking (bench.engine.tracking) never writes a secret down: a tracking URI's password or token is
hidden in the tracker's messages, in ``mlflow_run.json`` and in what MLflow itself prints, on the same
rule as storage URLs (bench.urls). Against a fake MLflow server on 127.0.0.1 that accepts the calls,
and a port where nothing listens."""
from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="mlflow is an optional package: pip install 'segbench[track]'")

from bench.engine.tracking import MLFLOW_RUN_FILE, SUPPRESS_URL, Tracking  # noqa: E402

# (URI template, its secret in each form it may be quoted, what mlflow_run.json records); {port} is the server's
FORMS = [
    ("http://bob:SECRET@127.0.0.1:{port}", ("SECRET",), "http://bob:***@127.0.0.1:{port}"),
    ("http://:T0KEN@127.0.0.1:{port}", ("T0KEN",), "http://:***@127.0.0.1:{port}"),
    ("http://bob:p%40ss%2Fw0rd@127.0.0.1:{port}", ("ss%2Fw0rd", "ss/w0rd"), "http://bob:***@127.0.0.1:{port}"),
    ("http://127.0.0.1:{port}/?token=TOK123", ("TOK123",), "http://127.0.0.1:{port}/?token=***"),
    ("http://127.0.0.1:{port}/?access_token=AT1&x=1", ("AT1",), "http://127.0.0.1:{port}/?access_token=***&x=1"),
]
IDS = ["user-password", "password-only", "percent-encoded", "token-query", "access-token-query"]


class _FakeMlflow(http.server.BaseHTTPRequestHandler):
    """Just enough of MLflow's REST API: one experiment, one run, every logging call accepted."""

    calls: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        endpoint = self.path.partition("/api/2.0/mlflow/")[2].partition("?")[0]
        self.calls.append(endpoint)
        info = {"run_id": "r1", "run_uuid": "r1", "experiment_id": "1", "status": "RUNNING", "start_time": 0,
                "lifecycle_stage": "active", "artifact_uri": "file:///tmp/artifacts"}
        body = {"experiments/get-by-name": {"experiment": {"experiment_id": "1", "name": "e",
                                                           "lifecycle_stage": "active"}},
                "runs/create": {"run": {"info": info, "data": {}}}, "runs/get": {"run": {"info": info, "data": {}}},
                "runs/update": {"run_info": info}}.get(endpoint, {})
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


@pytest.fixture()
def mlflow_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeMlflow.calls = []
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tracking(tmp_path: Path, said: list) -> Tracking:
    run_dir = tmp_path / "synthetic" / "smoke" / "unet" / "seed0"
    run_dir.mkdir(parents=True, exist_ok=True)
    return Tracking(["mlflow"], results=tmp_path, run_dir=run_dir, experiment="segbench/synthetic",
                    name="smoke/unet/seed0", params={"model": "unet"}, say=lambda s: said.append(str(s)))


@pytest.mark.parametrize("template, secrets, recorded", FORMS, ids=IDS)
def test_the_mlflow_marker_and_mlflows_own_output_hold_no_secret(tmp_path, monkeypatch, capfd, mlflow_server,
                                                                  template, secrets, recorded):
    """Issue 25, item 11: mlflow_run.json stored the URI with its password, and MLflow printed it ("View run at")."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", template.format(port=mlflow_server))
    monkeypatch.delenv(SUPPRESS_URL, raising=False)
    said: list[str] = []
    tracking = _tracking(tmp_path, said)
    tracking.open(0)
    tracking.log({"train/loss": 1.0}, 1)
    tracking.close("complete")
    assert said == [] and "runs/update" in _FakeMlflow.calls  # every call reached the server
    marker = tracking.run_dir / MLFLOW_RUN_FILE
    assert not any(secret in marker.read_text() for secret in secrets)
    assert json.loads(marker.read_text())["uri"] == recorded.format(port=mlflow_server)
    out, err = capfd.readouterr()
    assert not any(secret in out + err for secret in secrets)
    assert SUPPRESS_URL not in os.environ  # the switch is set only around MLflow's print

    calls = len(_FakeMlflow.calls)
    resumed = _tracking(tmp_path, said)  # a resumed run continues the MLflow run its marker names
    resumed.open(3)
    resumed.close("complete")
    assert "runs/create" not in _FakeMlflow.calls[calls:] and said == []


@pytest.mark.parametrize("template, secrets, recorded", FORMS, ids=IDS)
def test_a_tracker_that_cannot_connect_says_so_without_the_secret(tmp_path, monkeypatch, capfd, template, secrets,
                                                                  recorded):
    """Issue 25, item 10: the tracker's error line quoted the URI, password included."""
    port = _closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", template.format(port=port))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    said: list[str] = []
    tracking = _tracking(tmp_path, said)
    tracking.open(0)
    tracking.close("complete")
    assert len(said) == 1 and "--track mlflow: opening failed" in said[0], said
    assert not any(secret in said[0] for secret in secrets) and "***" in said[0], said[0]
    out, err = capfd.readouterr()
    assert not any(secret in out + err for secret in secrets)
