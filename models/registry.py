"""Model registry: one dict, one decorator, one factory.

A variant is a name plus arguments: ``register_model("swinunet-skip0")`` over the same
builder as ``swinunet`` with a different default knob. A family too large to list (every
segmentation_models.pytorch architecture x encoder) registers a *name resolver* for a prefix instead:
``create_model`` asks it for names no builder is registered under.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# prefix -> resolver(name) returning a builder, or raising UnknownModelError that says why not
_RESOLVERS: dict[str, Callable[[str], Callable[..., nn.Module]]] = {}


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


def register_resolver(prefix: str) -> Callable[[Callable[[str], Callable[..., nn.Module]]], Callable]:
    """Register ``resolve(name) -> builder`` for unregistered names starting with ``prefix``."""

    def wrap(fn: Callable[[str], Callable[..., nn.Module]]) -> Callable[[str], Callable[..., nn.Module]]:
        if prefix in _RESOLVERS:
            raise ValueError(f"a resolver for {prefix!r} is already registered")
        _RESOLVERS[prefix] = fn
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted (resolvable names are not listed)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def _builder(name: str) -> Callable[..., nn.Module]:
    if name in _MODELS:
        return _MODELS[name]
    for prefix, resolve in _RESOLVERS.items():
        if name.startswith(prefix):
            return resolve(name)
    raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(list_models())}"
                            + "".join(f" (or any '{p}...' name)" for p in _RESOLVERS))


def is_model(name: str) -> bool:
    """Whether ``create_model(name)`` knows the name (registered, or resolvable by a prefix resolver)."""
    try:
        _builder(name)
    except UnknownModelError:
        return False
    return True


def create_model(
    name: str,
    num_classes: int = 9,
    in_channels: int = 1,
    img_size: int = 224,
    weights: str | None = None,
    **knobs,
) -> nn.Module:
    """Build a registered (or resolvable) model; unknown names raise an error listing the valid ones."""
    model = _builder(name)(num_classes=num_classes, in_channels=in_channels, img_size=img_size, **knobs)
    if weights is not None:
        from models.weights import load_weights

        load_weights(model, weights)
    return model
