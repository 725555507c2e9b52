"""Whole-volume inference: slices batched through the model, predictions at native resolution.

Two resize modes:
- ``nearest-label``: the official behaviour (argmax at the input size, label map scaled back
  by nearest neighbour); use it for paper comparisons.
- ``bilinear-logits`` (default): logits resized bilinearly to the native size, then argmax;
  this removes the blocky organ edges of the official procedure.

Two inference-side options (``evaluation.tta``, ``evaluation.postprocess``): test-time mirroring
averages the softmax of the four mirrorings of each slice, as nnU-Net mirrors its 2D inputs, and
the label volume can be post-processed (``bench.engine.postprocess``). At ``none`` both leave the
prediction exactly as it was without them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bench.engine.postprocess import postprocess as postprocessed

TTA = ("none", "flip")
MIRRORS = ((), (3,), (2,), (2, 3))  # no flip, left-right, up-down, both (dims of B x C x H x W)


def _to_input(slice_: np.ndarray, size: int) -> np.ndarray:
    """C x size x size from an H x W (gray) or H x W x C slice; cubic zoom, channel by channel."""
    planes = [slice_] if slice_.ndim == 2 else [slice_[..., c] for c in range(slice_.shape[2])]
    h, w = slice_.shape[:2]
    if (h, w) != (size, size):
        planes = [ndimage.zoom(p, (size / h, size / w), order=3) for p in planes]
    return np.stack(planes).astype(np.float32)


@dataclass
class InferenceClock:
    """Time an evaluation spends predicting, added up by ``predict_volume`` over the volumes it is given.

    ``forward_seconds`` is the model's forward passes alone (synchronised on CUDA, so the time is the
    device's); ``predict_seconds`` is everything from native slices in to native labels out (input zoom,
    forward, logits resize, argmax, copy back). Nothing extra runs: these are the evaluation's own passes.
    """

    slices: int = 0
    passes: int = 0
    forward_seconds: float = 0.0
    predict_seconds: float = 0.0
    native: set[tuple[int, int]] = field(default_factory=set)  # the slice sizes predicted (H, W)

    def record(self, batch_size: int, input_size: int) -> dict:
        """The manifest's test-time figures (none when nothing was predicted)."""
        if not self.slices or self.forward_seconds <= 0 or self.predict_seconds <= 0:
            return {}
        sizes = ", ".join(f"{h} x {w}" for h, w in sorted(self.native))
        return {"eval_slices_per_second": round(self.slices / self.forward_seconds, 3),
                "eval_ms_per_slice": round(1000 * self.predict_seconds / self.slices, 3),
                "eval_batch_size": batch_size, "eval_slices": self.slices,
                "eval_timed": f"the evaluation's own passes over {self.slices} test slices: slices/s = model "
                              f"forward only, batches of up to {batch_size} at {input_size} x {input_size} "
                              f"({self.passes} passes, the first included); ms/slice = native slice ({sizes}) "
                              "to native labels (input zoom, forward, logits resize, argmax) per slice"}


def _forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device, tta: str,
             clock: InferenceClock | None) -> torch.Tensor:
    """Scores of one batch (``_scores``), as evaluation computes them (fp16 autocast on CUDA); timed into
    ``clock``."""
    cuda = device.type == "cuda"
    if clock is not None and cuda:
        torch.cuda.synchronize(device)  # only the forward pass is counted, not work queued before it
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
        logits = _scores(model, x, tta)
    if clock is not None:
        if cuda:
            torch.cuda.synchronize(device)
        clock.forward_seconds += time.perf_counter() - t0
        clock.passes += 1
        clock.slices += len(x)
    return logits


def _scores(model: torch.nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """The logits of a batch (``tta: none``), or its softmax averaged over ``MIRRORS`` (``flip``), each
    mirrored prediction flipped back before averaging."""
    if tta == "none":
        return model(x).float()
    probs = [model(x.flip(dims)).float().softmax(1).flip(dims) for dims in MIRRORS]
    return torch.stack(probs).mean(0)


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module,
    image: np.ndarray,
    input_size: int,
    batch_size: int = 24,
    resize: str = "bilinear-logits",
    device: torch.device | str = "cpu",
    channels: int = 1,
    tta: str = "none",
    postprocess: str = "none",
    clock: InferenceClock | None = None,
) -> np.ndarray:
    """Label volume (D x H x W, uint8) for an image volume (D x H x W, or H x W for 2D; with
    ``channels`` > 1, D x H x W x C or H x W x C). With ``tta: flip`` the averaged probabilities take
    the logits' place (resized the same way); ``postprocess`` is applied to the whole label volume.
    ``clock`` adds up the time it took."""
    t0 = time.perf_counter()
    if resize not in ("nearest-label", "bilinear-logits"):
        raise ValueError(f"unknown resize mode {resize!r}")
    if tta not in TTA:
        raise ValueError(f"unknown test-time augmentation {tta!r}; one of {', '.join(TTA)}")
    device = torch.device(device)
    squeeze = image.ndim == (2 if channels == 1 else 3)
    vol = image[None] if squeeze else image
    if vol.ndim != (3 if channels == 1 else 4) or (channels > 1 and vol.shape[3] != channels):
        raise ValueError(f"expected an image of {channels} channel(s), got shape {image.shape}")
    d, h, w = vol.shape[:3]
    model.eval()
    out = np.zeros((d, h, w), dtype=np.uint8)
    for start in range(0, d, batch_size):
        chunk = np.stack([_to_input(s, input_size) for s in vol[start : start + batch_size]])
        x = torch.from_numpy(chunk).to(device)
        logits = _forward(model, x, device, tta, clock)
        if resize == "bilinear-logits":
            if (h, w) != (input_size, input_size):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            out[start : start + len(chunk)] = logits.argmax(1).to(torch.uint8).cpu().numpy()
        else:
            labels = logits.argmax(1).cpu().numpy().astype(np.uint8)
            for i, lab in enumerate(labels):
                if (h, w) != (input_size, input_size):
                    lab = ndimage.zoom(lab, (h / input_size, w / input_size), order=0)
                out[start + i] = lab
    out = postprocessed(out, postprocess)
    if clock is not None:
        clock.native.add((h, w))
        clock.predict_seconds += time.perf_counter() - t0  # out is on the host: CUDA work has finished
    return out[0] if squeeze else out
