"""The seeds' plain U-Net: a VGG16-BN encoder with a light, normalisation-free decoder.

Encoder: torchvision's VGG16-BN feature stack (first convolution adapted to ``in_channels``), read out
before each max-pool, giving maps at strides 1, 2, 4, 8, 16 with 64, 128, 256, 512, 512 channels; the
final max-pool is dropped because nothing reads it. Decoder: four stages of bilinear x2 upsampling,
concatenation with the skip and two 3x3 conv + ReLU (1024->512, 768->256, 384->128, 192->64), then a
1x1 head. 24,898,953 parameters with 1 input channel and 9 classes.

Encoder keys keep torchvision's ``features.N`` names so ImageNet VGG16-BN weights load as they are.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.vgg import cfgs, make_layers

from models.registry import register_model


class DecoderBlock(nn.Sequential):
    """Two 3x3 convolutions with ReLU and no normalisation."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class VGGUNet(nn.Module):
    """U-Net over VGG16-BN; accepts any input whose height and width are multiples of 16."""

    stride = 16

    def __init__(self, num_classes: int = 9, in_channels: int = 1):
        super().__init__()
        # make_layers builds exactly vgg16_bn(weights=None).features, without also allocating the
        # 120M-parameter classifier that would be thrown away
        features = make_layers(cfgs["D"], batch_norm=True)
        features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        self.features = features[:-1]
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pretrained_from: str | None = None  # set by models.weights.load_weights
        self.decoder = nn.ModuleList([
            DecoderBlock(512 + 512, 512),
            DecoderBlock(512 + 256, 256),
            DecoderBlock(256 + 128, 128),
            DecoderBlock(128 + 64, 64),
        ])
        self.head = nn.Conv2d(64, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(
                f"VGGUNet expects B x {self.in_channels} x H x W with H and W multiples of {self.stride}, "
                f"got {tuple(x.shape)}"
            )
        skips = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                skips.append(x)
            x = layer(x)
        for block, skip in zip(self.decoder, reversed(skips), strict=False):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


@register_model("unet")
def unet(num_classes: int = 9, in_channels: int = 1, img_size: int = 224) -> VGGUNet:
    """The seeds' VGG16-BN U-Net; fully convolutional, so ``img_size`` is only checked."""
    if img_size % VGGUNet.stride:
        raise ValueError(f"unet needs img_size divisible by {VGGUNet.stride}, got {img_size}")
    return VGGUNet(num_classes=num_classes, in_channels=in_channels)
