"""Inference-side options on hand-made volumes: the largest component is kept, holes are filled, mirroring
of a mirror-symmetric input agrees with itself, and a model is rebuilt at another input size only when its
weights fit (bench.engine.postprocess, bench.engine.inference, models.registry.check_input_size)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.engine.evaluation import sized_for_inference
from bench.engine.inference import predict_volume
from bench.engine.postprocess import fill_holes, largest_components, postprocess
from bench.errors import BenchError
from bench.protocol import Evaluation
from models import at_input_size, check_input_size, create_model


def _organ_with_island_and_hole() -> np.ndarray:
    vol = np.zeros((5, 20, 20), np.uint8)
    vol[1:4, 4:12, 4:12] = 1  # the organ, 3 x 8 x 8
    vol[2, 7:9, 7:9] = 0  # a hole inside it, in one slice
    vol[2, 16:18, 16:18] = 1  # a stray island of the same class
    vol[0:5, 15:19, 1:3] = 2  # another class, one component: untouched
    return vol


def test_lcc_removes_a_stray_island_and_keeps_other_classes():
    vol = _organ_with_island_and_hole()
    out = largest_components(vol)
    assert out[2, 16:18, 16:18].tolist() == [[0, 0], [0, 0]]  # the island became background
    assert (out == 1).sum() == (vol == 1).sum() - 4
    assert np.array_equal(out == 2, vol == 2) and np.array_equal(out[vol != 1], vol[vol != 1])
    assert out[2, 7:9, 7:9].tolist() == [[0, 0], [0, 0]]  # lcc alone leaves the hole


def test_components_touching_at_a_corner_are_one():
    vol = np.zeros((2, 4, 4), np.uint8)
    vol[0, 0, 0] = vol[1, 1, 1] = 1  # 26-connected
    assert np.array_equal(largest_components(vol), vol)


def test_fill_closes_a_hole_but_never_overwrites_another_class():
    vol = _organ_with_island_and_hole()
    assert fill_holes(vol)[2, 7:9, 7:9].tolist() == [[1, 1], [1, 1]]
    ring = np.zeros((1, 9, 9), np.uint8)
    ring[0, 2:7, 2:7] = 1
    ring[0, 4, 4] = 3  # another organ inside: stays
    ring[0, 3, 3] = 0  # background inside: filled
    out = fill_holes(ring)
    assert (out[0, 4, 4], out[0, 3, 3]) == (3, 1)
    both = postprocess(vol, "lcc+fill")
    assert both[2, 7:9, 7:9].all() and not both[2, 16:18, 16:18].any()
    assert postprocess(vol, "none") is vol
    with pytest.raises(ValueError, match="unknown post-processing"):
        postprocess(vol, "fill")


class _Biased(torch.nn.Module):
    """A convolution with a left-right asymmetric kernel: mirroring changes what it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 3, 5, padding=2)

    def forward(self, x):
        return self.conv(x)


def test_flip_tta_averages_the_four_mirrorings():
    rng = np.random.default_rng(0)
    half = rng.random((2, 16, 16)).astype(np.float32)
    quarter = np.concatenate([half, half[:, :, ::-1]], axis=2)  # 16 x 32
    symmetric = np.concatenate([quarter, quarter[:, ::-1]], axis=1)  # 32 x 32, mirror-symmetric both ways
    model = _Biased()
    flip = predict_volume(model, symmetric, 32, resize="bilinear-logits", tta="flip")
    # on a mirror-symmetric input the averaged prediction is itself mirror-symmetric
    assert np.array_equal(flip, flip[:, :, ::-1]) and np.array_equal(flip, flip[:, ::-1])
    # and equals the mean of the four mirrored predictions, written out
    x = torch.from_numpy(symmetric[:, None])
    with torch.no_grad():
        mean = sum(model(x.flip(d)).softmax(1).flip(d) for d in ((), (3,), (2,), (2, 3))) / 4
    assert np.array_equal(flip, mean.argmax(1).numpy())
    plain = predict_volume(model, symmetric, 32, resize="bilinear-logits")
    assert not np.array_equal(plain, plain[:, :, ::-1])  # the model alone is not symmetric: TTA did something
    assert np.array_equal(plain, predict_volume(model, symmetric, 32, tta="none", postprocess="none"))


def test_a_model_is_rebuilt_at_a_larger_size_only_when_its_weights_fit():
    unet = create_model("unet-plain", num_classes=3, img_size=64)
    big = at_input_size(unet, 128)
    assert big is not unet and big.built_with["img_size"] == 128
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), big.state_dict().values(), strict=True))
    assert at_input_size(unet, 64) is unet
    with pytest.raises(ValueError, match="weights at 192 differ from those trained at 96.*relative_position"):
        check_input_size("swinunet", 192, 96, num_classes=9)
    swin = create_model("swinunet", num_classes=3, img_size=96)
    with pytest.raises(BenchError, match="^evaluation.inference_size 192: the model trained at 96 cannot infer"):
        sized_for_inference(swin, 96, Evaluation(inference_size=192))
    assert sized_for_inference(swin, 96, Evaluation()) == (swin, 96)
