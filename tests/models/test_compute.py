"""Compute accounting: FLOPs against hand formulas, the training-speed probe, and `bench models`."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from helpers import bench_cli
from timm.layers import Attention

from models import create_model
from models.compute import count_parameters, gflops, measure_inference, measure_training

pytestmark = pytest.mark.usefixtures("one_thread")


def test_conv_flops_match_the_formula() -> None:
    # 2 FLOPs per multiply-add: 2 * C_out * C_in * k * k * H_out * W_out, plus nothing for the bias
    conv = nn.Conv2d(1, 8, kernel_size=3, padding=1)
    assert gflops(conv, 32) * 1e9 == 2 * 8 * 1 * 3 * 3 * 32 * 32
    strided = nn.Conv2d(3, 4, kernel_size=5, stride=2, padding=2)
    assert gflops(strided, 16, in_channels=3) * 1e9 == 2 * 4 * 3 * 5 * 5 * 8 * 8


class _Tokens(nn.Module):
    """A 1 x 1 conv to ``dim`` channels, then self-attention over the pixels."""

    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 1, bias=False)
        self.attn = Attention(dim, num_heads=heads, qkv_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.embed(x).flatten(2).transpose(1, 2))


def test_attention_is_counted_on_cpu() -> None:
    # the fused CPU attention kernel is not in PyTorch's FLOP table; gflops routes it through the math one
    n, d = 8 * 8, 16
    expected = 2 * n * d + 2 * n * d * 3 * d + 2 * (2 * n * n * d) + 2 * n * d * d  # embed, qkv, QK^T and AV, proj
    assert gflops(_Tokens(d), 8) * 1e9 == expected


def test_gflops_leaves_the_model_and_rng_alone() -> None:
    model = create_model("transunet-tiny", num_classes=3, img_size=64)
    bn = model.decoder.conv_more[1]
    stats = bn.running_mean.clone()
    state = torch.get_rng_state()
    model.train()
    value = gflops(model, 64)
    assert model.training and torch.equal(bn.running_mean, stats) and torch.equal(torch.get_rng_state(), state)
    model.eval()
    assert gflops(model, 64) == value and not model.training
    assert gflops(model, 64) > 2 * count_parameters(model.blocks) * 16 / 1e9  # at least the ViT's weights x 16 tokens


@pytest.mark.parametrize("name", ["swinunet-nano", "smp-deeplabv3plus-resnet18"])  # the latter: BN on 1 x 1 maps
def test_measure_training_reports_speed_and_memory(name: str) -> None:
    model = create_model(name, num_classes=3, img_size=64)
    before = [p.detach().clone() for p in model.parameters()]
    speed = measure_training(model, 64, batch=2, steps=2, warmup=1)
    assert speed.images_per_second > 0 and speed.peak_memory_mb > 0 and speed.memory_growth_mb >= 0
    assert speed.device == "cpu" and speed.batch == 2 and speed.steps == 2
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=False))  # it did train
    with pytest.raises(ValueError, match="steps"):
        measure_training(model, 64, steps=0)


def test_measure_inference_reports_speed_and_memory_and_changes_nothing() -> None:
    model = create_model("swinunet-nano", num_classes=3, img_size=64).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speed = measure_inference(model, 64, batch=2, repeats=2)
    assert speed.slices_per_second > 0 and speed.ms_per_slice > 0 and speed.peak_memory_mb > 0
    assert speed.memory_growth_mb >= 0 and (speed.device, speed.batch, speed.repeats) == ("cpu", 2, 2)
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="repeats and batch"):
        measure_inference(model, 64, repeats=0)


def _rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


class _DtypeSpy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.dtypes: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.is_grad_enabled():  # the training steps, not the class-count probe
            self.dtypes.add(y.dtype)
        return y


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_measure_training_runs_at_the_given_precision(precision: str, dtype: torch.dtype) -> None:
    spy = _DtypeSpy()
    speed = measure_training(spy, 16, batch=2, steps=1, warmup=0, device="cpu", precision=precision)
    assert spy.dtypes == {dtype} and speed.precision == precision
    assert speed.step_seconds > 0 and speed.images_per_second == pytest.approx(2 / speed.step_seconds)


def _conv_gflops_by_hand(model: nn.Module, size: int) -> float:
    """2 * C_out * (C_in / groups) * k_h * k_w * H_out * W_out over every convolution, from forward hooks
    (independent of models.compute). For the all-convolutional U-Net that is every counted FLOP."""
    total = []

    def hook(conv, inputs, out):
        total.append(2 * out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    for h in handles:
        h.remove()
    return sum(total) / 1e9


def test_bench_models_cli() -> None:
    res = bench_cli("models", "unet", "--img-size", "64")
    assert res.returncode == 0, res.stderr
    params, flops = _rows(res.stdout)["unet"]
    assert params == "24,898,953"  # shared/reference/synapse-protocol.md: 1 input channel, 9 classes
    by_hand = _conv_gflops_by_hand(create_model("unet", num_classes=9, img_size=64), 64)
    assert by_hand > 5 and float(flops) == pytest.approx(by_hand, abs=0.01)
    res = bench_cli("models", "transunet-t*", "--img-size", "64", "--measure", "--batch", "2", "--device", "cpu",
                    "--protocol", "smoke", "--set", "precision=bf16")
    assert res.returncode == 0, res.stderr
    _, _, step_ms, rate, memory, eval_rate, eval_ms = _rows(res.stdout)["transunet-tiny"]
    assert float(rate) > 0 and re.fullmatch(r"[\d,]+ \(\+[\d,]+\)", memory)
    assert float(step_ms.replace(",", "")) == pytest.approx(2000 / float(rate), rel=0.02)
    assert float(eval_rate) > 0 and float(eval_ms.replace(",", "")) > 0
    assert "training batch 2 on cpu in bf16, inference batch 8 as evaluation runs it (fp32)" in res.stdout
    res = bench_cli("models", "unet", "--measure", "--device", "cpu", "--protocol", "smoke", "--set", "precision=fp16")
    assert res.returncode == 2 and "precision fp16 is not available on cpu" in res.stderr

    # any smp name works; a size a model can't take is a row, not a crash, and the exit status says so
    res = bench_cli("models", "smp-linknet-resnet18", "--img-size", "80")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "ValueError: smp-linknet-resnet18 needs img_size divisible by 32, got 80" in res.stdout.replace("\n", " ")
    assert "1 of 1 models could not be built" in res.stderr and "Traceback" not in res.stderr
    res = bench_cli("models", "nothing*")
    assert res.returncode == 2 and "no model matches 'nothing*'" in res.stderr
