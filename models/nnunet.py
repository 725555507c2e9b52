"""nnU-Net's 2D networks, built with ``dynamic-network-architectures`` as nnU-Net v2 plans them.

``nnunet-plain`` is ``PlainConvUNet`` as nnU-Net v2's default ``ExperimentPlanner`` configures its
``2d`` configuration; ``nnunet-resenc-m`` and ``nnunet-resenc-l`` are ``ResidualEncoderUNet`` as the
``nnUNetPlannerResEncM`` / ``nnUNetPlannerResEncL`` presets configure it (Isensee et al., "nnU-Net
Revisited", MICCAI 2024). The network classes come from the library; only the topology rule is
written here (:func:`plan_2d`), for the protocol's input size taken as the 2D patch size, with square
pixels (our slices are resampled to a square input):

* poolings: halve the patch while the map is at least 2 x 4 = 8 pixels (nnU-Net's minimum bottleneck
  edge of 4); if only one axis can still be pooled it must be at least 12; stages = poolings + 1;
* features: 32 doubling per stage, capped at 512 (the 2D cap; 3D caps at 320);
* 3 x 3 kernels everywhere (isotropic pixels), stride 1 in the first stage and 2 after;
* PlainConvUNet: 2 convolutions per encoder and decoder stage; ResEnc: (1, 3, 4, 6, 6, 6, ...)
  residual blocks per encoder stage and 1 convolution per decoder stage;
* conv bias, InstanceNorm (affine, eps 1e-5), LeakyReLU, no dropout; nnU-Net's He initialisation
  (and for ResEnc, the last norm of each residual branch set to zero), as nnunetv2 builds them.

The ResEnc M and L presets differ only in the GPU memory they target. In 2D that changes the patch
size only for images larger than about 512 x 512 (and the batch size, which our protocol sets), so at
the protocols' input sizes ``nnunet-resenc-m`` and ``-l`` are the same network under two names, as
nnunetv2's own plans are (tests/models/test_nnunet_nets.py drives the real planners and compares).
The memory rule that shrinks a patch is not applied: our input size is the protocol's.

Trained with our recipe: deep supervision is off, because the protocol's loss is applied to the one
full-resolution output of every model. The library still builds the lower-resolution heads (so that
nnU-Net checkpoints load either way); they are kept, frozen (no gradient, no weight decay), so the
parameter count and the state-dict keys are those of nnunetv2's network. Input sides must be
multiples of 2^poolings (16 at 64 to 127 px, 32 at 128 to 255, ...).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from torch.nn.modules.utils import _pair

from models.registry import register_variants

MIN_EDGE = 4  # nnU-Net's UNet_featuremap_min_edge_length
BASE_FEATURES = 32
MAX_FEATURES_2D = 512
PLAIN_CONVS = 2  # ExperimentPlanner: UNet_blocks_per_stage_encoder / _decoder
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # ResEncUNetPlanner: UNet_blocks_per_stage_encoder
RESENC_DECODER_CONVS = 1


@dataclass(frozen=True)
class Topology:
    """What nnU-Net's planner decides for a 2D patch: the network's stages, widths, kernels and strides."""

    patch_size: tuple[int, int]
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, int], ...]
    strides: tuple[tuple[int, int], ...]

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def divisor(self) -> tuple[int, int]:
        """What the input's sides must be multiples of: the product of the strides per axis."""
        return (math.prod(s[0] for s in self.strides), math.prod(s[1] for s in self.strides))


def plan_2d(img_size: int | Sequence[int], base_features: int = BASE_FEATURES,
            max_features: int = MAX_FEATURES_2D, min_edge: int = MIN_EDGE) -> Topology:
    """nnU-Net v2's 2D topology for a patch of ``img_size`` with square pixels (see the module docstring).

    Raises ValueError if a side is not a multiple of its 2^poolings (nnU-Net would pad the patch to one).
    """
    size = [int(s) for s in _pair(img_size)]
    if min(size) < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    current, pools, strides = list(size), [0, 0], [(1, 1)]
    while True:
        axes = [a for a in (0, 1) if current[a] >= 2 * min_edge]
        if not axes or (len(axes) == 1 and current[axes[0]] < 3 * min_edge):
            break
        for a in axes:
            pools[a] += 1
            current[a] = math.ceil(current[a] / 2)
        strides.append((2 if 0 in axes else 1, 2 if 1 in axes else 1))
    for side, n in zip(size, pools, strict=True):
        if side % 2 ** n:
            lower = side - side % 2 ** n
            raise ValueError(f"nnU-Net plans {n} poolings for a side of {side}, which must then be a multiple of "
                             f"{2 ** n}: use {lower} or {lower + 2 ** n}")
    features = tuple(min(max_features, base_features * 2 ** i) for i in range(len(strides)))
    return Topology((size[0], size[1]), features, ((3, 3),) * len(strides), tuple(strides))


def _check_input(model: Any, args: tuple) -> None:
    x = args[0]
    dh, dw = model.input_divisor
    if x.ndim != 4 or x.shape[-2] % dh or x.shape[-1] % dw:
        raise ValueError(f"{type(model).__name__} expects B x {model.in_channels} x H x W with H divisible by {dh} "
                         f"and W by {dw}, got {tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"expected {model.in_channels} input channels, got {x.shape[1]}")


def build_nnunet(num_classes: int = 9, in_channels: int = 1, img_size: int = 224, residual: bool = False,
                 base_features: int = BASE_FEATURES, max_features: int = MAX_FEATURES_2D) -> nn.Module:
    """PlainConvUNet (``residual=False``) or ResidualEncoderUNet as nnU-Net v2 plans it for ``img_size``."""
    from dynamic_network_architectures.architectures.unet import (  # type: ignore[import-untyped]
        PlainConvUNet,
        ResidualEncoderUNet,
    )

    topo = plan_2d(img_size, base_features, max_features)
    n = topo.n_stages
    common = dict(input_channels=in_channels, num_classes=num_classes, n_stages=n,
                  features_per_stage=topo.features_per_stage, conv_op=nn.Conv2d, kernel_sizes=topo.kernel_sizes,
                  strides=topo.strides, conv_bias=True, norm_op=nn.InstanceNorm2d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                  nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    if residual:
        if n > len(RESENC_BLOCKS):
            raise ValueError(f"nnU-Net's ResEnc presets stop at {len(RESENC_BLOCKS)} stages; {img_size} needs {n}")
        net: Any = ResidualEncoderUNet(n_blocks_per_stage=RESENC_BLOCKS[:n],
                                             n_conv_per_stage_decoder=(RESENC_DECODER_CONVS,) * (n - 1), **common)
    else:
        net = PlainConvUNet(n_conv_per_stage=(PLAIN_CONVS,) * n, n_conv_per_stage_decoder=(PLAIN_CONVS,) * (n - 1),
                            **common)
    net.apply(net.initialize)
    for head in list(net.decoder.seg_layers)[:-1]:  # deep-supervision heads: built, never used
        head.requires_grad_(False)
    net.topology = topo
    net.input_divisor = topo.divisor
    net.in_channels = in_channels
    net.num_classes = num_classes
    net.pretrained_from = None  # set by models.weights.load_weights
    net.register_forward_pre_hook(_check_input)  # a hook, not a wrapper: the keys stay nnU-Net's
    return net


VARIANTS: dict[str, dict] = {
    "nnunet-plain": {},
    "nnunet-resenc-m": {"residual": True},
    "nnunet-resenc-l": {"residual": True},  # the same 2D network as M up to ~512 px (see the module docstring)
}

register_variants(build_nnunet, VARIANTS)
