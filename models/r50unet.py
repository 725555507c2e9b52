"""R50 U-Net and R50 Att-UNet: the TransUNet paper's CNN baselines, reconstructed.

The TransUNet paper (Chen et al., arXiv 2102.04306) reports a U-Net and an Attention U-Net with a
ResNet-50 encoder beside R50-ViT-CUP and TransUNet; the Swin-Unet paper copies those rows. Their code
was never released (Beckschen/TransUNet issue 14), so these networks are a reconstruction and the
published tables mark their rows as such.

Encoder: the R50 of our TransUNet (:func:`models.transunet.r50_backbone`: timm's ResNetV2 set up as
the official hybrid's CNN: GroupNorm, weight-standardized convolutions, stem and stages of 3, 4, 9
bottlenecks, 1/16 output with 1024 channels). Chosen over timm's / smp's ImageNet ``resnet50``
because the point of these rows is the comparison with R50-ViT-CUP and TransUNet: with the very CNN
those two use, the rows differ only by the transformer and the decoder, and Google's
``R50+ViT-B_16.npz`` initialises their encoder exactly as it initialises TransUNet's (its R50 part is
loaded by :func:`checkpoint_filter`; the ViT entries are reported unused). A one-channel input is
repeated to three channels, as TransUNet does.

Decoder: the decoder of ``unet-plain`` / ``attunet`` (:mod:`models.unet_plain`: nearest x2 upsampling
+ conv-BN-ReLU, concatenation [skip, upsampled], two conv-BN-ReLU; ``r50-attunet`` gates each skip
with Oktay et al.'s attention gate), i.e. those U-Nets with their encoder replaced. Its stages take
the R50's skips at 1/8, 1/4 and 1/2 (512, 256, 64 channels) and have their widths, as U-Net's decoder
stages have their skips' widths; the last stage (1/2 -> 1/1) has no skip, as the R50 has no
full-resolution map, and keeps 64 channels. A 1x1 conv head. Inputs: multiples of 16.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

from models.registry import register_variants
from models.transunet import SKIP_CHANNELS, google_r50_state, r50_backbone, r50_features
from models.unet_plain import DecoderStage
from models.weights import Converted

DECODER_CHANNELS = (512, 256, 64, 64)


class R50UNet(nn.Module):
    """TransUNet's R50 encoder with a U-Net decoder (``attention=True``: with attention gates)."""

    stride = 16

    def __init__(self, num_classes: int = 9, in_channels: int = 1, attention: bool = False,
                 resnet_layers: Sequence[int] = (3, 4, 9), decoder_channels: Sequence[int] = DECODER_CHANNELS):
        super().__init__()
        if len(resnet_layers) != 3 or len(decoder_channels) != 4:
            raise ValueError(f"resnet_layers needs 3 stages and decoder_channels 4 stages, got "
                             f"{list(resnet_layers)} and {list(decoder_channels)}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.attention = attention
        self.pretrained_from: str | None = None  # set by models.weights.load_weights
        self.backbone = r50_backbone(3 if in_channels == 1 else in_channels, resnet_layers)
        ins = (self.backbone.num_features, *decoder_channels[:-1])
        self.decoder = nn.ModuleList(DecoderStage(i, s, o, attention)
                                     for i, s, o in zip(ins, (*SKIP_CHANNELS, 0), decoder_channels, strict=True))
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"R50UNet expects B x {self.in_channels} x H x W with H and W multiples of "
                             f"{self.stride}, got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x, skips = r50_features(self.backbone, x)
        for stage, skip in zip(self.decoder, (*skips, None), strict=True):
            x = stage(x, skip)
        return self.head(x)


def build_r50_unet(num_classes: int = 9, in_channels: int = 1, img_size: int = 224, attention: bool = False,
                   resnet_layers: Sequence[int] = (3, 4, 9),
                   decoder_channels: Sequence[int] = DECODER_CHANNELS) -> R50UNet:
    """R50 U-Net (``attention=False``) or R50 Att-UNet; fully convolutional, ``img_size`` is only checked."""
    if img_size % R50UNet.stride:
        raise ValueError(f"r50-unet needs img_size divisible by {R50UNet.stride}, got {img_size}")
    return R50UNet(num_classes, in_channels, attention, tuple(resnet_layers), tuple(decoder_channels))


def checkpoint_filter(contents: Mapping[str, Any], model: nn.Module, path: Path) -> Converted | None:
    """Google's ``R50+ViT-B_16.npz``: its R50 as our encoder (the rest left as initialised); None for a
    plain state dict."""
    if path.suffix != ".npz":
        return None
    npz: Mapping[str, np.ndarray] = contents
    state, unused = google_r50_state(npz, cast(R50UNet, model).backbone)
    return Converted("r50_npz", state, partial=True, unused=tuple(unused))


VARIANTS: dict[str, dict] = {
    "r50-unet": {},
    "r50-attunet": {"attention": True},
}

register_variants(build_r50_unet, VARIANTS, weights_filter=checkpoint_filter)
