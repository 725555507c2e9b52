"""Protocols: the training and evaluation recipe shared by every model in a comparison.

A protocol is a YAML file validated into a typed object. Unknown keys and wrong types are
errors naming the file and the key. Its hash (over every field that can change a result) is
stored with each run, so runs of different recipes are never pooled silently.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import BenchError

PROTOCOL_DIR = Path(__file__).parent / "protocols"

# Ranges checked when a protocol is loaded, so a value that can only fail (or silently mislead)
# later is refused before any training: a zero budget, a probability of 7.5, a negative seed.
Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
Probability = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Optimizer(_Strict):
    name: Literal["sgd"] = "sgd"
    momentum: Probability = 0.9
    weight_decay: NonNegative = 1e-4


class Loss(_Strict):
    ce: NonNegative = 0.4
    dice: NonNegative = 0.6

    @model_validator(mode="after")
    def _something_to_learn(self) -> Loss:
        if self.ce == 0 and self.dice == 0:
            raise ValueError("loss.ce and loss.dice are both 0: the model would learn nothing")
        return self


class Augmentation(_Strict):
    """The official RandomGenerator: rot90+flip with p, else a small rotation with p."""

    rot_flip_p: Probability = 0.5
    rotate_p: Probability = 0.5
    rotate_degrees: Annotated[int, Field(ge=0, le=180)] = 20

    @model_validator(mode="after")
    def _some_angle(self) -> Augmentation:
        if self.rotate_p > 0 and self.rotate_degrees == 0:
            raise ValueError("augmentation.rotate_degrees is 0 while rotate_p is not: set rotate_p: 0 to turn "
                             "rotations off")
        return self


class Evaluation(_Strict):
    convention: Literal["synapse", "strict"] = "synapse"
    resize: Literal["nearest-label", "bilinear-logits"] = "bilinear-logits"
    batch_size: Count = 24
    nsd_tolerance_mm: NonNegative = 2.0


class Validation(_Strict):
    """Held-out training cases, scored by the learning-rate search and, with ``during_run``, by
    ``bench run`` (which then trains on the other training cases). Never the test cases."""

    fraction: float = 0.2
    interval: int | None = None  # iterations between validation scores; None: once, at the end
    during_run: bool = False

    @model_validator(mode="after")
    def _check(self) -> Validation:
        if not 0 < self.fraction < 1:
            raise ValueError("validation.fraction must be between 0 and 1")
        if self.interval is not None and self.interval <= 0:
            raise ValueError("validation.interval must be positive")
        return self


class Cudnn(_Strict):
    """cuDNN flags, applied on CUDA only (a CPU has no cuDNN). The defaults are the official
    recipe's (``--deterministic 1``): no autotuning, deterministic convolution algorithms."""

    benchmark: bool = False
    deterministic: bool = True


class Tuning(_Strict):
    """The learning-rate search space (log-uniform) and its pruner; weight decay and batch
    size are searched only when asked (``bench tune --search``)."""

    lr_min: float = 1e-3
    lr_max: float = 1e-1
    weight_decay_min: float = 1e-6
    weight_decay_max: float = 1e-2
    batch_sizes: list[int] = []  # choices; empty: half, the same as and double the protocol's
    pruner: Literal["median", "none"] = "median"
    sampler_seed: Seed = 0

    @model_validator(mode="after")
    def _check(self) -> Tuning:
        for lo, hi in (("lr_min", "lr_max"), ("weight_decay_min", "weight_decay_max")):
            if not 0 < getattr(self, lo) < getattr(self, hi):
                raise ValueError(f"need 0 < tuning.{lo} < tuning.{hi}")
        if any(b <= 0 for b in self.batch_sizes):
            raise ValueError("tuning.batch_sizes must be positive")
        return self


class Protocol(_Strict):
    name: str
    description: str = ""
    seeds: list[Seed] = [1234]
    input_size: Count = 224
    batch_size: Count = 24
    base_lr: PositiveFloat = 0.05
    # "official" reproduces Swin-Unet's hidden rule (scale by batch/24 when batch % 6 == 0).
    lr_scaling: Literal["none", "linear", "official"] = "none"
    poly_power: NonNegative = 0.9
    epochs: Count | None = None
    iterations: Count | None = None
    optimizer: Optimizer = Optimizer()
    loss: Loss = Loss()
    augmentation: Augmentation = Augmentation()
    evaluation: Evaluation = Evaluation()
    validation: Validation = Validation()
    tuning: Tuning = Tuning()
    checkpoint_every: Count = 500
    num_workers: Annotated[int, Field(ge=0)] = 0
    divergence_loss: PositiveFloat = 1e4  # a loss above this (or NaN) stops the run as diverged
    # fp32: no autocast (the official recipe); bf16: autocast to bfloat16 (CUDA or CPU);
    # fp16: autocast to float16 with a gradient scaler (CUDA only).
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    cudnn: Cudnn = Cudnn()

    @model_validator(mode="after")
    def _schedule(self) -> Protocol:
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("set exactly one of 'epochs' and 'iterations'")
        if not self.name or self.name != Path(self.name).name or self.name in (".", ".."):
            raise ValueError(f"name {self.name!r} must be a plain folder name (it names the runs' folder)")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        return self

    def max_iterations(self, n_train_slices: int) -> int:
        """Iteration budget: given directly, or epochs x ceil(slices / batch) as the official code."""
        if self.iterations is not None:
            return self.iterations
        return self.epochs * math.ceil(n_train_slices / self.batch_size)

    def effective_lr(self) -> float:
        """The base LR actually used, after the declared batch-size rule."""
        if self.lr_scaling == "linear" or (
            self.lr_scaling == "official" and self.batch_size != 24 and self.batch_size % 6 == 0
        ):
            return self.base_lr * self.batch_size / 24
        return self.base_lr

    def hash(self) -> str:
        """Short sha256 over every field that can change a run's result (see ``recipe``)."""
        blob = json.dumps(recipe(self.model_dump()), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def override(self, **changes) -> Protocol:
        """A copy with command-line overrides applied (None values are ignored), re-validated."""
        data = self.model_dump()
        for key, value in changes.items():
            if value is None:
                continue
            if key == "iterations":
                data["epochs"] = None
            data[key] = value
        try:
            return Protocol.model_validate(data)
        except ValidationError as e:
            given = ", ".join(f"{k}={v}" for k, v in changes.items() if v is not None)
            raise BenchError(f"invalid override {given}: {_first_error(e)}") from None


# Keys added after results existed, at the values that reproduce what a run did before the key
# existed (every such run on a CPU: no autocast there, no cuDNN). At these values they stay out of
# the hash, so earlier protocols keep their hash and earlier runs their identity.
NEUTRAL = {"precision": "fp32", "cudnn": Cudnn().model_dump()}


def recipe(data: dict) -> dict:
    """What decides a run's numbers, from a protocol's ``model_dump()`` (a manifest stores one).

    Not the name or description; not the tuning settings, nor the validation settings unless
    ``bench run`` validates during training (it then trains on fewer cases); new keys at their
    neutral values (``NEUTRAL``) are left out.
    """
    out = {k: v for k, v in data.items() if k not in ("name", "description", "validation", "tuning")}
    for key, value in NEUTRAL.items():
        if out.get(key, value) == value:
            out.pop(key, None)
    validation = data.get("validation") or {}
    if validation.get("during_run"):
        out["validation"] = {"during_run": True, "fraction": validation.get("fraction")}
    return out


def list_protocols() -> list[str]:
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"key '{key}': {err['msg'].removeprefix('Value error, ')}"


def load_protocol(name_or_path: str) -> Protocol:
    """Load a shipped protocol by name (``cpu``) or any YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROTOCOL_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise BenchError(
                f"unknown protocol '{name_or_path}'; shipped protocols: {', '.join(list_protocols())}"
            )
    if not path.exists():
        raise BenchError(f"protocol file not found: {path}")
    return load_yaml_model(path, Protocol, defaults={"name": path.stem})


def load_yaml_model(path: Path, model: type[BaseModel], defaults: dict | None = None):
    """The one parsing path for YAML specs: errors name the file and the offending key."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise BenchError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise BenchError(f"{path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise BenchError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected a mapping of keys")
    data = {**(defaults or {}), **data}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BenchError(f"{path}: {_first_error(e)}") from None


def parse_set(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` with a dotted key; the value is read as YAML (``4``, ``0.5``, ``true``, ``[0, 1]``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise BenchError(f"--set expects KEY=VALUE (dotted keys such as evaluation.convention=strict), got '{item}'")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise BenchError(f"--set {key}: cannot read the value '{text}'") from None
    return key, value


def _at(data: dict, key: str):
    for part in key.split("."):
        data = data[part]
    return data


def _text(value) -> str:
    """A value as it appears in a protocol name: short, no spaces, no path separators."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_text(v)}" for k, v in value.items()) + "}"
    return str(value).replace("/", "_").replace(" ", "_")


def apply_sets(protocol: Protocol, sets: Sequence[str]) -> Protocol:
    """``protocol`` with ``--set KEY=VALUE`` overrides, validated like a file.

    The result is another recipe, so its name records the keys that changed
    (``cpu@batch_size=4``): its runs get their own folders and report, never the base's.
    """
    if not sets:
        return protocol
    base = protocol.model_dump()
    data = protocol.model_dump()
    keys = []
    for item in sets:
        key, value = parse_set(item)
        parts = key.split(".")
        if parts[0] in ("name", "description"):
            raise BenchError(f"--set {key}: not a setting (the name records the overrides)")
        node = data
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                what = "unknown key" if part not in node else "not a section"
                raise BenchError(f"--set {key}: {what} '{'.'.join(parts[: i + 1])}'")
            node = node[part]
        node[parts[-1]] = value
        if key in ("iterations", "epochs") and value is not None:  # one budget replaces the other
            data["epochs" if key == "iterations" else "iterations"] = None
        keys.append(key)
    try:
        resolved = Protocol.model_validate(data)
    except ValidationError as e:
        raise BenchError(f"--set: {_first_error(e)}") from None
    after = resolved.model_dump()
    changed = [k for k in dict.fromkeys(keys) if _at(after, k) != _at(base, k)]
    if not changed:
        return resolved
    suffix = ",".join(f"{k}={_text(_at(after, k))}" for k in sorted(changed))
    return resolved.model_copy(update={"name": f"{protocol.name}@{suffix}"})


def resolve_protocol(name_or_path: str, sets: Sequence[str] = ()) -> Protocol:
    """A shipped protocol or a file, with ``--set`` overrides applied."""
    return apply_sets(load_protocol(name_or_path), sets)


def protocol_yaml(protocol: Protocol) -> str:
    """The resolved protocol as YAML that ``--protocol FILE`` reads back (same hash), name and hash on top."""
    body = yaml.safe_dump(protocol.model_dump(exclude={"name"}), sort_keys=False, default_flow_style=None, width=120)
    return f"# protocol {protocol.name}, hash {protocol.hash()}\n{body}"
