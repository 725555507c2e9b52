"""Every registered model, at full width, trains and is evaluated through `bench run`.

The protocol is `smoke` at the `cpu` protocol's input and batch size, so a model that cannot take
the default protocol's geometry (window sizes, encoder strides, memory) fails here, not in a
user's ten-minute run. The values mean nothing; every run must complete with a metric row per
test case and organ. `--drop-weights` keeps the disk use to one model's weights at a time
(all 38 models' weights are about 6 GB).
"""
from __future__ import annotations

import json

import pandas as pd
import yaml
from helpers import bench_cli

from bench.protocol import load_protocol
from models import list_models


def test_every_registered_model_runs_under_smoke_at_the_cpu_geometry(tiny_dataset, tmp_path):
    cpu = load_protocol("cpu")
    proto = load_protocol("smoke").model_dump(exclude={"name"}, mode="json")
    proto.update(input_size=cpu.input_size, batch_size=cpu.batch_size, iterations=2, checkpoint_every=100,
                 description="smoke at the cpu protocol's input and batch size")
    proto_file = tmp_path / "smoke-cpu-size.yaml"
    proto_file.write_text(yaml.safe_dump(proto))
    models = list_models()
    res = bench_cli("run", "--models", ",".join(models), "--protocol", str(proto_file),
                    "--dataset", str(tiny_dataset), "--results", str(tmp_path / "results"),
                    "--reports", str(tmp_path / "reports"), "--drop-weights", timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for name in models:
        run_dir = tmp_path / "results" / "tiny" / "smoke-cpu-size" / name / "seed0"
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "complete", (name, manifest.get("error"))
        assert manifest["protocol"]["input_size"] == cpu.input_size
        rows = pd.read_parquet(run_dir / "metrics.parquet")
        dice = rows[(rows.metric == "dice") & (rows.label > 0)]
        assert len(dice) == 8, name  # one test case x eight organs
        assert dice.value.between(0, 1).all(), name
        assert not list(run_dir.glob("*.pt*")), name
