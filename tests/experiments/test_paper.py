"""Ablation specs and paper tables under the smoke protocol."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, bench_cli

from bench.errors import BenchError
from bench.experiments.ablation import expand, load_spec
from bench.experiments.references import load_reference

SPECS = sorted((ROOT / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_validate_and_show_their_command(path):
    spec = load_spec(path)
    assert path.read_text().startswith(f"# bench ablate ablations/{path.name}")
    rows = expand(spec, protocol="smoke")
    assert len(rows) == len(spec.values or spec.variants) >= 2
    if spec.mirrors:
        load_reference(spec.mirrors)


def test_spec_expansion_knob_kinds():
    skips = expand(load_spec(ROOT / "ablations/swinunet-skips.yaml"), protocol="smoke")
    assert [(r.name, r.model, r.knobs, r.protocol.name) for r in skips] == [
        (str(k), "swinunet", {"skip_connections": k}, "smoke") for k in range(4)]
    sizes = expand(load_spec(ROOT / "ablations/swinunet-input-size.yaml"), protocol="smoke")
    assert [(r.knobs, r.protocol.input_size, r.protocol.name) for r in sizes] == [
        ({}, 224, "smoke@input_size=224"), ({}, 384, "smoke@input_size=384")]
    assert sizes[0].protocol.hash() != sizes[1].protocol.hash()


def test_set_overrides_reach_every_row_and_every_command():
    from bench.experiments.options import RunOptions

    skips = expand(load_spec(ROOT / "ablations/swinunet-skips.yaml"), protocol="smoke", sets=["precision=bf16"])
    assert {(r.protocol.name, r.protocol.precision) for r in skips} == {("smoke@precision=bf16", "bf16")}
    sizes = expand(load_spec(ROOT / "ablations/swinunet-input-size.yaml"), protocol="smoke", sets=["batch_size=4"])
    assert [(r.protocol.name, r.protocol.batch_size) for r in sizes] == [
        ("smoke@batch_size=4@input_size=224", 4), ("smoke@batch_size=4@input_size=384", 4)]
    opts = RunOptions(protocol="smoke", sets=["batch_size=4"], track=["tensorboard"])
    proto = opts.load_protocol(iterations=7)  # --set first, then the command's own flags
    assert (proto.name, proto.batch_size, proto.iterations) == ("smoke@batch_size=4", 4, 7)
    assert RunOptions().load_protocol().name == "cpu"
    with pytest.raises(BenchError, match="unknown tracker 'nope'"):
        RunOptions(track=["nope"])


@pytest.mark.parametrize("text, needle", [
    ("base: swinunet\nknob: skip_connections\nvalues: [0]\nseed: [1]\n", "unknown key 'seed'"),
    ("base: swinunet\n", "either 'knob' with 'values', or 'variants'"),
    ("base: swinunet\nknob: x\nvalues: 3\n", "key 'values'"),
])
def test_bad_specs_name_file_and_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BenchError) as e:
        load_spec(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_published_marks_are_kept():
    t1 = load_reference("swin-unet-synapse")
    notes = {r["method"]: r.get("note", "") for r in t1["rows"]}
    assert "77.61" in notes["R50 U-Net"] and "72.10" in notes["R50 Att-UNet"]
    for table in ("swin-unet-upsampling", "swin-unet-input-size", "swin-unet-scale"):
        assert {r.get("status") for r in load_reference(table)["rows"]} == {"unverified"}
    assert [r["dsc"] for r in load_reference("swin-unet-skips")["rows"]] == [72.46, 76.43, 78.93, 79.13]


def _recompute(run_dir: Path) -> tuple[float, float]:
    """DSC % and HD95 of one single-seed run, recomputed here from metrics.parquet."""
    df = pd.read_parquet(run_dir / "metrics.parquet")
    dice = df[df.metric == "dice"].groupby("organ")["value"].mean().mean() * 100
    hd = df[df.metric == "hd95"].groupby("organ")["value"].mean().mean()
    return dice, hd


def test_ablate_runs_variants_renders_table_and_reuses_runs(tiny_dataset, tmp_path):
    args = ["ablate", str(ROOT / "ablations/swinunet-skips.yaml"), "--protocol", "smoke", "--iterations", "2",
            "--dataset", str(tiny_dataset), "--results", str(tmp_path / "results"), "--out", str(tmp_path / "reports"),
            "--drop-weights"]
    res = bench_cli(*args)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "results").glob("*/*/*/seed0/manifest.json"))) == 4
    assert not list((tmp_path / "results").rglob("*.pt*"))
    table = pd.read_csv(tmp_path / "reports/tiny/smoke/ablations/swinunet-skips/table.csv", dtype=str)
    published = table[table.source == "published"]
    assert published["dsc"].tolist() == ["72.46", "76.43", "78.93", "79.13"]
    ours = table[table.source == "ours"]
    assert ours["row"].tolist() == ["0", "1", "2", "3"]
    for k, (_, row) in enumerate(ours.iterrows()):
        run = tmp_path / f"results/tiny/smoke/swinunet@skip_connections={k}/seed0"
        dice, hd = _recompute(run)
        assert float(row["dsc"]) == pytest.approx(dice, abs=0.006)
        assert float(row["hd95"]) == pytest.approx(hd, abs=0.006)
    md = (tmp_path / "reports/tiny/smoke/ablations/swinunet-skips/table.md").read_text()
    assert "Not comparable in value" in md and "smoke" in md
    again = bench_cli(*args)
    assert again.returncode == 0 and again.stdout.count("skipped") == 4 and "iteration" not in again.stdout


def test_paper_table_has_every_published_row_and_ours_marked(tiny_dataset, tmp_path):
    res = bench_cli("paper", "swin-unet-synapse", "--protocol", "smoke", "--iterations", "1",
                    "--dataset", str(tiny_dataset), "--results", str(tmp_path / "results"),
                    "--out", str(tmp_path / "reports"), "--drop-weights", timeout=1200)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "results").glob("*/*/*/seed0/manifest.json"))) == 3
    assert not list((tmp_path / "results").rglob("*.pt*"))
    out = tmp_path / "reports/tiny/smoke/papers/swin-unet-synapse"
    table = pd.read_csv(out / "table.csv", dtype=str)
    methods = {r["method"] for r in load_reference("swin-unet-synapse")["rows"]}
    assert set(table[table.source == "published"]["row"]) == methods
    assert set(table[table.source == "ours"]["row"]) == {"unet", "transunet", "swinunet"}
    md = (out / "table.md").read_text()
    assert "protocol `smoke`" in md and "Not comparable in value" in md


def test_unknown_paper_is_one_line():
    res = bench_cli("paper", "nope")
    assert res.returncode == 2 and "unknown paper table 'nope'" in res.stderr
