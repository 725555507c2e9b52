"""Facts about the official Swin-Unet and TransUNet networks, and the ``U_Net`` / ``AttU_Net`` of
bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets (the Swin-Unet paper's U-Net and Att-UNet rows), kept as
small test data so that CI checks parity without that code (which is never part of this repository).

``tests/models/data/official_*.json.gz`` hold, for each network, generated once from the official
code by ``tests/models/make_official_reference.py``:

- the state-dict keys, shapes and kinds (parameter / buffer) of the paper configuration at 224 with
  9 classes, and its parameter count per top-level module;
- a small configuration of the same network: its keys and shapes, and its output (every 8th pixel
  of every class map, and each class map's sum, in float64) for weights and an input that are
  *generated* from the key names here (``official_weights``, ``reference_input``), so no weights
  are stored.

The fast tests rebuild those weights under the official keys, load them through our loader as an
official checkpoint, and compare our output with the stored one.
"""
from __future__ import annotations

import gzip
import importlib
import json
import os
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).parent / "data"
STRIDE = 8  # outputs are stored at every 8th pixel (and as per-class sums over every pixel)
DERIVED = ("relative_position_index", "attn_mask")  # buffers the network computes from its geometry
SMALL_SWINUNET = dict(img_size=64, num_classes=3, embed_dim=12, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                      window_size=4)
SMALL_TRANSUNET = dict(img_size=64, num_classes=3, n_skip=3, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64,
                       resnet_layers=[2, 1, 1])
# U_Net / AttU_Net have fixed widths (64 to 1024): the small configuration is the same network with 3 classes,
# on a small input
SMALL_NEST_UNET = dict(img_size=32, num_classes=3, in_channels=1)


def data_path(network: str) -> Path:
    return DATA / f"official_{network}.json.gz"


def load(network: str) -> dict:
    with gzip.open(data_path(network), "rt") as f:
        return json.load(f)


def save(network: str, doc: dict) -> None:
    DATA.mkdir(exist_ok=True)
    with gzip.GzipFile(data_path(network), "wb", mtime=0) as f:  # mtime 0: the same bytes every time
        f.write(json.dumps(doc, indent=0, sort_keys=True).encode())


def describe(model: torch.nn.Module) -> dict:
    """Keys -> [shape, kind], and the parameter count per module (``layers.0``, ``norm``; and in all)."""
    params = dict(model.named_parameters())
    keys = {k: [list(v.shape), "parameter" if k in params else "buffer"] for k, v in model.state_dict().items()}
    per_module: dict[str, int] = {}
    for k, p in params.items():
        parts = k.split(".")
        top = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        per_module[top] = per_module.get(top, 0) + p.numel()
    return {"keys": keys, "parameters": per_module, "total": sum(p.numel() for p in params.values())}


def official_weights(keys: dict[str, list]) -> dict[str, torch.Tensor]:
    """Float64 weights for every key but the derived buffers, a function of the key's name and shape only.

    Uniform in +-1/sqrt(fan-in) for kernels, 1 +- 0.1 for 1-D weights (norm scales), +-0.1 for
    biases and the like; batch-norm variances in [0.5, 1.5]: values that keep activations of
    order one through the network, so the comparison is not lost in round-off.
    """
    out = {}
    for name, (shape, _) in keys.items():
        if name.endswith(DERIVED):
            continue
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros((), dtype=torch.int64)
            continue
        rng = np.random.default_rng([zlib.crc32(name.encode()), 17])
        u = rng.random(shape) * 2 - 1
        if name.endswith("running_var"):
            values = 1 + 0.5 * u
        elif name.endswith("running_mean"):
            values = 0.1 * u
        elif len(shape) >= 2:
            values = u / np.sqrt(max(1, int(np.prod(shape[1:]))))
        elif name.endswith("weight"):
            values = 1 + 0.1 * u
        else:
            values = 0.1 * u
        # float32 values (held as float64): our float32 model stores them exactly
        out[name] = torch.from_numpy(np.asarray(values, dtype=np.float32).astype(np.float64))
    return out


def reference_input(img_size: int, channels: int = 1) -> torch.Tensor:
    """Two float64 images in [0, 1]."""
    return torch.from_numpy(np.random.default_rng([img_size, 23]).random((2, channels, img_size, img_size)))


def fingerprint(output: torch.Tensor) -> dict:
    """What is stored of an output: every STRIDE-th pixel, and each class map's sum (float64)."""
    out = output.detach().double().numpy()
    return {"shape": list(out.shape), "strided": out[:, :, ::STRIDE, ::STRIDE].round(10).tolist(),
            "sums": out.sum(axis=(2, 3)).round(8).tolist()}


# --- the official code (only for generating the data, and for the slow tests) ----------------------

def official_module(env: str, package: str, stem: str | None = None):
    """A module of the official code, from the file ``$env`` names (its folder becomes ``package``)."""
    path = os.environ.get(env)
    if not path or not Path(path).is_file():
        raise SystemExit(f"set {env} to the official network file")
    path = Path(path)
    if package not in sys.modules:  # the official files import each other relatively
        pkg = types.ModuleType(package)
        pkg.__path__ = [str(path.parent)]
        sys.modules[package] = pkg
    return importlib.import_module(f"{package}.{stem or path.stem}")


class _ConfigDict(dict):
    """Just enough of ml_collections.ConfigDict for the official TransUNet configs."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e

    def __setattr__(self, k, v):
        self[k] = v


def stub_ml_collections() -> None:
    """The official TransUNet configs import ``ml_collections``; stand in for it when it is missing."""
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        sys.modules["ml_collections"] = types.SimpleNamespace(ConfigDict=_ConfigDict)
