"""Baselines from segmentation_models.pytorch, named ``smp-<arch>-<encoder>``.

A few are registered (and listed by ``bench models``); any other architecture x encoder pair that smp
knows is built on demand from its name, e.g. ``create_model("smp-manet-efficientnet-b0")``: the token
after ``smp-`` is the architecture (case-insensitive: ``unetplusplus``, ``deeplabv3plus``, ...), the rest
the encoder (``resnet34``, ``efficientnet-b0``, ``mit_b0``, ``tu-<timm model>``).

Encoders are always built with ``encoder_weights=None``: nothing is downloaded. ``weights=PATH`` loads a
local file, either a whole model's state dict or an encoder-only one (e.g. torchvision's ResNet-34
ImageNet weights, recognised by :func:`encoder_weights_filter`), see :func:`models.weights.load_weights`.
Inputs must have a height and width divisible by the encoder's output stride (32 for most): smp's U-Net
would silently resize instead, which no other model in a comparison does, so every smp model here
raises a ValueError.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import segmentation_models_pytorch as smp_lib
import timm
import torch
import torch.nn as nn

from models.registry import UnknownModelError, register_model, register_resolver
from models.weights import Converted

PREFIX = "smp-"
ARCHITECTURES: dict[str, type[nn.Module]] = dict(smp_lib.MODEL_ARCHITECTURES_MAPPING)  # lower-case name -> class
REGISTERED = ("unet-resnet34", "unetplusplus-resnet34", "deeplabv3plus-resnet34", "fpn-resnet34",
              "segformer-mit_b0")


def _check_input(model: nn.Module, args: tuple) -> None:
    # a forward pre-hook rather than a wrapper module, so state-dict keys stay smp's own
    x = args[0]
    d = model.input_divisor
    if x.ndim != 4 or x.shape[-2] % d or x.shape[-1] % d:
        raise ValueError(f"{type(model).__name__} ({model.encoder_name}) expects B x {model.in_channels} x H x W "
                         f"with H and W divisible by {d}, got {tuple(x.shape)}")
    if x.shape[1] != model.in_channels:
        raise ValueError(f"expected {model.in_channels} input channels, got {x.shape[1]}")


def build_smp(arch: str, encoder: str, num_classes: int = 9, in_channels: int = 1, img_size: int = 224,
              **kwargs) -> nn.Module:
    """An smp model without pretrained weights; ``kwargs`` go to the architecture's constructor."""
    if "encoder_weights" in kwargs:
        raise ValueError("smp models here never download encoder weights; pass weights=PATH to load a local file")
    # Any: smp is untyped, and the attributes set below are ours (torch types Module attributes as Tensor | Module)
    model: Any = ARCHITECTURES[arch.lower()](encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                                             classes=num_classes, **kwargs)
    divisor = model.encoder.output_stride
    if img_size % divisor:
        raise ValueError(f"smp-{arch}-{encoder} needs img_size divisible by {divisor}, got {img_size}")
    model.input_divisor = divisor
    model.in_channels = in_channels
    model.num_classes = num_classes
    model.encoder_name = encoder
    model.pretrained_from = None  # set by models.weights.load_weights
    model.register_forward_pre_hook(_check_input)
    return model


def _known_encoder(encoder: str) -> bool:
    if encoder.startswith("tu-"):  # smp's wrapper around any timm backbone
        return timm.is_model(encoder[3:])
    return encoder in smp_lib.encoders.get_encoder_names()


def encoder_weights_filter(state: Mapping[str, torch.Tensor], model: nn.Module, path: Path) -> Converted | None:
    """A file holding only an encoder's weights (bare or under ``encoder.``) as the model's ``encoder.*``
    keys; None for any other file (a whole smp model loads as it is)."""
    if any(k.startswith(("decoder.", "segmentation_head.")) for k in state):
        return None
    if all(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items()}
    encoder_keys = set(cast(nn.Module, model.encoder).state_dict())
    for inner in ("", "model."):  # smp's own encoders, or its wrapper around a timm backbone ("tu-")
        if any(inner + k in encoder_keys for k in state):
            return Converted("smp_encoder", {f"encoder.{inner}{k}": v for k, v in state.items()}, partial=True)
    return None


@register_resolver(PREFIX, weights_filter=encoder_weights_filter)
def resolve(name: str):
    """The builder for ``smp-<arch>-<encoder>``; UnknownModelError naming the valid parts otherwise."""
    arch, _, encoder = name[len(PREFIX):].partition("-")
    if arch.lower() not in ARCHITECTURES:
        raise UnknownModelError(f"unknown model {name!r}: {arch!r} is not an smp architecture; expected "
                                f"{PREFIX}<arch>-<encoder> with arch one of {', '.join(sorted(ARCHITECTURES))}")
    if not _known_encoder(encoder):
        raise UnknownModelError(
            f"unknown model {name!r}: {encoder!r} is not an smp encoder; valid encoders: "
            f"{', '.join(smp_lib.encoders.get_encoder_names())}, or tu-<timm model name>")

    def builder(**kwargs) -> nn.Module:
        return build_smp(arch, encoder, **kwargs)

    builder.__name__ = name.replace("-", "_")
    builder.__doc__ = f"segmentation_models.pytorch {ARCHITECTURES[arch.lower()].__name__} with a {encoder} encoder."
    return builder


for _name in REGISTERED:
    register_model(PREFIX + _name, encoder_weights_filter)(resolve(PREFIX + _name))

