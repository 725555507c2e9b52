"""MONAI's 2D segmentation networks, named ``monai-<network>``, built by ``monai.networks.nets``.

Each name is a preset: a MONAI class and the arguments it is built with for 2D inputs with
``in_channels`` channels and ``num_classes`` outputs. Knobs override the preset's arguments (e.g.
``create_model("monai-swinunetr", feature_size=24)``). MedNeXt is resolved from its name:
``monai-mednext-<s|b|m|l>`` with an optional kernel size, ``monai-mednext-l-k5`` (default k3).
MONAI is imported when a model is built, not when the zoo is listed (it takes seconds to import).

The presets (their arguments follow each network's paper, in 2D):

* ``monai-attentionunet``: ``AttentionUnet``, channels 64 to 1024, four stride-2 levels: Oktay et al.'s
  widths, the same as ``attunet``, so MONAI's implementation can be set beside the repository's.
* ``monai-swinunetr``: ``SwinUNETR`` (spatial_dims 2), feature size 48, depths (2, 2, 2, 2), heads
  (3, 6, 12, 24), window 7: the SwinUNETR paper's configuration (MONAI's default feature size is 24).
* ``monai-unetr``: ``UNETR`` (spatial_dims 2) with ViT-B/16 (hidden 768, 12 layers, 12 heads, MLP 3072),
  feature size 16, instance norm, residual blocks: the paper's configuration. Built for one input size
  (position embeddings).
* ``monai-segresnet``: ``SegResNet`` (spatial_dims 2), 32 initial filters, blocks (1, 2, 2, 4) down and
  (1, 1, 1) up: Myronenko's (2018) configuration (MONAI's default is a lighter 8 filters).
* ``monai-dynunet``: ``DynUNet``, MONAI's re-implementation of nnU-Net, with the topology nnU-Net's
  planner gives this input size (:func:`models.nnunet.plan_2d`: kernels, strides, 32 to 512 filters),
  instance norm, no deep supervision; comparable with ``nnunet-plain``.
* ``monai-mednext-s/-b/-m/-l``: ``MedNeXtS`` ... ``MedNeXtL`` (MONAI's MedNeXt presets, Roy et al. 2023) with
  spatial_dims 2, kernel 3 (the "MedNeXt k3" of "nnU-Net Revisited"), no deep supervision.

Parameters MONAI builds but never uses in a forward pass (UNETR's transformer blocks always hold a
cross-attention LayerNorm) are frozen, so training and the gradient check see only the network that
runs; the parameter count is MONAI's class's. State-dict keys are MONAI's own: its checkpoints load
as they are. Inputs are checked before the forward pass (a ValueError naming the shape).
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from models.registry import UnknownModelError, register_model, register_resolver

PREFIX = "monai-"
MEDNEXT = re.compile(r"mednext-([sbml])(?:-k(\d+))?")


@dataclass(frozen=True)
class Preset:
    """A MONAI class and its arguments for (num_classes, in_channels, img_size)."""

    cls: str
    args: Callable[[int, int, int], dict]
    divisor: Callable[[int], int] | None  # input sides: multiples of divisor(img_size); None: exactly img_size
    unused: tuple[str, ...] = field(default=())  # parameters MONAI builds and never uses (fnmatch patterns)


def _dynunet_args(num_classes: int, in_channels: int, img_size: int) -> dict:
    from models.nnunet import plan_2d

    topo = plan_2d(img_size)
    return dict(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, kernel_size=topo.kernel_sizes,
                strides=topo.strides, upsample_kernel_size=topo.strides[1:], filters=topo.features_per_stage,
                norm_name=("INSTANCE", {"affine": True}), deep_supervision=False, res_block=False)


def _dynunet_divisor(img_size: int) -> int:
    from models.nnunet import plan_2d

    return plan_2d(img_size).divisor[0]


PRESETS: dict[str, Preset] = {
    "attentionunet": Preset("AttentionUnet", lambda k, c, s: dict(
        spatial_dims=2, in_channels=c, out_channels=k, channels=(64, 128, 256, 512, 1024), strides=(2, 2, 2, 2)),
        lambda s: 16),
    "swinunetr": Preset("SwinUNETR", lambda k, c, s: dict(
        spatial_dims=2, in_channels=c, out_channels=k, feature_size=48, depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24), window_size=7), lambda s: 32),
    "unetr": Preset("UNETR", lambda k, c, s: dict(
        spatial_dims=2, in_channels=c, out_channels=k, img_size=(s, s), feature_size=16, hidden_size=768,
        mlp_dim=3072, num_heads=12, proj_type="conv", norm_name="instance", res_block=True), None,
        unused=("vit.blocks.*.norm_cross_attn.*",)),
    "segresnet": Preset("SegResNet", lambda k, c, s: dict(
        spatial_dims=2, in_channels=c, out_channels=k, init_filters=32, blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1)), lambda s: 8),
    "dynunet": Preset("DynUNet", _dynunet_args, _dynunet_divisor),
}
REGISTERED = ("attentionunet", "swinunetr", "unetr", "segresnet", "dynunet",
              "mednext-s", "mednext-b", "mednext-m", "mednext-l")


def _mednext(variant: str, kernel: int) -> Preset:
    return Preset(f"MedNeXt{variant.upper()}", lambda k, c, s: dict(  # MONAI's create_mednext presets
        spatial_dims=2, in_channels=c, out_channels=k, kernel_size=kernel, deep_supervision=False), lambda s: 16)


def _check_input(model: Any, args: tuple) -> None:
    x = args[0]
    size, d = model.img_size, model.input_divisor
    bad = x.ndim != 4 or (x.shape[-2] % d or x.shape[-1] % d if d else tuple(x.shape[-2:]) != (size, size))
    if bad:
        want = f"H and W divisible by {d}" if d else f"H = W = {size} (it was built for that size)"
        raise ValueError(f"{model.monai_name} expects B x {model.in_channels} x H x W with {want}, "
                         f"got {tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"expected {model.in_channels} input channels, got {x.shape[1]}")


def build_monai(name: str, preset: Preset, num_classes: int = 9, in_channels: int = 1, img_size: int = 224,
                **knobs) -> nn.Module:
    """The MONAI network of ``preset``; ``knobs`` override its arguments."""
    import monai.networks.nets as nets

    divisor = preset.divisor(img_size) if preset.divisor else 16
    if img_size % divisor:
        raise ValueError(f"{name} needs img_size divisible by {divisor}, got {img_size}")
    model: Any = getattr(nets, preset.cls)(**{**preset.args(num_classes, in_channels, img_size), **knobs})
    for pname, p in model.named_parameters():
        if any(fnmatch.fnmatch(pname, pattern) for pattern in preset.unused):
            p.requires_grad_(False)
    model.monai_name = name
    model.img_size = img_size
    model.input_divisor = preset.divisor(img_size) if preset.divisor else None
    model.in_channels = in_channels
    model.num_classes = num_classes
    model.pretrained_from = None  # set by models.weights.load_weights
    model.register_forward_pre_hook(_check_input)  # a hook, not a wrapper: the keys stay MONAI's
    return model


@register_resolver(PREFIX)
def resolve(name: str) -> Callable[..., nn.Module]:
    """The builder for ``monai-<preset>`` or ``monai-mednext-<size>[-k<kernel>]``."""
    key = name[len(PREFIX):]
    if key in PRESETS:
        preset = PRESETS[key]
    elif m := MEDNEXT.fullmatch(key):
        preset = _mednext(m[1], int(m[2] or 3))
    else:
        raise UnknownModelError(f"unknown model {name!r}: expected {PREFIX}<network> with network one of "
                                f"{', '.join(PRESETS)}, or mednext-<s|b|m|l>[-k<kernel size>]")

    def builder(**kwargs) -> nn.Module:
        return build_monai(name, preset, **kwargs)

    builder.__name__ = name.replace("-", "_")
    builder.__doc__ = f"MONAI {preset.cls} ({name}; see models/monai_nets.py)."
    return builder


for _name in REGISTERED:
    register_model(PREFIX + _name)(resolve(PREFIX + _name))
