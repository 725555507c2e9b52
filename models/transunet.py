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
ImageNet-21k ``R50+ViT-B_16.npz`` and trained official checkpoints are renamed by
:func:`checkpoint_filter`, registered with the variants, when :func:`models.weights.load_weights` loads them.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GroupNormAct, StdConv2d, to_2tuple
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import Block

from models.registry import register_variants
from models.weights import Converted, WeightsFilter, listing

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
    stage: Any  # an nn.Sequential's item types as Module, whose attributes torch types as Tensor | Module
    for stage in backbone.stages:
        down = stage.blocks[0].downsample
        channels = down.conv.out_channels  # official gn_proj: GroupNorm(C, C), default eps
        down.norm = GroupNormAct(channels, num_groups=channels, eps=1e-5, apply_act=False)
    return backbone


def r50_features(backbone: ResNetV2, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The 1/16 map of an :func:`r50_backbone` and its skips at 1/8, 1/4, 1/2 (deepest first)."""
    stem: Any = backbone.stem  # conv, norm, pool by name: torch types them as Tensor | Module
    x = stem.norm(stem.conv(x))
    skips, (h, w) = [x], x.shape[-2:]
    x = stem.pool(x)
    for i, stage in enumerate(backbone.stages):
        x = stage(x)
        if i < len(backbone.stages) - 1:
            h, w = h // 2, w // 2
            # the unpadded stem pool leaves the 1/4 map one pixel short; the official code zero-pads it
            skips.insert(0, F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])))
    return x, skips


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
                  attn_drop=attention_dropout,
                  # the ignore: timm annotates norm_layer as a class, though its own defaults are partials
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))  # type: ignore[arg-type]
            for _ in range(num_layers)
        ])
        block: Any  # Module items, whose attributes torch types as Tensor | Module
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
        return r50_features(self.backbone, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x, skips = self.forward_cnn(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        tokens = self.norm(self.blocks(self.pos_drop(tokens)))
        x = tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        return self.segmentation_head(self.decoder(x, skips))


# --- checkpoints in other layouts -----------------------------------------------------------------

def _t(a, kind: str = "") -> torch.Tensor:
    """A Flax array as a PyTorch tensor: conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in)."""
    w = torch.from_numpy(a.copy()).float()
    if kind == "conv":
        return w.permute(3, 2, 0, 1)
    if kind == "dense":
        return w.reshape(-1, w.shape[-1]).T if w.ndim == 3 else w.T  # attention out: (heads, dim, D)
    if kind == "qkv":
        return w.reshape(w.shape[0], -1).T  # (D, heads, dim) -> (heads * dim, D)
    return w.reshape(-1) if kind == "vector" else w


def _resize_pos_embed(posemb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Drop the class token's entry and zoom the position grid linearly, as the official load_from."""
    n = posemb.shape[1]
    if n == grid[0] * grid[1]:
        return posemb
    tokens = posemb[0, 1:] if math.isqrt(n - 1) ** 2 == n - 1 else posemb[0]
    old = math.isqrt(tokens.shape[0])
    if (old, old) == grid:
        return tokens[None]
    from scipy import ndimage

    zoomed = ndimage.zoom(tokens.reshape(old, old, -1).numpy(), (grid[0] / old, grid[1] / old, 1), order=1)
    return torch.from_numpy(zoomed).reshape(1, grid[0] * grid[1], -1)


class _GoogleNpz:
    """A Google hybrid-ViT npz with its key prefix removed (``w``); ``get`` converts one array and notes
    its key, ``unused`` lists the npz keys nothing asked for."""

    def __init__(self, npz: Mapping[str, np.ndarray]):
        self.prefix = _npz_prefix(npz)
        self.w = {k[len(self.prefix):]: v for k, v in npz.items() if k.startswith(self.prefix)}
        self.used: set[str] = set()

    def get(self, key: str, kind: str = "") -> torch.Tensor:
        self.used.add(key)
        return _t(self.w[key], kind)

    def unused(self) -> list[str]:
        return sorted(self.prefix + k for k in self.w if k not in self.used)


def _google_r50(weights: _GoogleNpz, backbone: ResNetV2) -> dict[str, torch.Tensor]:
    """``backbone.*`` keys from the CNN part of a Google hybrid-ViT npz."""
    w, get = weights.w, weights.get
    out = {"backbone.stem.conv.weight": get("conv_root/kernel", "conv"),
           "backbone.stem.norm.weight": get("gn_root/scale", "vector"),
           "backbone.stem.norm.bias": get("gn_root/bias", "vector")}
    stage: Any  # Module items, whose attributes torch types as Tensor | Module
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage.blocks):
            src, dst = f"block{i + 1}/unit{j + 1}/", f"backbone.stages.{i}.blocks.{j}."
            names = [(f"conv{r}", f"conv{r}", f"gn{r}", f"norm{r}") for r in (1, 2, 3)]
            if block.downsample is not None:
                names.append(("conv_proj", "downsample.conv", "gn_proj", "downsample.norm"))
            for conv, our_conv, gn, our_norm in names:
                if f"{src}{conv}/kernel" not in w:
                    continue  # the model is deeper than the file: left as initialised, reported missing
                out[f"{dst}{our_conv}.weight"] = get(f"{src}{conv}/kernel", "conv")
                out[f"{dst}{our_norm}.weight"] = get(f"{src}{gn}/scale", "vector")
                out[f"{dst}{our_norm}.bias"] = get(f"{src}{gn}/bias", "vector")
    return out


def google_r50_state(npz: Mapping[str, np.ndarray], backbone: ResNetV2
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``backbone.*`` keys -> tensors from the CNN of a Google hybrid-ViT npz (``R50+ViT-B_16.npz``), and
    the npz keys left unused (the ViT's), for networks that take only the R50."""
    weights = _GoogleNpz(npz)
    return _google_r50(weights, backbone), weights.unused()


def _npz_prefix(npz: Mapping[str, np.ndarray]) -> str:
    prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in npz), None)
    if prefix is None:
        raise ValueError(f"not a Google ViT checkpoint: no 'embedding/kernel' among {listing(sorted(npz))}")
    if f"{prefix}conv_root/kernel" not in npz:
        raise ValueError("a pure ViT checkpoint (no 'conv_root/kernel'): the R50 needs the hybrid R50+ViT-B_16.npz")
    return prefix


def google_vit_state(npz: Mapping[str, np.ndarray], model: TransUNet) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our TransUNet keys -> tensors from a Google hybrid-ViT npz, and the npz keys left unused."""
    weights = _GoogleNpz(npz)
    w, get = weights.w, weights.get
    out = _google_r50(weights, model.backbone)
    out["patch_embed.weight"] = get("embedding/kernel", "conv")
    out["patch_embed.bias"] = get("embedding/bias")
    out["pos_embed"] = _resize_pos_embed(get("Transformer/posembed_input/pos_embedding"), model.grid)
    out["norm.weight"] = get("Transformer/encoder_norm/scale")
    out["norm.bias"] = get("Transformer/encoder_norm/bias")
    for i in range(len(model.blocks)):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        if f"{src}LayerNorm_0/scale" not in w:
            continue
        attn = f"{src}MultiHeadDotProductAttention_1/"
        out[dst + "attn.qkv.weight"] = torch.cat([get(f"{attn}{n}/kernel", "qkv") for n in ("query", "key", "value")])
        out[dst + "attn.qkv.bias"] = torch.cat([get(f"{attn}{n}/bias", "vector") for n in ("query", "key", "value")])
        out[dst + "attn.proj.weight"] = get(f"{attn}out/kernel", "dense")
        out[dst + "attn.proj.bias"] = get(f"{attn}out/bias")
        for ln, ours in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{dst}{ours}.weight"] = get(f"{src}{ln}/scale")
            out[f"{dst}{ours}.bias"] = get(f"{src}{ln}/bias")
        for r in (0, 1):
            out[f"{dst}mlp.fc{r + 1}.weight"] = get(f"{src}MlpBlock_3/Dense_{r}/kernel", "dense")
            out[f"{dst}mlp.fc{r + 1}.bias"] = get(f"{src}MlpBlock_3/Dense_{r}/bias")
    return out, weights.unused()


def official_transunet_state(state: Mapping[str, torch.Tensor], model: TransUNet) -> dict[str, torch.Tensor]:
    """An official TransUNet ``VisionTransformer`` state dict under our TransUNet's keys.

    Keys it cannot place keep their names, so the strict check lists them.
    """
    hybrid, enc = "transformer.embeddings.hybrid_model.", "transformer.encoder."
    fixed = {f"{hybrid}root.conv.weight": "backbone.stem.conv.weight",
             f"{hybrid}root.gn.weight": "backbone.stem.norm.weight",
             f"{hybrid}root.gn.bias": "backbone.stem.norm.bias",
             "transformer.embeddings.patch_embeddings.weight": "patch_embed.weight",
             "transformer.embeddings.patch_embeddings.bias": "patch_embed.bias",
             f"{enc}encoder_norm.weight": "norm.weight", f"{enc}encoder_norm.bias": "norm.bias"}
    unit = {"gn1": "norm1", "gn2": "norm2", "gn3": "norm3",
            "downsample": "downsample.conv", "gn_proj": "downsample.norm"}
    layer = {"attention_norm": "norm1", "ffn_norm": "norm2", "ffn.fc1": "mlp.fc1", "ffn.fc2": "mlp.fc2",
             "attn.out": "attn.proj"}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if k in fixed:
            out[fixed[k]] = v
        elif k == "transformer.embeddings.position_embeddings":
            out["pos_embed"] = _resize_pos_embed(v, model.grid)
        elif m := re.fullmatch(re.escape(hybrid) + r"body\.block(\d+)\.unit(\d+)\.(\w+)\.(weight|bias)", k):
            name = unit.get(m[3], m[3])
            out[f"backbone.stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}.{name}.{m[4]}"] = v
        elif m := re.fullmatch(re.escape(enc) + r"layer\.(\d+)\.attn\.(query|key|value)\.(weight|bias)", k):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
        elif m := re.fullmatch(re.escape(enc) + r"layer\.(\d+)\.(.+)\.(weight|bias)", k):
            out[f"blocks.{m[1]}.{layer.get(m[2], m[2])}.{m[3]}"] = v
        else:
            out[k] = v  # decoder.* and segmentation_head.* are named alike
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:
            out.update({f"{enc}layer.{i}.attn.{n}.{kind}": t for n, t in parts.items()})
    return out


def checkpoint_filter(contents: Mapping, model: TransUNet, path: Path) -> Converted | None:
    """Google's ``R50+ViT-B_16.npz`` (the encoder only) or a trained official TransUNet checkpoint
    (``transformer.embeddings.*`` keys; must match exactly) under our keys; None for any other file."""
    if path.suffix == ".npz":
        state, unused = google_vit_state(contents, model)
        return Converted("vit_npz", state, partial=True, unused=tuple(unused))
    if any(k.startswith("transformer.embeddings.") for k in contents):
        return Converted("transunet_official", official_transunet_state(contents, model), partial=False)
    return None


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


# cast: the filter takes a TransUNet, and the registry passes it only the models of this builder
register_variants(TransUNet, VARIANTS, weights_filter=cast(WeightsFilter, checkpoint_filter))
