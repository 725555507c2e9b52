"""Load model weights from local files, in the formats Swin-Unet and U-Net checkpoints come in.

Never downloads. Understands:

* a plain state dict, or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``, saved with
  ``torch.save`` or as ``.safetensors``; wrapper prefixes (``module.`` from DataParallel, ``_orig_mod.``
  from torch.compile, ``swin_unet.`` from the official Swin-Unet wrapper, ``model.``) are stripped when
  every key carries them. These must match the model exactly, apart from buffers the model derives
  from its geometry (``relative_position_index``, ``attn_mask``).
* an ImageNet Swin encoder checkpoint (Microsoft's ``swin_tiny_patch4_window7_224.pth`` layout, or
  timm's, which merges patches at the start of a stage), loaded into a Swin-Unet as the official
  ``SwinUnet.load_from`` does: encoder keys directly, ``layers.{i}.*`` also into ``layers_up.{L-1-i}.*``,
  keys the model lacks or whose shapes differ dropped, the decoder-only layers left as initialised.

The model records where its weights came from in ``model.pretrained_from`` and what was loaded in
``model.weights_report`` (a :class:`LoadReport`), for run manifests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "swin_unet.", "model.")
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")


@dataclass
class LoadReport:
    """What a load did: the detected format and the keys left out on either side."""

    path: str
    format: str  # "state_dict" | "swin_imagenet"
    loaded: int
    missing: list[str] = field(default_factory=list)  # model keys left as initialised
    dropped: list[str] = field(default_factory=list)  # file keys not used (absent or shape mismatch)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a local weights file, unwrapped from ``{"model"|"state_dict": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickles with code in them, or not a torch file at all
            raise ValueError(f"cannot read {path} as a weights-only torch file: {e}") from e
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


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


def _is_swin_encoder_only(state: Mapping[str, torch.Tensor], model: nn.Module) -> bool:
    has_decoder = hasattr(model, "layers_up")
    return has_decoder and any(k.startswith("layers.") for k in state) and not any(
        k.startswith("layers_up.") for k in state)


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


def _listing(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load ``path`` into ``model`` in place and record it on the model.

    Raises FileNotFoundError for a missing file and ValueError (listing the keys) when a full state
    dict does not match the model, or when an ImageNet encoder checkpoint matches nothing.
    ``strict=False`` loads the matching part of a full state dict instead of raising.
    """
    state = strip_prefixes(read_state_dict(path))
    target = model.state_dict()
    state = {k: v for k, v in state.items() if k in target or not k.endswith(DERIVED_BUFFERS)}

    if _is_swin_encoder_only(state, model):
        fmt, partial = "swin_imagenet", True
        state = _mirror_encoder(_timm_to_microsoft(state), len(model.layers))
    else:
        fmt, partial = "state_dict", not strict

    usable = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    mismatched = sorted(f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                        for k, v in state.items() if k in target and k not in usable)
    unexpected = sorted(k for k in state if k not in target)
    absent = sorted(k for k in target if k not in state)
    if not partial and (mismatched or unexpected or absent):
        raise ValueError(
            f"{path} does not match {type(model).__name__}: "
            f"{len(mismatched)} shape mismatches [{_listing(mismatched)}]; "
            f"{len(absent)} model keys not in the file [{_listing(absent)}]; "
            f"{len(unexpected)} file keys not in the model [{_listing(unexpected)}]"
        )
    missing = sorted(k for k in target if k not in usable)
    dropped = sorted(k for k in state if k not in usable)
    if not usable:
        raise ValueError(f"{path}: no key matches {type(model).__name__} (file keys: {_listing(sorted(state))})")
    model.load_state_dict(usable, strict=False)
    report = LoadReport(path=str(path), format=fmt, loaded=len(usable), missing=missing, dropped=dropped)
    model.pretrained_from = str(path)
    model.weights_report = report
    return report
