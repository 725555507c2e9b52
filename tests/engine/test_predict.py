"""`bench predict`: masks on the input's own grid (NIfTI, DICOM series) or at its size (2D, colour),
exactly the training preprocessing, and a bad input that costs only itself."""
from __future__ import annotations

import json
import locale
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from helpers import bench_cli
from PIL import Image
from scipy import ndimage

from bench.data.inputs import find_inputs
from bench.data.overlays import PALETTE, contour_width, overlay, side_by_side
from bench.data.resolve import resolve_dataset
from bench.engine.inference import predict_volume
from bench.engine.predict import from_run, predict_inputs
from bench.engine.runner import execute
from bench.engine.runs import RunSpec
from bench.engine.settings import RunSettings
from bench.errors import BenchError
from bench.protocol import load_protocol

CPU = torch.device("cpu")
quiet = dict(say=lambda *a, **k: None)


@pytest.fixture(autouse=True, scope="module")
def _threads(one_thread):
    yield


def _hu(tiny: Path, slices: slice = slice(None)) -> np.ndarray:
    """HU (int16, z y x) of the tiny test volume, undoing the [-125, 275] window."""
    with h5py.File(tiny / "test_vol_h5" / "case0001.npy.h5") as f:
        return np.round(f["image"][slices] * 400 - 125).astype(np.int16)


def _same_grid(a: sitk.Image, b: sitk.Image, exact: bool = True) -> None:
    """Size, spacing, origin and direction equal; NIfTI headers hold float32, so a DICOM series'
    decimal geometry comes back rounded to float32 (``exact=False``: to 1e-6 relative)."""
    assert a.GetSize() == b.GetSize()
    for get in (sitk.Image.GetSpacing, sitk.Image.GetOrigin, sitk.Image.GetDirection):
        if exact:
            assert get(a) == get(b), get.__name__
        else:
            np.testing.assert_allclose(get(a), get(b), rtol=1e-6, atol=1e-6, err_msg=get.__name__)


def _lps(hu: np.ndarray, spacing=(0.9, 0.8, 3.0), origin=(-20.0, 15.0, 40.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(hu)  # identity direction: LPS voxel order
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _ras(lps: sitk.Image) -> sitk.Image:
    """The same voxels in physical space, stored with rows and columns reversed (RAS, as NIfTI tools write)."""
    arr = sitk.GetArrayFromImage(lps)[:, ::-1, ::-1].copy()
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(lps.GetSpacing())
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    image.SetOrigin(lps.TransformIndexToPhysicalPoint((lps.GetSize()[0] - 1, lps.GetSize()[1] - 1, 0)))
    return image


def _write_dicom(image: sitk.Image, folder: Path) -> None:
    """A CT series, one file per slice, with the position and orientation tags readers use.

    GDCM's writer sets the process locale to "C" and leaves it there, which turns Python's default
    text encoding into ASCII for every later test in the process: the locale is restored after."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(image, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(image: sitk.Image, folder: Path) -> None:
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(map(str, (direction[0], direction[3], direction[6], direction[1], direction[4],
                                      direction[7])))
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0010|0020": "test",
                "0020|000e": "1.2.826.0.1.3680043.2.1125.2", "0020|0037": orientation,
                "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
                "0020|0013": str(k + 1), "0018|0050": str(image.GetSpacing()[2]),
                "0008|0018": f"1.2.826.0.1.3680043.2.1125.3.{k + 1}", "0028|1052": "0", "0028|1053": "1"}
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


def _mask(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


# --- volumes: NIfTI and DICOM series ------------------------------------------------------------

def test_nifti_and_dicom_masks_lie_on_the_input_grid(trained_run, tiny_dataset, tmp_path):
    hu = _hu(tiny_dataset, slice(18, 30))
    src = tmp_path / "in"
    src.mkdir()
    lps = _lps(hu)
    sitk.WriteImage(lps, str(src / "lps.nii.gz"))
    sitk.WriteImage(_ras(lps), str(src / "ras.nii.gz"))
    oblique = _lps(hu)
    c, s = np.cos(0.3), np.sin(0.3)  # 17 degrees about z: reorientation picks the nearest axes
    oblique.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    sitk.WriteImage(oblique, str(src / "oblique.nii.gz"))
    _write_dicom(_ras(lps), src / "series")
    inputs, skipped = find_inputs(src)
    assert sorted(i.name for i in inputs) == ["lps", "oblique", "ras", "series"] and not skipped
    p = from_run(trained_run)
    summary = predict_inputs(p, inputs, tmp_path / "out", CPU)
    assert not summary.failed and len(summary.written) == 4

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(src / "series")))
    sources = {name: sitk.ReadImage(str(src / f"{name}.nii.gz")) for name in ("lps", "ras", "oblique")}
    for name, source in (*sources.items(), ("series", reader.Execute())):  # the headers as read from the files
        mask = _mask(tmp_path / "out" / f"{name}.nii.gz")
        _same_grid(mask, source, exact=name != "series")  # the input's size, spacing, origin and direction
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayFromImage(mask))) <= set(range(9))
    # exactly the training preprocessing: the CT window (written out here), slices through the model
    expected = predict_volume(p.model, (np.clip(hu, -125, 275).astype(np.float32) + 125) / 400, p.input_size,
                              p.batch_size, p.resize, CPU)
    assert expected.any()
    assert np.array_equal(sitk.GetArrayFromImage(_mask(tmp_path / "out" / "lps.nii.gz")), expected)
    # the RAS file and the DICOM series hold the same voxels stored reversed: the same mask, reversed
    for name in ("ras", "series"):
        assert np.array_equal(sitk.GetArrayFromImage(_mask(tmp_path / "out" / f"{name}.nii.gz"))[:, ::-1, ::-1],
                              expected)


def test_a_corrupt_input_is_one_line_and_the_rest_are_written(trained_run, tiny_dataset, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sitk.WriteImage(_lps(_hu(tiny_dataset, slice(20, 26))), str(src / "good.nii.gz"))
    (src / "bad.nii.gz").write_bytes((src / "good.nii.gz").read_bytes()[:200])
    (src / "notes.txt").write_text("not an image")
    res = bench_cli("predict", str(trained_run), "--input", str(src), "--out", str(tmp_path / "out"), "--overlay")
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(src / "bad.nii.gz") in errors[0] and "Traceback" not in res.stderr
    assert "1 of 2 input(s) segmented" in res.stdout and "skipping 1 other file" in res.stdout
    written = sorted(f.name for f in (tmp_path / "out").iterdir())
    assert written == ["good.nii.gz", "good_overlay.png"]  # nothing of the bad input, no temporary files
    assert np.asarray(Image.open(tmp_path / "out" / "good_overlay.png")).shape == (64, 64, 3)
    # piped output: the header line, then a progress line per input
    assert res.stdout.startswith(f"protocol smoke ({load_protocol('smoke').hash()}), dataset tiny (the run's), "
                                 "device cpu, lr 0.01 (protocol)"), res.stdout
    assert "predict: input 1/2  bad" in res.stdout and "predict: input 2/2  good" in res.stdout


def test_reference_masks_are_drawn_beside_the_prediction(trained_run, tiny_dataset, tmp_path):
    src, refs = tmp_path / "in", tmp_path / "refs"
    src.mkdir()
    refs.mkdir()
    sitk.WriteImage(_lps(_hu(tiny_dataset, slice(20, 26))), str(src / "a.nii.gz"))
    with h5py.File(tiny_dataset / "test_vol_h5" / "case0001.npy.h5") as f:
        truth = f["label"][20:26].astype(np.uint8)
    sitk.WriteImage(_lps(truth), str(refs / "a.nii.gz"))
    res = bench_cli("predict", str(trained_run), "--input", str(src), "--out", str(tmp_path / "out"),
                    "--reference", str(refs), "--fill")
    assert res.returncode == 0, res.stdout + res.stderr
    drawn = np.asarray(Image.open(tmp_path / "out" / "a_overlay.png"))
    assert drawn.shape[1] == 2 * 64 + 8 and drawn.shape[0] > 64  # reference and prediction side by side
    band = 11 + 8
    z = int(np.argmax((truth > 0).reshape(6, -1).sum(axis=1)))  # the reference's busiest slice
    image = np.clip((_hu(tiny_dataset, slice(20, 26))[z] + 125) / 400, 0, 1)
    assert np.array_equal(drawn[band:band + 64, :64], overlay(image, truth[z], fill=True))
    # a reference on another grid, or a missing one: one line naming it, nothing written
    sitk.WriteImage(_lps(truth, spacing=(1.0, 0.8, 3.0)), str(refs / "a.nii.gz"))
    res = bench_cli("predict", str(trained_run), "--input", str(src), "--out", str(tmp_path / "bad"),
                    "--reference", str(refs))
    assert res.returncode == 2 and "reference" in res.stderr and str(refs / "a.nii.gz") in res.stderr
    res = bench_cli("predict", str(trained_run), "--input", str(src), "--out", str(tmp_path / "none"),
                    "--reference", str(tmp_path))
    assert res.returncode == 2 and "no mask for 1 input(s): a" in res.stderr and not (tmp_path / "none").exists()


def test_bad_run_folders_and_inputs_are_named(trained_run, tmp_path):
    with pytest.raises(BenchError, match="not a run folder"):
        from_run(tmp_path)
    dropped = tmp_path / "dropped"
    dropped.mkdir()
    (dropped / "manifest.json").write_text((trained_run / "manifest.json").read_text())
    with pytest.raises(BenchError, match="model.pt: not found"):
        from_run(dropped)
    with pytest.raises(BenchError, match="not found"):
        find_inputs(tmp_path / "nothing")
    png = tmp_path / "slice.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)).save(png)
    summary = predict_inputs(from_run(trained_run), find_inputs(png)[0], tmp_path / "out", CPU, **quiet)
    assert "trained on volumes" in summary.failed[0][1]


# --- 2D: colour images of other sizes, 0/255 masks ------------------------------------------------

def _colour_folder(root: Path, n: int = 5, size=(40, 48)) -> Path:
    """RGB images whose object is only visible in the red channel; 0/255 masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img, m = _colour_image(rng, size)
        Image.fromarray(img).save(root / "images" / f"p{i}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"p{i}.png")
    return root


def _colour_image(rng, size) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    m = ((yy - h * rng.uniform(0.4, 0.6)) / (0.25 * h)) ** 2 + ((xx - w * rng.uniform(0.4, 0.6)) / (0.25 * w)) ** 2 <= 1
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 50 + 150 * m
    img[..., 1] = rng.integers(0, 255, (h, w))
    img[..., 2] = 120
    return img, m


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("colour")
    folder = _colour_folder(base / "rgb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEGBENCH_CACHE", str(base / "cache"))
        ds = resolve_dataset(str(folder), **quiet)
        protocol = load_protocol("smoke")
        out = execute(RunSpec("swinunet", 0, protocol.effective_lr(), "protocol"), protocol, ds,
                      RunSettings(results=base / "results"), CPU, **quiet)
    assert out.status == "complete", out.message
    return out.path


def test_an_rgb_folder_trains_with_three_input_channels(colour_run):
    manifest = json.loads((colour_run / "manifest.json").read_text())
    assert manifest["in_channels"] == 3 and manifest["dataset"]["channels"] == 3
    assert manifest["dataset"]["preprocessing"]["mask_values"] == "0/255"
    weights = torch.load(colour_run / "model.pt", weights_only=True)["model"]
    assert weights["patch_embed.proj.weight"].shape[1] == 3  # Swin-Unet's 3-channel patch embedding


def test_pngs_of_other_sizes_are_predicted_at_their_size_in_the_training_convention(colour_run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(5)
    sizes = {"wide": (75, 130), "small": (33, 51)}
    for name, size in sizes.items():
        Image.fromarray(_colour_image(rng, size)[0]).save(src / f"{name}.png")
    Image.fromarray(np.full((30, 30), 7, np.uint8)).save(src / "gray.png")  # the model learnt from colour
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    p = from_run(colour_run)
    assert p.resize == "bilinear-logits" and p.input_size == 64
    said: list[str] = []
    summary = predict_inputs(p, find_inputs(src)[0], tmp_path / "out", CPU, with_overlay=True, say=said.append)
    failed = {inp.name: why for inp, why in summary.failed}
    assert set(failed) == {"gray", "broken"} and "colour images (3 channels)" in failed["gray"]
    assert len(said) == 2 and all(s.startswith("error: ") and "\n" not in s for s in said)
    for name, (h, w) in sizes.items():
        mask = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
        assert mask.shape == (h, w) and mask.dtype == np.uint8  # the input's size
        assert set(np.unique(mask)) <= {0, 255}  # the training masks were 0/255
        assert np.asarray(Image.open(tmp_path / "out" / f"{name}_overlay.png")).shape == (h, w, 3)
    # the same colour image through the model by hand: each channel zoomed to 64 (cubic), logits
    # resized bilinearly to the native 75 x 130, argmax, written as 0/255
    image = np.asarray(Image.open(src / "wide.png"), np.float32) / 255
    x = np.stack([ndimage.zoom(image[..., c], (64 / 75, 64 / 130), order=3) for c in range(3)]).astype(np.float32)
    with torch.no_grad():
        logits = F.interpolate(p.model(torch.from_numpy(x)[None]), size=(75, 130), mode="bilinear",
                               align_corners=False)
    expected = logits.argmax(1)[0].numpy().astype(np.uint8)
    assert 0 < expected.sum() < expected.size  # something and not everything: the comparison means something
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "wide.png")), expected * 255)
    # the overlay: the image with the mask's contour (its boundary, 2 px inside) in the first class colour
    drawn = (np.asarray(Image.open(tmp_path / "out" / "wide_overlay.png")) == PALETTE[0]).all(axis=2)
    mask = expected > 0
    assert contour_width(mask.shape) == 2
    assert np.array_equal(drawn, mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=1))


def test_overlay_draws_each_class_contour_over_the_image():
    gray = np.linspace(0, 1, 512 * 512, dtype=np.float32).reshape(512, 512)
    label = np.zeros((512, 512), np.uint8)
    label[100:300, 50:250], label[400:450, 400:500] = 1, 3
    out = overlay(gray, label)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    for k in (1, 3):
        mask = label == k
        ring = mask & ~ndimage.binary_erosion(mask, iterations=4, border_value=1)  # 4 px wide at 512
        drawn = (out == PALETTE[k - 1]).all(axis=2)
        assert np.array_equal(drawn, ring)
    untouched = ~np.isin(label, [1, 3]) | ndimage.binary_erosion(label > 0, iterations=4, border_value=1)
    plain = np.repeat((255 * gray)[..., None], 3, axis=2).astype(np.uint8)
    assert np.array_equal(out[untouched], plain[untouched])
    # --fill: inside each class, the image shows through its colour (35%); outside, nothing changes
    filled = overlay(gray, label, fill=True)
    inside = ndimage.binary_erosion(label == 1, iterations=4, border_value=1)
    expected = (0.65 * plain[inside] + 0.35 * np.array(PALETTE[0])).astype(np.uint8)
    assert np.array_equal(filled[inside], expected) and np.array_equal(filled[label == 0], plain[label == 0])
    assert np.array_equal((filled == PALETTE[0]).all(axis=2), (out == PALETTE[0]).all(axis=2))  # same contours


def test_side_by_side_shows_the_reference_left_the_prediction_right_and_a_legend():
    gray = np.linspace(0, 1, 128 * 160, dtype=np.float32).reshape(128, 160)
    pred, ref = np.zeros((128, 160), np.uint8), np.zeros((128, 160), np.uint8)
    pred[20:60, 20:60], ref[30:70, 30:70], ref[90:110, 100:140] = 1, 1, 2
    out = side_by_side(gray, pred, ref, {1: "aorta", 2: "gallbladder"})
    band = max(11, 128 // 32) + 8
    assert out.shape[1] == 2 * 160 + 8 and out.shape[0] > band + 128  # captions above, a legend below
    assert np.array_equal(out[band:band + 128, :160], overlay(gray, ref))
    assert np.array_equal(out[band:band + 128, 168:], overlay(gray, pred))
    legend = out[band + 128:]
    for k in (1, 2):  # both classes in the legend, in their colours (the prediction has no class 2)
        assert (legend == PALETTE[k - 1]).all(axis=2).sum() >= 100


# --- nothing a user gave is written over (issue 25) ----------------------------------------------

def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_an_out_folder_that_is_or_holds_an_input_is_refused(bench, trained_run, tiny_dataset, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    sitk.WriteImage(_lps(_hu(tiny_dataset, slice(20, 26))), str(scans / "ct.nii.gz"))
    before = _tree(scans)
    for given in (scans, scans / "ct.nii.gz"):  # the folder of inputs, or the folder holding the one input
        code, _, err = bench("predict", trained_run, "--input", given, "--out", scans)
        _one_line(code, err, f"--out {scans}", str(scans / "ct.nii.gz"))
        assert _tree(scans) == before  # the CT itself is not written over, and nothing is added beside it
    code, _, err = bench("predict", trained_run, "--input", scans, "--out", tmp_path / "scans" / ".." / "scans")
    _one_line(code, err, "--out")  # the same folder, however it is spelt
    assert _tree(scans) == before


def test_output_names_that_collide_are_refused_before_anything_is_written(colour_run, tmp_path):
    """x.png's overlay and x_overlay.png's mask would be one file: the second input is refused, x's overlay kept."""
    src = tmp_path / "d"
    src.mkdir()
    rng = np.random.default_rng(3)
    for name in ("x", "x_overlay"):
        Image.fromarray(_colour_image(rng, (40, 48))[0]).save(src / f"{name}.png")
    said: list[str] = []
    summary = predict_inputs(from_run(colour_run), find_inputs(src)[0], tmp_path / "o", CPU, with_overlay=True,
                             say=said.append)
    assert [inp.name for inp, _ in summary.failed] == ["x_overlay"]
    assert "x_overlay.png" in summary.failed[0][1] and "overlay of" in summary.failed[0][1]
    assert sorted(f.name for f in (tmp_path / "o").iterdir()) == ["x.png", "x_overlay.png"]
    assert np.asarray(Image.open(tmp_path / "o" / "x_overlay.png")).shape == (40, 48, 3)  # x's overlay, not a mask


def test_a_dot_input_is_named_after_its_folder(bench, trained_run, tiny_dataset, tmp_path, monkeypatch):
    series = tmp_path / "patient7"
    _write_dicom(_lps(_hu(tiny_dataset, slice(20, 26))), series)
    monkeypatch.chdir(series)
    code, out, err = bench("predict", trained_run, "--input", ".", "--out", "o")
    assert code == 0, out + err
    assert [f.name for f in (series / "o").iterdir()] == ["patient7.nii.gz"]  # not the hidden o/.nii.gz


# --- every value checked where it enters -----------------------------------------------------------

@pytest.mark.parametrize("window", [("-inf", "inf"), ("0", "inf"), ("nan", "100")])
def test_a_window_that_is_not_two_finite_numbers_is_one_line(bench, trained_run, tiny_dataset, tmp_path, window):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_lps(_hu(tiny_dataset, slice(20, 26))), str(ct))
    code, _, err = bench("predict", trained_run, "--input", ct, "--out", tmp_path / "o", "--window", *window)
    _one_line(code, err, "--window", "finite")
    assert not (tmp_path / "o").exists()


def test_a_complex_volume_is_one_line_and_the_other_inputs_are_written(bench, trained_run, tiny_dataset, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    hu = _hu(tiny_dataset, slice(20, 26))
    sitk.WriteImage(_lps((hu + 1j).astype(np.complex64)), str(src / "a_complex.nii.gz"))
    sitk.WriteImage(_lps(hu), str(src / "b_good.nii.gz"))
    code, out, err = bench("predict", trained_run, "--input", src, "--out", tmp_path / "o")
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(src / "a_complex.nii.gz") in errors[0] and "voxel type complex" in errors[0]
    assert "1 of 2 input(s) segmented" in out
    assert [f.name for f in (tmp_path / "o").iterdir()] == ["b_good.nii.gz"]


def _input(tiny: Path, folder: Path) -> Path:
    """A small CT (NIfTI) to segment."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_lps(_hu(tiny, slice(20, 26))), str(folder / "ct.nii.gz"))
    return folder / "ct.nii.gz"


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock")))


def test_a_manifest_whose_knobs_set_what_the_dataset_decides_is_one_line(bench, trained_run, tiny_dataset, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["knobs"] = {"num_classes": 3}
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = bench("predict", run, "--input", _input(tiny_dataset, tmp_path / "in"), "--out", tmp_path / "o")
    _one_line(code, err, str(run / "manifest.json"), "num_classes")


def test_a_torn_manifest_is_named_as_torn_not_missing(bench, trained_run, tiny_dataset, tmp_path):
    run = _copy_run(trained_run, tmp_path / "run")
    (run / "manifest.json").write_text('{"status": "compl')
    ct = _input(tiny_dataset, tmp_path / "in")
    for args in (["predict", run, "--input", ct, "--out", tmp_path / "o"], ["evaluate", run]):
        code, _, err = bench(*args)
        _one_line(code, err, str(run / "manifest.json"), "unreadable")
        assert "no manifest.json" not in err


@pytest.mark.parametrize("kind", ["planted", "garbage"])
def test_a_weights_file_that_is_refused_never_suggests_loading_it_unsafely(bench, trained_run, tiny_dataset, tmp_path,
                                                                          kind):
    import os
    import pickle

    class Planted:
        def __reduce__(self):
            return os.system, ("echo planted",)

    weights = tmp_path / "w.pt"
    weights.write_bytes(pickle.dumps(Planted()) if kind == "planted" else b"garbage" * 100)
    ct = _input(tiny_dataset, tmp_path / "in")
    code, _, err = bench("predict", "--weights", f"swinunet={weights}", "--protocol", "smoke",
                         "--input", ct, "--out", tmp_path / "o")
    _one_line(code, err, str(weights))
    assert "weights_only" not in err and "likely succeed" not in err
    run = _copy_run(trained_run, tmp_path / "run")  # the same file as a run's model.pt
    (run / "model.pt").write_bytes(weights.read_bytes())
    code, _, err = bench("predict", run, "--input", ct, "--out", tmp_path / "o")
    _one_line(code, err, str(run / "model.pt"))
    assert "weights_only" not in err and "likely succeed" not in err


# --- signals: what was finished and what was not, no temporary files -------------------------------

@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_predict_says_what_was_done_and_leaves_no_temporary_file(trained_run, tiny_dataset,
                                                                                tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    from helpers import subprocess_env

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    image = _lps(_hu(tiny_dataset))
    for k in range(40):
        sitk.WriteImage(image, str(src / f"scan{k:02d}.nii.gz"))
    proc = subprocess.Popen([sys.executable, "-m", "bench", "predict", str(trained_run), "--input", str(src),
                             "--out", str(out), "--overlay"], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "scan00_overlay.png").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=120)
    number = getattr(signal, sig).value
    assert proc.returncode == 128 + number, stdout + stderr
    assert f"stopped by {sig}" in stderr and "Traceback" not in stderr, stderr
    written = sorted(f.name for f in out.iterdir())
    assert not [f for f in written if f.endswith(".tmp") or f.startswith(".")], written
    done = sorted(f.removesuffix(".nii.gz") for f in written if f.endswith(".nii.gz"))
    assert done and len(done) < 40
    assert sorted(f.removesuffix("_overlay.png") for f in written if f.endswith("_overlay.png")) == done
    assert f"{len(done)} of 40 input(s) segmented" in stderr
    assert f"not segmented: scan{len(done):02d}" in stderr
