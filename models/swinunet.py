"""Swin-Unet (Cao et al., 2021): a U-shaped segmentation network made only of Swin Transformer blocks.

Reproduces the official network (HuCaoFighting/Swin-Unet @ 7d80541: ``SwinTransformerSys`` inside the
``SwinUnet`` wrapper) on top of timm's ``SwinTransformerBlock``, ``PatchMerging`` and ``PatchEmbed``.
Only the pieces timm lacks are written here: patch expanding (x2 in the decoder, x4 before the head)
and the skip fusion (concatenate, then Linear(2C -> C)).

Tokens stay in timm's B x H x W x C layout throughout (the official code uses B x L x C; every
operation is per token or per window, so the two are equivalent). State-dict keys are the official
``swin_unet.*`` keys without that prefix, minus the buffers derived from the geometry
(``relative_position_index``, ``attn_mask``), so official checkpoints load through
:func:`models.weights.load_weights` without renaming. ImageNet Swin encoder checkpoints are converted by
:func:`imagenet_encoder_filter`, registered with the variants at the bottom of the file.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed, to_2tuple, trunc_normal_
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock

from models.registry import register_variants
from models.weights import Converted, WeightsFilter

SCALES: dict[str, dict] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
UPSAMPLINGS = ("patch_expand", "bilinear", "transposed_conv")


class PatchExpand(nn.Module):
    """Upsample tokens by ``scale``: Linear(C -> scale^2 * out_dim, no bias), spread the channels over a
    scale x scale neighbourhood, LayerNorm. ``scale=2, out_dim=C/2`` is the official ``PatchExpand``;
    ``scale=4, out_dim=C`` is its ``FinalPatchExpand_X4``."""

    def __init__(self, dim: int, out_dim: int, scale: int, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s = self.scale
        # channel index = (row offset, column offset, channel), as the official einops pattern
        # 'b h w (p1 p2 c) -> b (h p1) (w p2) c'
        x = self.expand(x).reshape(b, h, w, s, s, -1).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, h * s, w * s, -1))


class BilinearExpand(nn.Module):
    """Ablation upsampler: Linear(C -> out_dim, no bias) at the low resolution (cheaper than after),
    bilinear interpolation by ``scale``, LayerNorm. No learned spatial detail."""

    def __init__(self, dim: int, out_dim: int, scale: int, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, out_dim, bias=False)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x).permute(0, 3, 1, 2)
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.norm(x.permute(0, 2, 3, 1))


class TransposedConvExpand(nn.Module):
    """Ablation upsampler: ConvTranspose2d(C -> out_dim, kernel 2*scale, stride scale, padding scale/2),
    LayerNorm.

    The kernel overlaps neighbouring outputs on purpose: a non-overlapping kernel (= stride) would be
    exactly the same linear map as patch expanding, and the ablation would compare nothing.
    """

    def __init__(self, dim: int, out_dim: int, scale: int, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.expand = nn.ConvTranspose2d(dim, out_dim, 2 * scale, stride=scale, padding=scale // 2, bias=False)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(x.permute(0, 3, 1, 2))
        return self.norm(x.permute(0, 2, 3, 1))


_UPSAMPLERS = {"patch_expand": PatchExpand, "bilinear": BilinearExpand, "transposed_conv": TransposedConvExpand}


class SwinStage(nn.Module):
    """``depth`` Swin blocks (even ones plain, odd ones shifted) then an optional resampling layer.

    Kept instead of timm's ``SwinTransformerStage`` because that one merges patches *before* its blocks;
    the official layout (merge after, key ``layers.{i}.downsample``) keeps checkpoint keys unchanged.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        downsample: nn.Module | None = None,
        upsample: nn.Module | None = None,
    ):
        super().__init__()
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(
                dim=dim,
                input_resolution=resolution,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,  # timm drops the shift when the window covers the map
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        ])
        self.downsample = downsample
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


def _window_tiles(window: int, resolutions: list[tuple[int, int]]) -> bool:
    # a stage no larger than the window is one window (timm and the official code clamp it)
    return all(r % window == 0 or r <= window for res in resolutions for r in res)


def resolve_window_size(img_size: tuple[int, int], window_size: int | None, patch_size: int, num_stages: int,
                        preferred: int = 7) -> int:
    """The attention window for an input size: ``window_size`` if given (checked), else ``preferred`` (7,
    the paper's) when it tiles every stage, else the largest smaller window that does (128 -> 4, 96 -> 6)."""
    resolutions = [(img_size[0] // patch_size // 2**i, img_size[1] // patch_size // 2**i) for i in range(num_stages)]
    if window_size is None:
        return next(w for w in range(preferred, 0, -1) if _window_tiles(w, resolutions))
    if not _window_tiles(window_size, resolutions):
        working = [w for w in range(2, max(max(r) for r in resolutions) + 1) if _window_tiles(w, resolutions)]
        raise ValueError(
            f"window_size={window_size} does not tile the stage resolutions {resolutions} of a "
            f"{img_size[0]}x{img_size[1]} input; windows that work: {working} (or window_size=None to choose)"
        )
    return window_size


def _check_args(img_size: tuple[int, int], patch_size: int, depths: Sequence[int], num_heads: Sequence[int],
                skip_connections: int, upsampling: str) -> None:
    """Refuse, before any tensor is made, what the network cannot be built with."""
    num_stages = len(depths)
    divisor = patch_size * 2 ** (num_stages - 1)
    if len(num_heads) != num_stages:
        raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must have the same length")
    if any(s % divisor for s in img_size) or min(img_size) <= 0:
        raise ValueError(
            f"img_size {img_size} must be a positive multiple of {divisor} "
            f"(patch {patch_size} x {num_stages - 1} patch mergings), e.g. 96, 128, 160, 224"
        )
    if not 0 <= skip_connections <= num_stages - 1:
        raise ValueError(f"skip_connections must be in 0..{num_stages - 1}, got {skip_connections}")
    if upsampling not in _UPSAMPLERS:
        raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")


class SwinUnet(nn.Module):
    """Swin-Unet with ablation knobs; the defaults are the paper's Swin-T configuration.

    Args:
        skip_connections: how many encoder-decoder skips to keep, shallowest scales first as in the
            paper's ablation: 0 = none, 1 = only the 1/4-scale skip, 2 = the 1/4 and 1/8 skips,
            3 = all (1/4, 1/8, 1/16; the default). A dropped skip also drops its Linear(2C -> C).
        upsampling: ``patch_expand`` (the paper's), ``bilinear`` or ``transposed_conv``; used for all
            four upsampling layers (three x2 in the decoder, the final x4).
        window_size: attention window; ``None`` picks 7 at 224 and a window that tiles every stage
            at other sizes (see :func:`resolve_window_size`). The chosen value is ``self.window_size``.
        drop_path_rate: stochastic depth, linear over the encoder blocks; each decoder stage reuses
            the rates of its mirror encoder stage, as the official code does.

    A one-channel input is repeated to three channels, as the official wrapper does, so ImageNet
    patch-embedding weights fit. The network is built for one input size (``img_size``), like the
    official one: attention masks and windows depend on it.
    """

    def __init__(
        self,
        num_classes: int = 9,
        in_channels: int = 1,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        patch_norm: bool = True,
        skip_connections: int = 3,
        upsampling: str = "patch_expand",
    ):
        super().__init__()
        num_stages = len(depths)
        self.img_size = to_2tuple(img_size)
        _check_args(self.img_size, patch_size, depths, num_heads, skip_connections, upsampling)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.skip_connections = skip_connections
        self.upsampling = upsampling
        self.window_size = resolve_window_size(self.img_size, window_size, patch_size, num_stages)
        self.pretrained_from: str | None = None  # set by models.weights.load_weights
        upsampler = _UPSAMPLERS[upsampling]

        self.patch_embed = PatchEmbed(
            img_size=self.img_size, patch_size=patch_size, in_chans=3 if in_channels == 1 else in_channels,
            embed_dim=embed_dim, norm_layer=nn.LayerNorm if patch_norm else None, output_fmt="NHWC",
        )
        self.pos_drop = nn.Dropout(drop_rate)
        grid = self.patch_embed.grid_size
        dims = [embed_dim * 2**i for i in range(num_stages)]
        res = [(grid[0] // 2**i, grid[1] // 2**i) for i in range(num_stages)]
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # plain numbers, on any device
        stage_dpr = [dpr[sum(depths[:i]):sum(depths[:i + 1])] for i in range(num_stages)]
        common: dict[str, Any] = dict(window_size=self.window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                      drop=drop_rate, attn_drop=attn_drop_rate)

        self.layers = nn.ModuleList(
            SwinStage(dims[i], res[i], depths[i], num_heads[i], drop_path=stage_dpr[i],
                      downsample=PatchMerging(dims[i]) if i < num_stages - 1 else None, **common)
            for i in range(num_stages)
        )
        self._build_decoder(dims, res, depths, num_heads, stage_dpr, upsampler, common)
        self.norm = nn.LayerNorm(dims[-1])
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = upsampler(embed_dim, embed_dim, patch_size)
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)
        self.apply(_init_weights)

    def _build_decoder(self, dims: list[int], res: list[tuple[int, int]], depths: Sequence[int],
                       num_heads: Sequence[int], stage_dpr: list[list[float]], upsampler, common: dict) -> None:
        """Decoder stage i works at encoder scale j = num_stages-1-i; stage 0 only expands the bottleneck.
        (Modules are made in the order their initial weights are drawn in, stage by stage.)"""
        num_stages = len(depths)
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for i in range(num_stages):
            j = num_stages - 1 - i
            if i == 0:
                self.layers_up.append(upsampler(dims[j], dims[j] // 2, 2))
            else:
                up = upsampler(dims[j], dims[j] // 2, 2) if j > 0 else None
                self.layers_up.append(SwinStage(dims[j], res[j], depths[j], num_heads[j], drop_path=stage_dpr[j],
                                                upsample=up, **common))
            self.concat_back_dim.append(nn.Linear(2 * dims[j], dims[j]) if self._uses_skip(i) else nn.Identity())

    def _uses_skip(self, i: int) -> bool:
        """Decoder stage i fuses the encoder tokens of scale index num_stages-1-i (0 = 1/4) if kept."""
        return i > 0 and len(self.layers) - 1 - i < self.skip_connections

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"SwinUnet was built for B x C x {self.img_size[0]} x {self.img_size[1]} inputs, got "
                f"{tuple(x.shape)}; resize the input or create the model with img_size=<H>"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x)  # tokens before the stage's blocks, as the official forward_features
            x = layer(x)
        x = self.norm(x)
        for i, layer_up in enumerate(self.layers_up):
            if self._uses_skip(i):
                x = torch.cat([x, skips[len(self.layers) - 1 - i]], dim=-1)
            x = layer_up(self.concat_back_dim[i](x))
        x = self.up(self.norm_up(x))
        return self.output(x.permute(0, 3, 1, 2))


def _init_weights(m: nn.Module) -> None:
    # the official initialisation: truncated normal Linear weights, zero biases, unit LayerNorms
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_swinunet(num_classes: int = 9, in_channels: int = 1, img_size: int = 224, scale: str = "tiny",
                   **knobs) -> SwinUnet:
    """A Swin-Unet from a scale preset (tiny | small | base); explicit knobs override the preset."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    return SwinUnet(num_classes=num_classes, in_channels=in_channels, img_size=img_size,
                    **{**SCALES[scale], **knobs})


# --- ImageNet Swin encoder checkpoints ------------------------------------------------------------

def _timm_to_microsoft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # timm merges patches at the start of stage i+1; Microsoft (and Swin-Unet) at the end of stage i
    if not any(re.match(r"layers\.3\.downsample\.", k) for k in state):
        return state
    return {re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k): v
            for k, v in state.items()}


def _mirror_encoder(state: dict[str, torch.Tensor], num_stages: int) -> dict[str, torch.Tensor]:
    """Also offer every ``layers.{i}.x`` as ``layers_up.{L-1-i}.x`` (the official decoder initialisation)."""
    full = dict(state)
    for k, v in state.items():
        m = re.match(r"layers\.(\d+)\.(.*)", k)
        if m:
            full[f"layers_up.{num_stages - 1 - int(m[1])}.{m[2]}"] = v
    return full


def imagenet_encoder_filter(state: Mapping[str, torch.Tensor], model: SwinUnet, path: Path) -> Converted | None:
    """An ImageNet Swin encoder checkpoint (Microsoft's ``swin_tiny_patch4_window7_224.pth`` layout, or
    timm's) loaded as the official ``SwinUnet.load_from`` does: encoder keys directly, ``layers.{i}.*``
    also into ``layers_up.{L-1-i}.*``, keys the model lacks or whose shapes differ dropped, the
    decoder-only layers left as initialised. None for any other file (a whole Swin-Unet loads as it is)."""
    if not any(k.startswith("layers.") for k in state) or any(k.startswith("layers_up.") for k in state):
        return None
    return Converted("swin_imagenet", _mirror_encoder(_timm_to_microsoft(dict(state)), len(model.layers)),
                     partial=True)


# name -> default knobs; callers' knobs override these.
VARIANTS: dict[str, dict] = {
    "swinunet": {},  # the paper's Swin-T configuration
    "swinunet-skip0": {"skip_connections": 0},
    "swinunet-skip1": {"skip_connections": 1},  # 1/4 scale only
    "swinunet-skip2": {"skip_connections": 2},  # 1/4 and 1/8
    "swinunet-skip3": {"skip_connections": 3},  # all (= swinunet), named for ablation tables
    "swinunet-bilinear": {"upsampling": "bilinear"},
    "swinunet-transposed": {"upsampling": "transposed_conv"},
    "swinunet-small": {"scale": "small"},
    "swinunet-base": {"scale": "base"},
    # CPU smoke-test size; not a paper configuration
    "swinunet-nano": {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8)},
}


# cast: the filter takes a SwinUnet, and the registry passes it only the models of this builder
register_variants(build_swinunet, VARIANTS, weights_filter=cast(WeightsFilter, imagenet_encoder_filter))
