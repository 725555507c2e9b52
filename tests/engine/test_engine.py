"""Engine pieces: batch order, loss, inference modes, run paths, atomic files, locks, console table."""
import io
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from bench.data.sampling import augment, batch_keys
from bench.engine.inference import predict_volume
from bench.engine.losses import combined_loss, dice_loss
from bench.engine.results import RunId, RunLocked, parse_run_path, run_lock, run_path
from bench.engine.train import poly_lr
from bench.files import atomic_write
from bench.protocol import Augmentation


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_iteration():
    n, bs = 23, 5
    epoch0 = [k for it in range(5) for k in batch_keys(n, bs, seed=3, iteration=it)]
    assert sorted(i for _, i in epoch0) == list(range(n))  # last batch of the epoch is short
    assert {e for e, _ in epoch0} == {0}
    assert batch_keys(n, bs, 3, 7) == batch_keys(n, bs, 3, 7)
    assert batch_keys(n, bs, 3, 5) != batch_keys(n, bs, 4, 5)
    assert batch_keys(n, bs, 3, 5)[0][0] == 1


def test_augmentation_is_a_function_of_its_generator():
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    lab = (img > 0.5).astype(np.int64)
    a = augment(img, lab, Augmentation(), np.random.default_rng([1, 2, 3]))
    b = augment(img, lab, Augmentation(), np.random.default_rng([1, 2, 3]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_poly_lr_schedule():
    assert poly_lr(0.05, 0, 100, 0.9) == 0.05
    assert poly_lr(0.05, 50, 100, 0.9) == pytest.approx(0.05 * 0.5**0.9)
    assert poly_lr(0.05, 99, 100, 0.9) > 0


def test_dice_loss_matches_the_official_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    p = logits.softmax(1)
    expected = []
    for c in range(3):
        g = (target == c).float()
        expected.append(1 - (2 * (p[:, c] * g).sum() + 1e-5) / ((p[:, c] ** 2).sum() + (g**2).sum() + 1e-5))
    assert dice_loss(logits, target).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)
    total, ce, dl = combined_loss(logits, target, 0.4, 0.6)
    assert total.item() == pytest.approx(0.4 * ce.item() + 0.6 * dl.item(), rel=1e-6)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_batched_inference_equals_one_slice_per_forward_in_nearest_label_mode():
    vol = np.random.default_rng(1).random((7, 40, 40)).astype(np.float32)
    model = _Tiny()
    batched = predict_volume(model, vol, 32, batch_size=4, resize="nearest-label")
    single = np.stack([predict_volume(model, s, 32, batch_size=1, resize="nearest-label") for s in vol])
    assert batched.shape == vol.shape and batched.dtype == np.uint8
    assert np.array_equal(batched, single)


class _FixedLogits(torch.nn.Module):
    """Returns the same logits for every slice, whatever the input: the resizing alone decides the labels."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(x.shape[0], *self.logits.shape)


def _bilinear_by_hand(logits: np.ndarray, h: int, w: int) -> np.ndarray:
    """Half-pixel bilinear resize (align_corners=False, edges clamped), written out in numpy."""
    def axis(n_out: int, n_in: int):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(h, logits.shape[1])
    x0, x1, fx = axis(w, logits.shape[2])
    rows = logits[:, y0] * (1 - fy)[None, :, None] + logits[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x1] * fx[None, None, :]


def test_bilinear_logits_resizes_the_logits_before_the_argmax():
    logits = torch.from_numpy(np.random.default_rng(3).normal(size=(4, 8, 8)).astype(np.float32))
    vol = np.zeros((2, 40, 56), np.float32)
    got = predict_volume(_FixedLogits(logits), vol, 8, batch_size=2, resize="bilinear-logits")
    want = _bilinear_by_hand(logits.numpy().astype(np.float64), 40, 56).argmax(0)
    assert (got == want).all(axis=(1, 2)).all()
    # the official mode: argmax at the input size, labels scaled by nearest neighbour; other labels here
    blocky = predict_volume(_FixedLogits(logits), vol, 8, batch_size=2, resize="nearest-label")
    assert (blocky[0] == ndimage.zoom(logits.numpy().argmax(0), (40 / 8, 56 / 8), order=0)).all()
    assert (blocky[0] != got[0]).mean() > 0.05


def test_run_path_round_trip(tmp_path: Path):
    run = RunId("synthetic", "cpu", "swinunet-skip0", 3)
    assert parse_run_path(run_path(tmp_path, run)) == run


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "a.json"
    target.write_text("old")

    def boom(p: Path):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def _hold(run_dir, ready, release):
    with run_lock(Path(run_dir)):
        ready.set()
        release.wait(10)


def test_run_lock_excludes_a_second_process_and_dies_with_its_holder(tmp_path: Path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    p.start()
    assert ready.wait(10)
    with pytest.raises(RunLocked, match=f"pid {p.pid}"):
        with run_lock(tmp_path):
            pass
    p.kill()  # SIGKILL: no cleanup runs, the kernel still releases the lock
    p.join()
    with run_lock(tmp_path):
        pass


def test_validation_split_holds_out_whole_training_cases(tiny_dataset):
    from bench.data.organs import SYNAPSE_ORGANS
    from bench.data.synapse import case_of, load_volume, open_synapse, validation_split

    ds = open_synapse(tiny_dataset, "tiny", SYNAPSE_ORGANS)
    val = validation_split(ds, fraction=0.5, seed=0)
    assert val.test_cases and not set(val.test_cases) & set(ds.test_cases)
    assert not {case_of(s) for s in val.train_slices} & set(val.test_cases)
    assert validation_split(ds, 0.5, 0) == val
    image, label, _ = load_volume(val, val.test_cases[0])
    n = sum(case_of(s) == val.test_cases[0] for s in ds.train_slices)
    assert image.shape[0] == label.shape[0] == n


def test_console_table_splits_models_to_fit_the_width():
    from rich.console import Console

    from bench.report.console import render_rich

    models = [f"swinunet-variant{k:02d}" for k in range(12)]
    columns = ["DSC %", "HD95", "aorta", "stomach", "seeds", "cases"]
    table = pd.DataFrame([[50.0 + k, 9.0, 40.0, 60.0, 1, 12] for k in range(12)], index=models, columns=columns)

    def show(table: pd.DataFrame, width: int) -> str:
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(render_rich(table, "title", width))
        return console.export_text()

    for width in (80, 200):
        text = show(table, width)
        assert max(map(len, text.splitlines())) <= width
        assert "title (1/" in text
        for k, model in enumerate(models):  # every model once, with its own value
            assert text.count(model) == 1
            assert f"{50.0 + k:.2f}" in text
    assert "(1/" not in show(table.iloc[:2], 80)  # two models fit in one table
