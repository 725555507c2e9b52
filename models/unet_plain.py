"""The U-Net and Attention U-Net of the Swin-Unet paper's "U-Net" and "Att-UNet" rows.

The Swin-Unet authors trained those rows with ``U_Net`` and ``AttU_Net`` of
bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets (``Models.py`` @ f63262d; HuCaoFighting/Swin-Unet issue 14).
This file builds the same networks from their architecture (no code of that repository is used):

* encoder: five levels of two (3x3 conv with bias, BatchNorm, ReLU), 64, 128, 256, 512, 1024 channels,
  2x2 max-pooling between levels;
* decoder: per level, nearest-neighbour x2 upsampling followed by a 3x3 conv-BN-ReLU that halves the
  channels, concatenation [skip, upsampled], and two conv-BN-ReLU; a 1x1 conv head (with bias);
* ``attunet`` adds Oktay et al.'s (2018) additive attention gate on every skip: 1x1 conv + BN of the
  upsampled decoder map and of the skip, summed, ReLU, 1x1 conv to one channel + BN + sigmoid, and the
  skip multiplied by that map; the gate's inner width is half the skip's.

34,526,409 (``unet-plain``) and 34,877,941 (``attunet``) parameters with 1 input channel and 9 classes,
as the repository's classes (counted on them; tests/models/data/official_nest_unets.json.gz). Inputs
must have sides divisible by 16 (the repository's networks fail on a concatenation otherwise).

Checkpoints saved from the repository's classes (keys ``Conv1.conv.0.weight``, ``Up5.up.1.weight``,
``Att5.W_g.0.weight``, ``Conv.weight``, ...) load through :func:`checkpoint_filter`. The blocks here are
also the decoder of :mod:`models.r50unet`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn

from models.registry import register_variants
from models.weights import Converted

WIDTHS = (64, 128, 256, 512, 1024)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> list[tuple[str, nn.Module]]:
    return [("conv", nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)),
            ("bn", nn.BatchNorm2d(out_channels)), ("relu", nn.ReLU(inplace=True))]


class ConvBlock(nn.Sequential):
    """Two 3x3 conv (with bias) - BatchNorm - ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        first, second = conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels)
        super().__init__(OrderedDict([(f"{n}{i}", m) for i, layers in ((1, first), (2, second)) for n, m in layers]))


class UpConv(nn.Sequential):
    """Nearest-neighbour x2 upsampling, then a 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(OrderedDict([("up", nn.Upsample(scale_factor=2, mode="nearest")),
                                      *conv_bn_relu(in_channels, out_channels)]))


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): the skip ``x`` scaled by a [0, 1] map computed from
    itself and the gating signal ``g`` (the decoder's upsampled map, at the same resolution)."""

    def __init__(self, gate_channels: int, skip_channels: int, inner_channels: int):
        super().__init__()

        def project(c: int, out: int) -> nn.Sequential:
            return nn.Sequential(OrderedDict(conv=nn.Conv2d(c, out, 1), bn=nn.BatchNorm2d(out)))

        self.g = project(gate_channels, inner_channels)
        self.x = project(skip_channels, inner_channels)
        self.psi = project(inner_channels, 1)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.psi(torch.relu(self.g(g) + self.x(x))))


class DecoderStage(nn.Module):
    """Upsample-conv to ``out_channels``, (gated) concatenation [skip, upsampled], two conv-BN-ReLU.
    ``skip_channels=0``: a stage with no skip (upsampling and convolutions only)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, attention: bool = False):
        super().__init__()
        self.up = UpConv(in_channels, out_channels)
        self.gate = AttentionGate(out_channels, skip_channels, skip_channels // 2) if attention and skip_channels \
            else None
        self.conv = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([skip if self.gate is None else self.gate(x, skip), x], dim=1)
        return self.conv(x)


class PlainUNet(nn.Module):
    """U-Net with batch norm, optionally with attention gates; ``widths`` per level (the repository's:
    64 to 1024). Fully convolutional: any input whose sides are multiples of 2^(levels - 1)."""

    def __init__(self, num_classes: int = 9, in_channels: int = 1, attention: bool = False,
                 widths: Sequence[int] = WIDTHS):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two levels, got {list(widths)}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.attention = attention
        self.stride = 2 ** (len(widths) - 1)
        self.pretrained_from: str | None = None  # set by models.weights.load_weights
        self.encoder = nn.ModuleList(ConvBlock(c_in, c) for c_in, c in zip((in_channels, *widths[:-1]), widths,
                                                                           strict=True))
        self.pool = nn.MaxPool2d(2)
        # deepest first: decoder stage i takes level n-1-i's output and fuses level n-2-i's
        self.decoder = nn.ModuleList(DecoderStage(widths[i + 1], widths[i], widths[i], attention)
                                     for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"{type(self).__name__} expects B x {self.in_channels} x H x W with H and W multiples "
                             f"of {self.stride}, got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        skips = []
        for i, level in enumerate(self.encoder):
            x = level(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for stage in self.decoder:
            x = stage(x, skips.pop())
        return self.head(x)


def build_plain_unet(num_classes: int = 9, in_channels: int = 1, img_size: int = 224, attention: bool = False,
                     widths: Sequence[int] = WIDTHS) -> PlainUNet:
    """The repository's U-Net (``attention=False``) or Attention U-Net; ``img_size`` is only checked."""
    stride = 2 ** (len(widths) - 1)
    if img_size % stride:
        raise ValueError(f"{'attunet' if attention else 'unet-plain'} needs img_size divisible by {stride}, "
                         f"got {img_size}")
    return PlainUNet(num_classes=num_classes, in_channels=in_channels, attention=attention, widths=tuple(widths))


# --- checkpoints of the repository's classes ------------------------------------------------------

_BLOCK = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}  # their nn.Sequential indices
_UP = {"1": "conv", "2": "bn"}
_GATE = {"W_g": "g", "W_x": "x", "psi": "psi"}
_PROJ = {"0": "conv", "1": "bn"}


def nest_of_unets_state(state: Mapping[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A ``U_Net`` / ``AttU_Net`` state dict (bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets) under our keys.

    Their level k (``Conv{k}``, 1 = full resolution) is our ``encoder.{k-1}``; their decoder level k
    (``Up{k}``, ``Att{k}``, ``Up_conv{k}``, k = levels..2) is our ``decoder.{levels-k}``. Keys it cannot
    place keep their names, so the strict check lists them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"Conv(\d+)\.conv\.(\d)\.(\w+)", key):
            new = f"encoder.{int(m[1]) - 1}.{_BLOCK.get(m[2], m[2])}.{m[3]}"
        elif m := re.fullmatch(r"Up_conv(\d+)\.conv\.(\d)\.(\w+)", key):
            new = f"decoder.{levels - int(m[1])}.conv.{_BLOCK.get(m[2], m[2])}.{m[3]}"
        elif m := re.fullmatch(r"Up(\d+)\.up\.(\d)\.(\w+)", key):
            new = f"decoder.{levels - int(m[1])}.up.{_UP.get(m[2], m[2])}.{m[3]}"
        elif m := re.fullmatch(r"Att(\d+)\.(W_g|W_x|psi)\.(\d)\.(\w+)", key):
            new = f"decoder.{levels - int(m[1])}.gate.{_GATE[m[2]]}.{_PROJ.get(m[3], m[3])}.{m[4]}"
        elif m := re.fullmatch(r"Conv\.(weight|bias)", key):
            new = f"head.{m[1]}"
        else:
            new = key
        out[new] = value
    return out


def checkpoint_filter(contents: Mapping[str, Any], model: nn.Module, path: Path) -> Converted | None:
    """A checkpoint of the repository's ``U_Net`` / ``AttU_Net`` (must match exactly); None for others."""
    if "Conv1.conv.0.weight" not in contents:
        return None
    levels = len(cast(PlainUNet, model).encoder)
    return Converted("nest_of_unets", nest_of_unets_state(contents, levels), partial=False)


VARIANTS: dict[str, dict] = {
    "unet-plain": {},  # U_Net
    "attunet": {"attention": True},  # AttU_Net
}

register_variants(build_plain_unet, VARIANTS, weights_filter=checkpoint_filter)
