"""Load model weights from local files, in the formats our models' checkpoints come in.

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
* a trained official TransUNet checkpoint (``transformer.embeddings.hybrid_model...`` keys, the
  state dict of its ``VisionTransformer``), renamed into our TransUNet; it must match exactly,
  apart from the position grid, which is zoomed when trained at another input size.
* Google's ``R50+ViT-B_16.npz`` (Flax layout) into a TransUNet: encoder only.
* encoder-only weights for segmentation-models-pytorch models.

The model records where its weights came from in ``model.pretrained_from`` and what was loaded in
``model.weights_report`` (a :class:`LoadReport`), for run manifests.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "swin_unet.", "model.")
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")


@dataclass
class LoadReport:
    """What a load did: the detected format and the keys left out on either side."""

    path: str
    format: str  # "state_dict" | "swin_imagenet" | "vit_npz" | "smp_encoder" | "transunet_official"
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


# --- Google ViT .npz (R50+ViT-B_16) -> TransUNet ------------------------------------------------

def read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as e:
        raise ValueError(f"cannot read {path} as a numpy .npz archive: {e}") from e


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


def google_vit_state(npz: Mapping[str, np.ndarray], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our TransUNet keys -> tensors from a Google hybrid-ViT npz, and the npz keys left unused."""
    prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in npz), None)
    if prefix is None:
        raise ValueError(f"not a Google ViT checkpoint: no 'embedding/kernel' among {_listing(sorted(npz))}")
    if f"{prefix}conv_root/kernel" not in npz:
        raise ValueError("a pure ViT checkpoint (no 'conv_root/kernel'): TransUNet needs the hybrid R50+ViT-B_16.npz")
    w = {k[len(prefix):]: v for k, v in npz.items() if k.startswith(prefix)}
    used: set[str] = set()

    def get(key: str, kind: str = "") -> torch.Tensor:
        used.add(key)
        return _t(w[key], kind)

    out = {"backbone.stem.conv.weight": get("conv_root/kernel", "conv"),
           "backbone.stem.norm.weight": get("gn_root/scale", "vector"),
           "backbone.stem.norm.bias": get("gn_root/bias", "vector")}
    for i, stage in enumerate(model.backbone.stages):
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
    return out, sorted(prefix + k for k in w if k not in used)


def _is_official_transunet(state: Mapping[str, torch.Tensor], model: nn.Module) -> bool:
    from models.transunet import TransUNet

    return isinstance(model, TransUNet) and any(k.startswith("transformer.embeddings.") for k in state)


def official_transunet_state(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
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


# --- encoder-only weights for segmentation_models.pytorch models ----------------------------------

def _smp_encoder_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor] | None:
    """``state`` as ``encoder.*`` keys if it holds only an smp model's encoder weights, else None."""
    from segmentation_models_pytorch.base import SegmentationModel

    if not isinstance(model, SegmentationModel) or any(k.startswith(("decoder.", "segmentation_head."))
                                                       for k in state):
        return None
    if all(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items()}
    encoder_keys = set(model.encoder.state_dict())
    for inner in ("", "model."):  # smp's own encoders, or its wrapper around a timm backbone ("tu-")
        if any(inner + k in encoder_keys for k in state):
            return {f"encoder.{inner}{k}": v for k, v in state.items()}
    return None


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


def _listing(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load ``path`` into ``model`` in place and record it on the model.

    Raises FileNotFoundError for a missing file and ValueError (listing the keys) when a full state
    dict does not match the model, or when an ImageNet encoder checkpoint matches nothing.
    ``strict=False`` loads the matching part of a full state dict instead of raising.
    """
    target = model.state_dict()
    unused: list[str] = []  # file entries no model key was made from (npz only)
    if Path(path).suffix == ".npz":
        from models.transunet import TransUNet

        if not isinstance(model, TransUNet):
            raise ValueError(f"{path}: Google ViT .npz checkpoints load into TransUNet models, "
                             f"not {type(model).__name__}")
        fmt, partial = "vit_npz", True
        state, unused = google_vit_state(read_npz(Path(path)), model)
    else:
        state = strip_prefixes(read_state_dict(path))
        state = {k: v for k, v in state.items() if k in target or not k.endswith(DERIVED_BUFFERS)}
        if _is_swin_encoder_only(state, model):
            fmt, partial = "swin_imagenet", True
            state = _mirror_encoder(_timm_to_microsoft(state), len(model.layers))
        elif (encoder := _smp_encoder_state(state, model)) is not None:
            fmt, partial, state = "smp_encoder", True, encoder
        elif _is_official_transunet(state, model):
            fmt, partial = "transunet_official", not strict
            state = official_transunet_state(state, model)
        else:
            fmt, partial = "state_dict", not strict
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
            f"{len(mismatched)} shape mismatches [{_listing(mismatched)}]; "
            f"{len(absent)} model keys not in the file [{_listing(absent)}]; "
            f"{len(unexpected)} file keys not in the model [{_listing(unexpected)}]"
        )
    missing = sorted(k for k in target if k not in usable)
    dropped = sorted(k for k in state if k not in usable) + unused
    if not usable:
        raise ValueError(f"{path}: no key matches {type(model).__name__} (file keys: {_listing(sorted(state))})")
    model.load_state_dict(usable, strict=False)
    report = LoadReport(path=str(path), format=fmt, loaded=len(usable), missing=missing, dropped=dropped)
    model.pretrained_from = str(path)
    model.weights_report = report
    return report
