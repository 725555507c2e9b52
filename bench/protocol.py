"""Protocols: the training and evaluation recipe shared by every model in a comparison.

A protocol is a YAML file validated into a typed object. Unknown keys and wrong types are
errors naming the file and the key. Its hash (over every field that can change a result) is
stored with each run, so runs of different recipes are never pooled silently.
"""
from __future__ import annotations

import hashlib
import json
import math
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
    """Held-out training cases used by the learning-rate search (never the test cases)."""

    fraction: float = 0.2
    interval: int | None = None  # iterations between validation scores; None: once, at the end

    @model_validator(mode="after")
    def _check(self) -> Validation:
        if not 0 < self.fraction < 1:
            raise ValueError("validation.fraction must be between 0 and 1")
        if self.interval is not None and self.interval <= 0:
            raise ValueError("validation.interval must be positive")
        return self


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
        """Short sha256 over every field that can change a run's result.

        Not the name or description, and not the validation / tuning settings, which only
        the learning-rate search reads.
        """
        data = self.model_dump(exclude={"name", "description", "validation", "tuning"})
        blob = json.dumps(data, sort_keys=True, default=str).encode()
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
