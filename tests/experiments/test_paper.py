"""Ablation specs and paper tables under the smoke protocol."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import ROOT, bench_cli

from bench.engine.settings import RunSettings
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
    # one override path: --set keys and a protocol knob are recorded once, in one suffix
    assert [(r.protocol.name, r.protocol.batch_size) for r in sizes] == [
        ("smoke@batch_size=4,input_size=224", 4), ("smoke@batch_size=4,input_size=384", 4)]
    opts = RunOptions(protocol="smoke", sets=["batch_size=4", "iterations=7"], run=RunSettings(track=("tensorboard",)))
    proto = opts.load_protocol()  # --iterations 7 arrives as --set iterations=7
    assert (proto.name, proto.batch_size, proto.iterations) == ("smoke@batch_size=4,iterations=7", 4, 7)
    assert RunOptions().load_protocol().name == "cpu"
    with pytest.raises(BenchError, match="unknown tracker 'nope'"):
        RunSettings(track=("nope",))


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


def test_every_published_row_says_where_it_comes_from_and_names_a_real_model():
    import yaml

    from bench.experiments.paper import PAPERS
    from models import is_model

    for path in sorted((ROOT / "bench/experiments/published").glob("*.yaml")):
        for tid, table in yaml.safe_load(path.read_text())["tables"].items():
            for row in table["rows"]:
                assert row.get("provenance"), (path.name, tid, row["method"])
                assert "ours" not in row or is_model(row["ours"]), (tid, row["ours"])
                assert "reconstructed" not in row or row.get("ours"), (tid, row["method"])
    for entry in PAPERS.values():
        load_reference(entry["table"])
    assert {r["method"]: r.get("ours") for r in load_reference("swin-unet-synapse")["rows"]} == {
        "V-Net": None, "DARR": None, "R50 U-Net": "r50-unet", "U-Net": "unet-plain", "R50 Att-UNet": "r50-attunet",
        "Att-UNet": "attunet", "R50 ViT": "transunet-skip0", "TransUnet": "transunet", "Swin-Unet": "swinunet"}


def _recompute(run_dir: Path) -> tuple[float, float]:
    """DSC % and HD95 of one single-seed run, recomputed here from metrics.parquet."""
    df = pd.read_parquet(run_dir / "metrics.parquet")
    dice = df[df.metric == "dice"].groupby("organ")["value"].mean().mean() * 100
    hd = df[df.metric == "hd95"].groupby("organ")["value"].mean().mean()
    return dice, hd


def _missed(run_dir: Path) -> int:
    """Organs in the reference that the run did not predict (synapse HD95 0), over its test cases."""
    df = pd.read_parquet(run_dir / "metrics.parquet")
    return int(((df.metric == "hd95") & (df.status == "ref_only")).sum())


def test_ablate_runs_variants_renders_table_and_reuses_runs(tiny_dataset, tmp_path):
    args = ["ablate", str(ROOT / "ablations/swinunet-skips.yaml"), "--protocol", "smoke", "--iterations", "2",
            "--dataset", str(tiny_dataset), "--results", str(tmp_path / "results"), "--out", str(tmp_path / "reports"),
            "--drop-weights"]
    res = bench_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "--out is deprecated here; use --reports" in res.stderr
    assert len(list((tmp_path / "results").glob("*/*/*/seed0/manifest.json"))) == 4
    assert not list((tmp_path / "results").rglob("*.pt*"))
    table = pd.read_csv(tmp_path / "reports/tiny/smoke@iterations=2/ablations/swinunet-skips/table.csv", dtype=str)
    published = table[table.source == "published"]
    assert published["dsc"].tolist() == ["72.46", "76.43", "78.93", "79.13"]
    ours = table[table.source == "ours"]
    assert ours["row"].tolist() == ["0", "1", "2", "3"]
    for k, (_, row) in enumerate(ours.iterrows()):
        run = tmp_path / f"results/tiny/smoke@iterations=2/swinunet@skip_connections={k}/seed0"
        dice, hd = _recompute(run)
        assert float(row["dsc"]) == pytest.approx(dice, abs=0.006)
        assert float(row["hd95"].rstrip("†")) == pytest.approx(hd, abs=0.006)
        assert row["hd95"].endswith("†") == (_missed(run) > 0) and float(row["missed"]) == _missed(run)
    md = (tmp_path / "reports/tiny/smoke@iterations=2/ablations/swinunet-skips/table.md").read_text()
    assert "Not comparable in value" in md and "smoke" in md
    again = bench_cli(*args)
    assert again.returncode == 0 and again.stdout.count("skipped") == 4
    assert not re.search(r"iteration \d+/", again.stdout)  # no training (the protocol's name says iterations=2)


def _paper(name: str, dataset: Path, tmp_path: Path) -> tuple[pd.DataFrame, str, str]:
    """``bench paper NAME`` at the smoke protocol, one iteration: its table.csv, table.md and stdout."""
    res = bench_cli("paper", name, "--protocol", "smoke", "--iterations", "1", "--dataset", str(dataset),
                    "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports"),
                    "--drop-weights", timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp_path / "reports" / dataset.name / "smoke@iterations=1" / "papers" / name
    return pd.read_csv(out / "table.csv", dtype=str, keep_default_na=False), (out / "table.md").read_text(), \
        res.stdout


def _check_rows(name: str, table: pd.DataFrame, md: str, stdout: str, runs: Path) -> None:
    """Every published row is there; each with a network is ours, published, difference; provenance noted;
    the scored subset said, the caveat rendered, missed organs marked (``runs``: the folder of our runs)."""
    reference = load_reference(name)
    assert set(table[table.source == "published"]["row"]) == {r["method"] for r in reference["rows"]}
    with_network = [r for r in reference["rows"] if r.get("ours")]
    assert set(table[table.source == "ours"]["row"]) == {r["ours"] for r in with_network}
    rows = table.to_dict("records")
    for r in with_network:
        i = next(i for i, row in enumerate(rows) if row["row"] == r["ours"] and row["source"] == "ours")
        ours, published, difference = rows[i:i + 3]
        assert (published["row"], published["source"], difference["source"]) == (r["method"], "published",
                                                                                "difference")
        assert float(difference["dsc"]) == pytest.approx(float(ours["dsc"]) - r["dsc"], abs=0.011)
        assert published["provenance"] == r["provenance"] and r["provenance"] in md
        assert ("reconstructed" in ours["status"]) == bool(r.get("reconstructed"))
    assert "Where the published numbers come from:" in md
    assert "protocol `smoke@iterations=1`" in md and "Not comparable in value" in md
    assert "scored on the first 2 test cases, the central 8 slices of each only" in md
    # the terminal gets the caveat rendered, never raw Markdown; and the header line before the runs
    assert "Not comparable in value" in stdout and "**" not in stdout and "`" not in stdout
    assert "protocol smoke@iterations=1 (" in stdout and ", lr 0.01 (protocol smoke@iterations=1), " in stdout
    for _, row in table[table.source == "ours"].iterrows():  # a missed organ's HD95 (0) is marked, and counted
        missed = _missed(runs / row["row"] / "seed0")
        assert row["hd95"].endswith("†") == (missed > 0) and float(row.get("missed") or 0) == missed


def test_paper_tables_run_every_row_with_a_network(tiny_dataset, tmp_path):
    table, md, stdout = _paper("swin-unet-synapse", tiny_dataset, tmp_path)
    assert set(table[table.source == "ours"]["row"]) == {
        "unet-plain", "attunet", "r50-unet", "r50-attunet", "transunet-skip0", "transunet", "swinunet"}
    _check_rows("swin-unet-synapse", table, md, stdout, tmp_path / "results/tiny/smoke@iterations=1")
    assert len(list((tmp_path / "results").glob("*/*/*/seed0/manifest.json"))) == 7
    assert not list((tmp_path / "results").rglob("*.pt*"))
    assert "| U-Net [" in md and "bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets" in md
    assert "r50-unet (reconstructed)" in stdout and "HuCaoFighting/Swin-Unet issue 14" in stdout
    # TransUNet's own table: its four rows with a network are runs made above, reused
    table, md, stdout = _paper("transunet-synapse", tiny_dataset, tmp_path)
    _check_rows("transunet-synapse", table, md, stdout, tmp_path / "results/tiny/smoke@iterations=1")
    assert stdout.count("skipped") == 4 and len(list((tmp_path / "results").glob("*/*/*/seed0/manifest.json"))) == 7


def _tiny_acdc(out: Path) -> Path:
    """An ACDC-layout dataset (classes RV, Myo, LV): two training cases and one test case, 4 x 64 x 64."""
    import numpy as np

    from bench.data import layout
    from bench.data.acdc import ACDC

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 30)
    label = np.where(r < 8, 3, np.where(r < 13, 2, np.where(np.hypot(yy - 32, xx - 48) < 9, 1, 0)))
    with layout.building(out) as tmp:
        train = []
        for case in ("patient002_frame01", "patient003_frame01", "patient001_frame01"):
            lab = np.repeat(label[None], 4, axis=0).astype(np.uint8)
            img = (0.3 * lab + 0.2 * rng.random(lab.shape)).astype(np.float32)
            names = layout.write_case(tmp, case, img, lab, (10.0, 1.5, 1.5))
            train += names if case != "patient001_frame01" else []
        layout.write_lists(tmp, train, ["patient001_frame01"])
        layout.write_meta(tmp, ACDC.organs, source={"kind": "test"})
    return out


def test_acdc_paper_table(tmp_path):
    table, md, stdout = _paper("swin-unet-acdc", _tiny_acdc(tmp_path / "acdc"), tmp_path)
    _check_rows("swin-unet-acdc", table, md, stdout, tmp_path / "results/acdc/smoke@iterations=1")
    assert {"RV", "Myo", "LV"} <= set(table.columns)


def test_unknown_paper_is_one_line():
    res = bench_cli("paper", "nope")
    assert res.returncode == 2 and "unknown paper table 'nope'" in res.stderr


def test_paper_acdc_runs_on_the_synthetic_cardiac_dataset(tmp_path, monkeypatch):
    """`bench paper swin-unet-acdc` out of the box: the built-in cardiac phantom, generated into the cache."""
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    table, md, stdout = _paper("swin-unet-acdc", Path("synthetic-cardiac"), tmp_path)
    assert "generating the synthetic cardiac MR" in stdout
    assert {"RV", "Myo", "LV"} <= set(table.columns)
    runs = tmp_path / "results/synthetic-cardiac/smoke@iterations=1"
    _check_rows("swin-unet-acdc", table, md, stdout, runs)
    for _, row in table[table.source == "ours"].iterrows():
        dice, _ = _recompute(runs / row["row"] / "seed0")
        assert float(row["dsc"]) == pytest.approx(dice, abs=0.006)
    assert "synthetic numbers are not comparable in value" in md
