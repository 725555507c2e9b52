"""Load model weights from local files: the generic part, which knows no model's checkpoint layout.

Never downloads. Reads a plain state dict, or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``,
saved with ``torch.save`` or as ``.safetensors``, and ``.npz`` archives (as name -> array). Wrapper
prefixes (``module.`` from DataParallel, ``_orig_mod.`` from torch.compile, ``swin_unet.`` from the
official Swin-Unet wrapper, ``model.``) are stripped when every key carries them.

Other layouts (an ImageNet encoder, another code base's names, a Flax ``.npz``) are converted by the
model's own *weights filter*, which lives in the model's file and is registered with it (see
:func:`models.registry.register_model`); this module imports none of them. Without a conversion the file
must match the model exactly, apart from buffers the model derives from its geometry
(``relative_position_index``, ``attn_mask``).

The model records where its weights came from in ``model.pretrained_from`` and what was loaded in
``model.weights_report`` (a :class:`LoadReport`), for run manifests.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "swin_unet.", "model.")
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")


@dataclass
class LoadReport:
    """What a load did: the detected format and the keys left out on either side."""

    path: str
    format: str  # "state_dict", or the format a weights filter names ("swin_imagenet", "vit_npz", ...)
    loaded: int
    missing: list[str] = field(default_factory=list)  # model keys left as initialised
    dropped: list[str] = field(default_factory=list)  # file keys not used (absent or shape mismatch)


class Converted(NamedTuple):
    """A file's tensors renamed to the model's keys, as a weights filter returns them."""

    format: str  # recorded as LoadReport.format
    state: dict[str, torch.Tensor]
    partial: bool  # the file covers part of the model: load what matches, leave the rest as initialised
    unused: tuple[str, ...] = ()  # file entries no model key was made from (reported as dropped)


# filter(file contents, model, path) -> the converted state, or None when the file is a plain state dict.
# The contents are name -> tensor (prefixes stripped) or, for ``.npz`` files, name -> numpy array.
WeightsFilter = Callable[[Mapping[str, Any], nn.Module, Path], "Converted | None"]


def load_problem(e: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` found wrong, in one short line, without torch's advice to
    load the file with ``weights_only=False`` or to allowlist what it asks for (the opposite of what
    to do with a file one does not trust)."""
    why = ""
    for line in (s.strip() for s in str(e).splitlines()):
        if not line or line.startswith(("Weights only load failed", "Check the documentation")):
            continue
        why = line.split("WeightsUnpickler error:", 1)[-1].strip()
        if why:
            break
    why = why.split(" was not an allowed global", 1)[0].split(" whose module", 1)[0].split(". Please", 1)[0]
    if not why or "weights_only" in why:
        why = "not a file of tensors only"
    return f"{type(e).__name__}: {why[:200]}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a local weights file, unwrapped from ``{"model"|"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj: object
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickles with code in them, or not a torch file at all
            raise ValueError(f"cannot read {path} as a weights-only torch file ({load_problem(e)}); "
                             "weights are read without running code, a file that needs code is refused") from e
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays in a local ``.npz`` archive (no pickles)."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as e:
        raise ValueError(f"cannot read {path} as a numpy .npz archive: {e}") from e


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes that every key shares (``module.swin_unet.x`` -> ``x``)."""
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _adapt_input_convs(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                       in_channels: int | None) -> dict[str, torch.Tensor]:
    """RGB first-layer kernels (O x 3 x k x k) adapted to a model with ``in_channels`` inputs."""
    from timm.models import adapt_input_conv

    if in_channels in (None, 3):
        return state
    return {k: adapt_input_conv(in_channels, v)
            if k in target and v.ndim == 4 and v.shape[1] == 3 and target[k].shape[1] == in_channels
            and v.shape[0] == target[k].shape[0] and v.shape[2:] == target[k].shape[2:] else v
            for k, v in state.items()}


def listing(keys: list[str], limit: int = 10) -> str:
    """The first ``limit`` keys, comma-separated, and how many more there are (for error messages)."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _read(path: str | Path, target: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The file's entries: arrays from an ``.npz``, else tensors without wrapper prefixes or derived buffers."""
    if Path(path).suffix == ".npz":
        return read_npz(Path(path))
    state = strip_prefixes(read_state_dict(path))
    return {k: v for k, v in state.items() if k in target or not k.endswith(DERIVED_BUFFERS)}


def load_weights(model: nn.Module, path: str | Path, strict: bool = True,
                 weights_filter: WeightsFilter | None = None) -> LoadReport:
    """Load ``path`` into ``model`` in place and record it on the model.

    ``weights_filter`` converts the layouts the model's file knows; by default the one the registry
    attached to the model (``model.weights_filter``), if any.
    Raises FileNotFoundError for a missing file and ValueError (listing the keys) when a full state
    dict does not match the model, or when a partial checkpoint (an ImageNet encoder) matches nothing.
    ``strict=False`` loads the matching part of a full state dict instead of raising.
    """
    weights_filter = weights_filter or getattr(model, "weights_filter", None)
    target = model.state_dict()
    contents = _read(path, target)
    converted = weights_filter(contents, model, Path(path)) if weights_filter is not None else None
    if converted is None:
        if Path(path).suffix == ".npz":  # arrays always need a conversion; only TransUNet's reads them
            raise ValueError(f"{path}: Google ViT .npz checkpoints load into TransUNet models, "
                             f"not {type(model).__name__}")
        converted = Converted("state_dict", contents, partial=False)
    state, partial = converted.state, converted.partial or not strict
    if partial:
        state = _adapt_input_convs(state, target, getattr(model, "in_channels", None))

    usable = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    mismatched = sorted(f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                        for k, v in state.items() if k in target and k not in usable)
    unexpected = sorted(k for k in state if k not in target)
    absent = sorted(k for k in target if k not in state)
    if not partial and (mismatched or unexpected or absent):
        raise ValueError(
            f"{path} does not match {type(model).__name__}: "
            f"{len(mismatched)} shape mismatches [{listing(mismatched)}]; "
            f"{len(absent)} model keys not in the file [{listing(absent)}]; "
            f"{len(unexpected)} file keys not in the model [{listing(unexpected)}]"
        )
    missing = sorted(k for k in target if k not in usable)
    dropped = sorted(k for k in state if k not in usable) + list(converted.unused)
    if not usable:
        raise ValueError(f"{path}: no key matches {type(model).__name__} (file keys: {listing(sorted(state))})")
    model.load_state_dict(usable, strict=False)
    report = LoadReport(path=str(path), format=converted.format, loaded=len(usable), missing=missing,
                        dropped=dropped)
    # torch annotates Module.__setattr__ values as Tensor | Module, but any value is stored as a plain attribute
    model.pretrained_from = str(path)  # type: ignore[assignment]
    model.weights_report = report  # type: ignore[assignment]
    return report
