"""TransUNet (Chen et al., 2021): a ResNet-50 + ViT-B/16 hybrid encoder with a cascaded upsampler (CUP).

Reproduces the official R50-ViT-B_16 network (Beckschen/TransUNet @ 02ef001, ``VisionTransformer`` in
``networks/vit_seg_modeling.py``, built as its ``train.py`` does) from timm's pieces: the CNN is timm's
``ResNetV2`` (non-pre-activation bottlenecks, GroupNorm, weight-standardized convolutions; stem and
three stages of 3, 4, 9 blocks), the transformer is timm's ViT ``Block``. Only the CUP decoder is
written here. 105,277,081 parameters with 9 classes at 224, as the official network.

Where the official network departs from timm's ``vit_base_r50_s16_224`` backbone we follow the official
one, so that its checkpoints and results transfer (each is set explicitly below):

* symmetric padding instead of TF "SAME"; the stem max-pool has no padding, so the 1/4-scale map is
  one pixel short (55 at 224) and the skip taken from it is zero-padded at the bottom and right;
* weight standardization eps 1e-5 (timm: 1e-8), GroupNorm eps 1e-6; the projection shortcut's norm is
  a per-channel GroupNorm(C, C) with eps 1e-5 (timm: 32 groups);
* no class token; dropout 0.1 after the position embedding and inside the MLPs, none on attention.

State-dict keys: ``backbone.*`` (timm ResNetV2), ``patch_embed``, ``pos_embed``, ``blocks.*`` (timm
ViT), ``norm``; the decoder keys (``decoder.*``, ``segmentation_head.*``) are the official ones. Google's
ImageNet-21k ``R50+ViT-B_16.npz`` loads through :func:`models.weights.load_weights`.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GroupNormAct, StdConv2d, to_2tuple
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import Block

from models.registry import register_model

SKIP_CHANNELS = (512, 256, 64)  # the R50 maps at 1/8, 1/4, 1/2: the decoder's first three skips
HEAD_CHANNELS = 512  # the CUP's first convolution, hidden -> 512


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias) - BatchNorm - ReLU; a Sequential so keys match the official ``Conv2dReLU``."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling (align_corners=True, as the official ``UpsamplingBilinear2d``), optional
    concatenation with a skip, two conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """The cascaded upsampler: conv hidden -> 512, then four x2 decoder blocks; block i fuses skip i
    (1/8, 1/4, 1/2 scale) when ``i < skip_connections``; the last block never has one."""

    def __init__(self, hidden_size: int, decoder_channels: Sequence[int], skip_connections: int):
        super().__init__()
        self.skip_connections = skip_connections
        self.conv_more = conv_bn_relu(hidden_size, HEAD_CHANNELS)
        ins = [HEAD_CHANNELS, *decoder_channels[:-1]]
        skips = [c if i < skip_connections else 0 for i, c in enumerate((*SKIP_CHANNELS, 0))]
        self.blocks = nn.ModuleList(DecoderBlock(i, o, s)
                                    for i, o, s in zip(ins, decoder_channels, skips, strict=False))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.conv_more(x)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < self.skip_connections else None)
        return x


def r50_backbone(in_chans: int, layers: Sequence[int]) -> ResNetV2:
    """timm's ResNetV2 (non-pre-activation, GN + StdConv) set up as the official TransUNet's CNN."""
    backbone = ResNetV2(
        layers=list(layers), num_classes=0, global_pool="", in_chans=in_chans, preact=False, stem_type="",
        conv_layer=partial(StdConv2d, eps=1e-5), norm_layer=partial(GroupNormAct, num_groups=32, eps=1e-6),
    )
    backbone.stem.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)  # official: no padding
    for stage in backbone.stages:
        down = stage.blocks[0].downsample
        channels = down.conv.out_channels  # official gn_proj: GroupNorm(C, C), default eps
        down.norm = GroupNormAct(channels, num_groups=channels, eps=1e-5, apply_act=False)
    return backbone


class TransUNet(nn.Module):
    """TransUNet with ablation knobs; the defaults are the paper's R50-ViT-B/16 configuration.

    Args:
        skip_connections: how many CNN skips the decoder fuses, counted from the deepest as the official
            ``n_skip``: 0 = none, 1 = the 1/8 skip, 2 = 1/8 and 1/4, 3 = 1/8, 1/4 and 1/2 (the default).
        hidden_size, num_layers, num_heads, mlp_dim: the ViT on the 1/16 map (ViT-B: 768, 12, 12, 3072).
        resnet_layers: blocks per CNN stage (R50: 3, 4, 9); the stage widths stay R50's.
        decoder_channels: the four decoder blocks' widths.

    A one-channel input is repeated to three channels, as the official network does. The model is built
    for one input size (the position embedding has one entry per 16 x 16 patch).
    """

    def __init__(
        self,
        num_classes: int = 9,
        in_channels: int = 1,
        img_size: int | tuple[int, int] = 224,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        resnet_layers: Sequence[int] = (3, 4, 9),
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        skip_connections: int = 3,
    ):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        if any(s % 16 or s <= 0 for s in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be a positive multiple of 16 (ViT patches on the "
                             f"1/16 CNN map), e.g. 96, 128, 224")
        if not 0 <= skip_connections <= 3:
            raise ValueError(f"skip_connections must be in 0..3, got {skip_connections}")
        if len(resnet_layers) != 3 or len(decoder_channels) != 4:
            raise ValueError(f"resnet_layers needs 3 stages and decoder_channels 4 blocks, got "
                             f"{list(resnet_layers)} and {list(decoder_channels)}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.skip_connections = skip_connections
        self.grid = (self.img_size[0] // 16, self.img_size[1] // 16)
        self.pretrained_from: str | None = None  # set by models.weights.load_weights

        self.backbone = r50_backbone(3 if in_channels == 1 else in_channels, resnet_layers)
        self.patch_embed = nn.Conv2d(self.backbone.num_features, hidden_size, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], hidden_size))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[
            Block(hidden_size, num_heads, mlp_ratio=mlp_dim / hidden_size, qkv_bias=True, proj_drop=dropout,
                  attn_drop=attention_dropout, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(num_layers)
        ])
        for block in self.blocks:
            # the official attention output dropout uses the attention rate, not the MLP's
            block.attn.proj_drop = nn.Dropout(attention_dropout)
            # the official MLP initialisation
            for fc in (block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.decoder = DecoderCup(hidden_size, decoder_channels, skip_connections)
        # a Sequential for the official key (``segmentation_head.0``; its upsampling slot is unused)
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"TransUNet was built for B x C x {self.img_size[0]} x {self.img_size[1]} inputs, got "
                f"{tuple(x.shape)}; resize the input or create the model with img_size=<H>"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")

    def forward_cnn(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The 1/16 CNN map and the skips at 1/8, 1/4, 1/2 (deepest first, as the decoder takes them)."""
        stem = self.backbone.stem
        x = stem.norm(stem.conv(x))
        skips, (h, w) = [x], x.shape[-2:]
        x = stem.pool(x)
        for i, stage in enumerate(self.backbone.stages):
            x = stage(x)
            if i < len(self.backbone.stages) - 1:
                h, w = h // 2, w // 2
                # the unpadded stem pool leaves the 1/4 map one pixel short; the official code zero-pads it
                skips.insert(0, F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])))
        return x, skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x, skips = self.forward_cnn(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        tokens = self.norm(self.blocks(self.pos_drop(tokens)))
        x = tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        return self.segmentation_head(self.decoder(x, skips))


# name -> default knobs; callers' knobs override these.
VARIANTS: dict[str, dict] = {
    "transunet": {},  # the paper's R50-ViT-B/16, all three skips
    "transunet-skip0": {"skip_connections": 0},
    "transunet-skip1": {"skip_connections": 1},  # 1/8 only
    "transunet-skip2": {"skip_connections": 2},  # 1/8 and 1/4
    "transunet-skip3": {"skip_connections": 3},  # all (= transunet), named for ablation tables
    # CPU smoke-test size; not a paper configuration
    "transunet-tiny": {"hidden_size": 192, "num_layers": 4, "num_heads": 3, "mlp_dim": 768,
                       "resnet_layers": (1, 1, 1)},
}


def _register(name: str, defaults: dict) -> None:
    def builder(**kwargs) -> TransUNet:
        return TransUNet(**{**defaults, **kwargs})

    builder.__name__ = name.replace("-", "_")
    builder.__doc__ = f"TransUNet with {defaults or 'the paper defaults'}."
    register_model(name)(builder)


for _name, _defaults in VARIANTS.items():
    _register(_name, _defaults)
