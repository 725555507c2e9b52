"""Inference modes: batched equals one slice per forward; bilinear-logits resizes the logits before
the argmax (checked against a numpy resize written out by hand), nearest-label scales the labels."""
import numpy as np
import torch
from scipy import ndimage

from bench.engine.inference import predict_volume


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
