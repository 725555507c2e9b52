"""Model registry: one dict, one decorator, one factory.

A variant is a name plus arguments: ``register_variants`` registers ``swinunet-skip0`` over the same
builder as ``swinunet`` with a different default knob. A family too large to list (every
segmentation_models.pytorch architecture x encoder) registers a *name resolver* for a prefix instead:
``create_model`` asks it for names no builder is registered under.

A model may be registered with a *weights filter* (see :mod:`models.weights`): the conversion from the
checkpoint layouts its file knows. ``create_model`` attaches it to the model, so every later
``load_weights`` of that model converts the same way.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn as nn

from models.weights import WeightsFilter, load_weights

Builder = Callable[..., nn.Module]
Resolver = Callable[[str], Builder]

_MODELS: dict[str, tuple[Builder, WeightsFilter | None]] = {}
# prefix -> resolver(name) returning a builder, or raising UnknownModelError that says why not
_RESOLVERS: dict[str, tuple[Resolver, WeightsFilter | None]] = {}


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


def register_model(name: str, weights_filter: WeightsFilter | None = None) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(num_classes, in_channels, img_size, **knobs) -> nn.Module``."""

    def wrap(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = (fn, weights_filter)
        return fn

    return wrap


def register_variants(builder: Builder, variants: Mapping[str, dict], weights_filter: WeightsFilter | None = None
                      ) -> None:
    """Register each ``name: defaults`` as ``builder`` with those knobs as defaults; callers' knobs win."""
    for name, defaults in variants.items():
        register_model(name, weights_filter)(partial(builder, **defaults))


def register_resolver(prefix: str, weights_filter: WeightsFilter | None = None) -> Callable[[Resolver], Resolver]:
    """Register ``resolve(name) -> builder`` for unregistered names starting with ``prefix``."""

    def wrap(fn: Resolver) -> Resolver:
        if prefix in _RESOLVERS:
            raise ValueError(f"a resolver for {prefix!r} is already registered")
        _RESOLVERS[prefix] = (fn, weights_filter)
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted (resolvable names are not listed)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def _entry(name: str) -> tuple[Builder, WeightsFilter | None]:
    if name in _MODELS:
        return _MODELS[name]
    for prefix, (resolve, weights_filter) in _RESOLVERS.items():
        if name.startswith(prefix):
            return resolve(name), weights_filter
    raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(list_models())}"
                            + "".join(f" (or any '{p}...' name)" for p in _RESOLVERS))


def require_models(names: list[str]) -> None:
    """Raise the registry's ``UnknownModelError`` for the first name ``create_model`` would not know
    (a command checks its names with this before any work, and nowhere else)."""
    for name in names:
        _entry(name)


def is_model(name: str) -> bool:
    """Whether ``create_model(name)`` knows the name (registered, or resolvable by a prefix resolver)."""
    try:
        _entry(name)
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
    builder, weights_filter = _entry(name)
    model = builder(num_classes=num_classes, in_channels=in_channels, img_size=img_size, **knobs)
    if weights_filter is not None:
        # for loads after this one, e.g. a fine-tuning script's (the ignore: torch annotates
        # Module.__setattr__ values as Tensor | Module, but any value is stored as a plain attribute)
        model.weights_filter = weights_filter  # type: ignore[assignment]
    # what built it, so that ``at_input_size`` can build it again at another size
    model.built_with = dict(name=name, num_classes=num_classes, in_channels=in_channels,  # type: ignore[assignment]
                            img_size=img_size, **knobs)
    if weights is not None:
        load_weights(model, weights, weights_filter=weights_filter)
    return model


def _build_cheaply(name: str, num_classes: int, in_channels: int, img_size: int, **knobs) -> nn.Module:
    """The builder's model on the meta device (no memory, no initialisation), or, for a builder that
    computes with its tensors while building, on the CPU; the builder's own ValueError / TypeError."""
    builder, _ = _entry(name)
    try:
        with torch.device("meta"):
            return builder(num_classes=num_classes, in_channels=in_channels, img_size=img_size, **knobs)
    except (ValueError, TypeError):
        raise
    except (RuntimeError, NotImplementedError):  # e.g. ``.item()`` on a meta tensor
        pass
    return builder(num_classes=num_classes, in_channels=in_channels, img_size=img_size, **knobs)


def check_model_args(name: str, num_classes: int = 9, in_channels: int = 1, img_size: int = 224, **knobs) -> None:
    """Raise the builder's own error (ValueError, TypeError) if ``name`` cannot be built with these
    arguments, e.g. an input size Swin-Unet's patches and windows cannot tile, or an unknown knob.
    """
    _build_cheaply(name, num_classes, in_channels, img_size, **knobs)


def check_input_size(name: str, size: int, trained_size: int, num_classes: int = 9, in_channels: int = 1,
                     **knobs) -> None:
    """Raise ValueError, saying why, unless ``name`` trained at ``trained_size`` can infer at ``size``: the
    model must build at ``size`` and hold weights of the same names and shapes (Swin-Unet does when the
    attention window it picks is the same; a window or position table that depends on the size does not)."""
    args = dict(num_classes=num_classes, in_channels=in_channels, **knobs)
    try:
        at = _build_cheaply(name, img_size=size, **args).state_dict()
    except TypeError as e:
        raise ValueError(str(e)) from None
    trained = _build_cheaply(name, img_size=trained_size, **args).state_dict()
    differ = sorted(k for k in set(at) | set(trained)
                    if k not in at or k not in trained or at[k].shape != trained[k].shape)
    if differ:
        raise ValueError(f"its weights at {size} differ from those trained at {trained_size} "
                         f"({len(differ)} tensors, e.g. {differ[0]})")


def at_input_size(model: nn.Module, size: int) -> nn.Module:
    """``model`` (made by ``create_model``) built again for ``size`` x ``size`` inputs, with its weights, on
    its device and in its mode; ``model`` itself when it was built at ``size``. ValueError if it cannot be."""
    args = dict(getattr(model, "built_with", None) or {})
    if not args:
        raise ValueError("the model was not made by create_model, so it cannot be built at another size")
    if args["img_size"] == size:
        return model
    name = args.pop("name")
    check_input_size(name, size, args.pop("img_size"), **args)
    resized = create_model(name, img_size=size, **args)
    resized.load_state_dict(model.state_dict())
    device = next(model.parameters()).device
    return resized.to(device).train(model.training)
