"""External predictions (`bench evaluate --pred`): scored like trained runs (against medpy's official
procedure), matched by header, missing and extra cases, and `bench report` / `bench export` on them."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from helpers import bench_cli

from bench.data.ct_import import import_case
from bench.data.labelmaps import BTCV, TOTALSEGMENTATOR
from bench.data.resolve import resolve_dataset
from bench.data.synthetic import generate as synth
from bench.engine.export import export_run
from bench.engine.external import evaluate_external
from bench.engine.metrics_medpy import TOTALSEG_TO_SYNAPSE, evaluate_case_medpy
from bench.engine.rescore import rescore_run
from bench.errors import BenchError
from bench.protocol import Evaluation, load_protocol
from bench.report import build_report

quiet = dict(say=lambda *a, **k: None)
SYNAPSE = Evaluation(convention="synapse")


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def _reference(root: Path, case: str = "case0001") -> tuple[np.ndarray, tuple[float, ...]]:
    with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5") as f:
        return f["label"][:], tuple(float(s) for s in f.attrs["spacing"])


def _edited(ref: np.ndarray) -> np.ndarray:
    """A plausible other tool's output: a kidney moved, the gallbladder missed, a stray aorta voxel."""
    pred = ref.copy()
    kidney = pred == 3
    pred[kidney] = 0
    pred[np.roll(kidney, (1, 2, -3), axis=(0, 1, 2))] = 3
    pred[pred == 2] = 0
    pred[0, 0, 0] = 1
    return pred


def _nifti_ras(array: np.ndarray, spacing_zyx, path: Path, origin=(0.0, 0.0, 0.0)) -> None:
    """A (z, y, x) array in LPS order, written as NIfTI tools often store it: rows and columns reversed."""
    image = sitk.GetImageFromArray(array[:, ::-1, ::-1].copy())
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    d, h, w = array.shape
    image.SetOrigin((origin[0] + (w - 1) * spacing_zyx[2], origin[1] + (h - 1) * spacing_zyx[1], origin[2]))
    sitk.WriteImage(image, str(path))


def test_external_predictions_score_as_medpys_official_procedure(tiny_dataset, tmp_path):
    ref, spacing = _reference(tiny_dataset)
    pred = _edited(ref)
    to_totalseg = np.zeros(9, np.uint8)
    for synapse_id, totalseg_id in TOTALSEG_TO_SYNAPSE.items():
        to_totalseg[synapse_id] = totalseg_id
    (tmp_path / "tool").mkdir()
    image = sitk.GetImageFromArray(to_totalseg[pred])  # the other tool's label ids, in the reference's array order
    image.SetSpacing(tuple(reversed(spacing)))  # (the synthetic reference records no direction: see below)
    sitk.WriteImage(image, str(tmp_path / "tool" / "case0001.nii.gz"))
    ds = resolve_dataset(str(tiny_dataset), **quiet)
    run, rows = evaluate_external(tmp_path / "tool", ds, "tool", tmp_path / "results", SYNAPSE, TOTALSEGMENTATOR,
                                  **quiet)
    assert run == tmp_path / "results" / "tiny" / "external" / "tool"
    with np.load(run / "predictions" / "case0001.npz") as f:
        assert np.array_equal(f["pred"], pred)  # translated, voxel for voxel
    theirs = evaluate_case_medpy(pred, ref, list(range(1, 9)))  # calculate_metric_percase, per organ
    ours = pd.read_parquet(run / "metrics.parquet").pivot(index="label", columns="metric", values="value")
    for metric in ("dice", "hd95"):
        np.testing.assert_allclose(ours.loc[theirs["label"], metric], theirs[metric], rtol=0, atol=1e-9)
    assert ours.loc[2, "dice"] == 0 and ours.loc[3, "dice"] < 1  # the missed gallbladder, the moved kidney
    m = json.loads((run / "manifest.json").read_text())
    assert m["kind"] == "external" and m["status"] == "complete" and m["protocol"] is None
    digest = hashlib.sha256((tmp_path / "tool" / "case0001.nii.gz").read_bytes()).hexdigest()
    assert m["source"] == {"predictions": str((tmp_path / "tool").resolve()), "files": {"case0001": "case0001.nii.gz"},
                           "sha256": {"case0001.nii.gz": digest}, "missing": [], "ignored": [],
                           "label_map": "totalsegmentator"}
    # re-scored like a trained run (no protocol in its manifest)
    strict = rescore_run(run, "strict")
    assert set(strict["convention"]) == {"strict"} and len(strict) == len(rows)


def test_report_lists_trained_and_external_runs(trained_run, tiny_dataset, tmp_path):
    results = trained_run.parents[3]
    ref, spacing = _reference(tiny_dataset)
    (tmp_path / "other").mkdir()
    np.savez_compressed(tmp_path / "other" / "case0001.npz", pred=_edited(ref))
    ds = resolve_dataset(str(tiny_dataset), **quiet)
    # scored on every slice, it is not comparable with the smoke run (which scores 8 central slices)
    evaluate_external(tmp_path / "other", ds, "othertool", results, SYNAPSE, **quiet)
    with pytest.raises(BenchError, match="not comparable"):
        build_report(results, tmp_path / "report", n_boot=50)
    # scored on the same slices (smoke's evaluation), it joins the smoke run's cohort
    evaluate_external(tmp_path / "other", ds, "othertool", results, load_protocol("smoke").evaluation, **quiet)
    rep = build_report(results, tmp_path / "report", n_boot=50)
    assert not rep.mixed and rep.baseline == "swinunet"  # one cohort; the trained model is the baseline
    organ = pd.read_csv(rep.out / "csv" / "organ_dice.csv")
    assert set(organ["model"]) == {"swinunet", "othertool (external)"}
    wilcoxon = pd.read_csv(rep.out / "csv" / "wilcoxon_dice.csv")
    assert set(wilcoxon["model"]) == {"othertool (external)"}  # in the paired tests against the baseline
    md = (rep.out / "report.md").read_text(encoding="utf-8")
    assert "| othertool (external) |" in md and "| swinunet |" in md
    assert f"external runs (another tool's predictions, scored here under the same convention; no protocol, " \
           f"training split or seeds apply): othertool (external) from {(tmp_path / 'other').resolve()}" in md


def test_missing_and_extra_cases_are_listed(tmp_path):
    root = synth.generate(tmp_path / "two", seed=0, size=32, slice_mm=10.0, train_cases=("0005",),
                          test_cases=("0001", "0002"))
    ds = resolve_dataset(str(root), **quiet)
    preds = tmp_path / "preds"
    preds.mkdir()
    ref1, _ = _reference(root, "case0001")
    np.savez(preds / "case0001.npz", pred=ref1)
    np.savez(preds / "case0099.npz", pred=ref1)
    with pytest.raises(BenchError) as e:
        evaluate_external(preds, ds, "t", tmp_path / "results", SYNAPSE, **quiet)
    msg = str(e.value)
    assert "no prediction for 1 test case(s): case0002" in msg and "case0099.npz" in msg and "\n" not in msg
    assert not (tmp_path / "results").exists()  # nothing half-written
    said: list[str] = []
    run, rows = evaluate_external(preds, ds, "t", tmp_path / "results", SYNAPSE, allow_missing=True,
                                  say=said.append)
    assert any("case0002" in s for s in said) and any("case0099.npz" in s for s in said)
    second = rows[(rows["case"] == "case0002") & (rows["metric"] == "dice")]
    ref2, _ = _reference(root, "case0002")
    present = {int(v) for v in np.unique(ref2) if v}
    assert len(second) == 8 and second["value"].eq(0).all()  # scored as an empty prediction, not dropped
    assert set(second.loc[second["status"] == "ref_only", "label"]) == present
    assert json.loads((run / "manifest.json").read_text())["source"]["missing"] == ["case0002"]
    np.savez(preds / "case0002.npz", pred=ref2)  # every case there, one file too many: still an error
    with pytest.raises(BenchError, match=r"1 file\(s\) that are no test case of two: case0099.npz"):
        evaluate_external(preds, ds, "t2", tmp_path / "results", SYNAPSE, **quiet)
    (preds / "case0002.npz").unlink()
    res = bench_cli("evaluate", "--pred", str(preds), "--ref", str(root), "--name", "cli",
                    "--results", str(tmp_path / "r2"))
    assert res.returncode == 2 and "case0002" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def _imported(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A small CT with a recorded grid (origin, direction), imported as a test case; its BTCV label."""
    rng = np.random.default_rng(0)
    hu = rng.integers(-300, 400, size=(5, 16, 12)).astype(np.int16)
    lab = np.zeros(hu.shape, np.uint8)
    lab[1:4, 2:9, 2:7] = 6  # liver (BTCV id)
    lab[2, 10:14, 6:10] = 1  # spleen
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing((0.8, 0.7, 2.5))
    ct.SetOrigin((10.0, 20.0, 30.0))
    label = sitk.GetImageFromArray(lab)
    label.CopyInformation(ct)
    (tmp_path / "src").mkdir()
    sitk.WriteImage(ct, str(tmp_path / "src" / "ct.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "src" / "label.nii.gz"))
    import_case(tmp_path / "src" / "ct.nii.gz", tmp_path / "src" / "label.nii.gz", BTCV, "case0001",
                tmp_path / "ds", split="train")
    import_case(tmp_path / "src" / "ct.nii.gz", tmp_path / "src" / "label.nii.gz", BTCV, "case0002",
                tmp_path / "ds", split="test")
    return tmp_path / "ds", tmp_path / "src" / "ct.nii.gz", lab


def test_predictions_are_matched_by_header_and_another_grid_is_refused(tmp_path):
    root, ct_path, lab = _imported(tmp_path)
    ds = resolve_dataset(str(root), **quiet)
    ct = sitk.ReadImage(str(ct_path))
    preds = tmp_path / "preds"
    preds.mkdir()
    # BTCV ids on the CT's grid, stored reversed with the header saying so: the same voxels in space
    _nifti_ras(lab, (2.5, 0.7, 0.8), preds / "case0002.nii.gz", origin=ct.GetOrigin())
    run, rows = evaluate_external(preds, ds, "btcv-tool", tmp_path / "results", SYNAPSE, BTCV, **quiet)
    assert rows.query("metric == 'dice' and status == 'both_present'")["value"].eq(1).all()
    # export: the prediction as NIfTI on the imported grid, which lies on the original CT in space
    (nifti,) = export_run(run, "nifti", tmp_path / "exported", **quiet)
    exported, lps = sitk.ReadImage(str(nifti)), sitk.DICOMOrient(ct, "LPS")
    assert (exported.GetSize(), exported.GetSpacing(), exported.GetOrigin(), exported.GetDirection()) == \
        (lps.GetSize(), lps.GetSpacing(), lps.GetOrigin(), lps.GetDirection())
    resampled = sitk.Resample(exported, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert np.array_equal(sitk.GetArrayFromImage(resampled), BTCV.apply(lab, "truth"))
    # the same prediction one voxel off, or at another spacing: refused, with both geometries
    for origin, spacing, needle in (((10.0, 20.7, 30.0), (2.5, 0.7, 0.8), "origin ("),
                                    (ct.GetOrigin(), (2.5, 0.7, 0.9), "spacing (")):
        _nifti_ras(lab, spacing, preds / "case0002.nii.gz", origin=origin)
        with pytest.raises(BenchError) as e:
            evaluate_external(preds, ds, "btcv-tool", tmp_path / "results", SYNAPSE, BTCV, **quiet)
        assert needle in str(e.value) and "prediction vs reference" in str(e.value)
    _nifti_ras(lab, (2.5, 0.7, 0.8), preds / "case0002.nii.gz", origin=ct.GetOrigin())
    with pytest.raises(BenchError, match="--label-map"):  # BTCV ids 6 and 1 are classes here, 11 is not...
        lab11 = lab.copy()
        lab11[0, 0, 0] = 11
        _nifti_ras(lab11, (2.5, 0.7, 0.8), preds / "case0002.nii.gz", origin=ct.GetOrigin())
        evaluate_external(preds, ds, "plain", tmp_path / "results", SYNAPSE, **quiet)


def test_export_writes_a_trained_runs_predictions_with_the_recorded_spacing(trained_run, tiny_dataset, tmp_path):
    said: list[str] = []
    files = export_run(trained_run, "nifti", tmp_path / "out", images=True, say=said.append)
    assert [f.name for f in files] == ["case0001.nii.gz", "case0001_image.nii.gz"]
    mask = sitk.ReadImage(str(files[0]))
    ref, spacing = _reference(tiny_dataset)
    assert mask.GetSpacing() == tuple(reversed(spacing))
    # smoke scores the 8 central slices of the 50: the saved slab goes back to where it was, 0 elsewhere
    exported = sitk.GetArrayFromImage(mask)
    assert exported.shape == ref.shape == (50, 64, 64)
    with np.load(trained_run / "predictions" / "case0001.npz") as f:
        assert f["pred"].shape == (8, 64, 64) and np.array_equal(exported[21:29], f["pred"])
    assert not exported[:21].any() and not exported[29:].any()
    assert any("central 8 slices" in s and "0 in the masks" in s for s in said)
    with pytest.raises(BenchError, match="formats: nifti"):
        export_run(trained_run, "dicom", tmp_path / "x")


# --- geometry: what the reference records, nothing more (issue 25) -------------------------------

def test_a_reference_without_a_direction_is_matched_in_array_order_whatever_the_header(tiny_dataset, tmp_path):
    """The synthetic reference records spacing but no direction: a prediction of the same arrays scores 100 %
    with an LPS or a RAS header (it was 2.5 % with RAS: reoriented as if the reference were LPS)."""
    ref, spacing = _reference(tiny_dataset)
    ds = resolve_dataset(str(tiny_dataset), **quiet)
    for direction in ((1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)):
        preds = tmp_path / f"pred{direction[0]}"
        preds.mkdir()
        image = sitk.GetImageFromArray(ref.astype(np.uint8))  # the reference's arrays, stored as they are
        image.SetSpacing(tuple(reversed(spacing)))
        image.SetDirection(direction)
        sitk.WriteImage(image, str(preds / "case0001.nii.gz"))
        said: list[str] = []
        _, rows = evaluate_external(preds, ds, f"tool{direction[0]}", tmp_path / "results", SYNAPSE, say=said.append)
        dice = rows.query("metric == 'dice' and status == 'both_present'")["value"]
        assert len(dice) and dice.eq(1).all(), direction
        assert any("record no direction" in s and "case0001.nii.gz" in s for s in said) == (direction[0] == -1)
        image.SetSpacing(tuple(2 * s for s in reversed(spacing)))  # what it records is still checked
        sitk.WriteImage(image, str(preds / "case0001.nii.gz"))
        with pytest.raises(BenchError, match=r"spacing \(.*prediction vs reference"):
            evaluate_external(preds, ds, f"other{direction[0]}", tmp_path / "results", SYNAPSE, **quiet)


# --- nothing a user gave is written over: re-runs, sources, row sets (issue 25) ---------------------

def _tool(tiny: Path, folder: Path) -> Path:
    ref, _ = _reference(tiny)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "case0001.npz", pred=_edited(ref))
    return folder


def _state(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_rows_of_other_conventions_and_tolerances_survive_a_rerun(tiny_dataset, tmp_path):
    ds = resolve_dataset(str(tiny_dataset), **quiet)
    preds = _tool(tiny_dataset, tmp_path / "tool")
    run, _ = evaluate_external(preds, ds, "tool", tmp_path / "results", SYNAPSE, **quiet)
    rescore_run(run, "strict")
    rescore_run(run, "synapse", 1.0)
    evaluate_external(preds, ds, "tool", tmp_path / "results", SYNAPSE, **quiet)  # the same command again
    rows = pd.read_parquet(run / "metrics.parquet")
    sets = rows.groupby(["convention", "nsd_tolerance_mm"]).size().to_dict()
    assert sets == {("strict", 2.0): len(rows) / 3, ("synapse", 1.0): len(rows) / 3, ("synapse", 2.0): len(rows) / 3}


def test_a_changed_source_is_refused_naming_the_changed_files_unless_forced(tiny_dataset, tmp_path):
    ds = resolve_dataset(str(tiny_dataset), **quiet)
    preds = _tool(tiny_dataset, tmp_path / "tool")
    evaluate_external(preds, ds, "tool", tmp_path / "results", SYNAPSE, **quiet)
    moved = Path(shutil.copytree(preds, tmp_path / "moved"))  # the same files elsewhere: the same source
    run, _ = evaluate_external(moved, ds, "tool", tmp_path / "results", SYNAPSE, **quiet)
    before = _state(run)
    ref, _ = _reference(tiny_dataset)
    np.savez_compressed(moved / "case0001.npz", pred=ref)  # another prediction under the same name
    with pytest.raises(BenchError) as e:
        evaluate_external(moved, ds, "tool", tmp_path / "results", SYNAPSE, **quiet)
    assert "case0001.npz" in str(e.value) and "changed" in str(e.value) and "--force" in str(e.value)
    assert _state(run) == before
    rescore_run(run, "strict")
    _, rows = evaluate_external(moved, ds, "tool", tmp_path / "results", SYNAPSE, force=True, **quiet)
    assert rows.query("metric == 'dice' and status == 'both_present'")["value"].eq(1).all()
    stored = pd.read_parquet(run / "metrics.parquet")
    assert set(stored["convention"]) == {"synapse"}  # rows of the old predictions are not kept beside the new


def test_a_rerun_that_is_stopped_keeps_the_complete_run(tiny_dataset, tmp_path, monkeypatch):
    """Stopped while it scores (SIGINT is KeyboardInterrupt): the previous result stays whole, nothing staged stays."""
    import bench.engine.evaluation as evaluation

    ds = resolve_dataset(str(tiny_dataset), **quiet)
    preds = _tool(tiny_dataset, tmp_path / "tool")
    run, _ = evaluate_external(preds, ds, "tool", tmp_path / "results", SYNAPSE, **quiet)
    before = _state(run)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "score_case", stopped)
    with pytest.raises(KeyboardInterrupt):
        evaluate_external(preds, ds, "tool", tmp_path / "results", Evaluation(convention="strict"), **quiet)
    assert _state(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted([".lock", *{k.split("/")[0] for k in before}])


def _written_since(folder: Path, ns: int) -> bool:
    for p in folder.rglob("*.npz"):
        try:
            if p.stat().st_mtime_ns >= ns:
                return True
        except FileNotFoundError:  # renamed meanwhile
            continue
    return False


def test_a_signal_during_an_external_rerun_says_so_and_keeps_the_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from helpers import subprocess_env

    root = synth.generate(tmp_path / "many", seed=0, size=64, train_cases=("0020",),
                          test_cases=tuple(f"{k:04d}" for k in range(1, 9)))
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in resolve_dataset(str(root), **quiet).test_cases:
        ref, _ = _reference(root, case)
        np.savez_compressed(preds / f"{case}.npz", pred=_edited(ref))
    args = [sys.executable, "-m", "bench", "evaluate", "--pred", str(preds), "--ref", str(root), "--name", "tool",
            "--results", str(tmp_path / "results"), "--convention", "strict"]
    first = subprocess.run(args[:-2], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    run = tmp_path / "results" / "many" / "external" / "tool"
    before = _state(run)
    started = time.time_ns()
    proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not _written_since(run, started):
        time.sleep(0.005)  # until the first case of the re-run is scored (and its prediction written)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "stopped by SIGTERM" in err and f"{run} is unchanged" in err and "Traceback" not in err, err
    assert _state(run) == before
    assert not [p for p in run.rglob("*") if p.name != ".lock" and p.name.startswith(".")]
