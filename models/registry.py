"""Model registry: one dict, one decorator, one factory.

A variant is a name plus arguments: ``register_model("swinunet-skip0")`` over the same
builder as ``swinunet`` with a different default knob.
"""
from __future__ import annotations

import fnmatch
from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(num_classes, in_channels, img_size, **knobs) -> nn.Module``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(
    name: str,
    num_classes: int = 9,
    in_channels: int = 1,
    img_size: int = 224,
    weights: str | None = None,
    **knobs,
) -> nn.Module:
    """Build a registered model; unknown names raise an error listing the valid ones."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    model = _MODELS[name](num_classes=num_classes, in_channels=in_channels, img_size=img_size, **knobs)
    if weights is not None:
        from models.weights import load_weights

        load_weights(model, weights)
    return model
