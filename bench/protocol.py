"""Protocols: the training and evaluation recipe shared by every model in a comparison.

A protocol is a YAML file validated into a typed object. Unknown keys and wrong types are
errors naming the file and the key. Its hash (over every field that can change a result) is
stored with each run, so runs of different recipes are never pooled silently.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.errors import BenchError
from bench.names import RULE, name_problem, protocol_name_problem

PROTOCOL_DIR = Path(__file__).parent / "protocols"

# Ranges checked when a protocol is loaded, so a value that can only fail (or silently mislead)
# later is refused before any training: a zero budget, a probability of 7.5, a negative seed.
Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
Probability = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
DEFAULT_THREADS = 1  # CPU threads of a protocol that does not say (neutral: see NEUTRAL)


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
    nsd_tolerance_mm: PositiveFloat = 2.0  # a distance: 0 would count only exactly shared surface points
    # A declared subset of the test set, for a protocol that must take seconds (smoke): the first
    # ``max_cases`` cases of the test list and, of each volume, its ``max_slices`` central slices
    # (one contiguous slab, so 3D distances stay 3D). None: every case, every slice. Tables say so.
    max_cases: Count | None = None
    max_slices: Count | None = None
    # Inference-side options (neutral values: what every run did before they existed; see NEUTRAL).
    # ``tta: flip`` averages the softmax over the four mirrorings of each slice (none, left-right,
    # up-down, both), as nnU-Net mirrors; ``postprocess`` keeps each class's largest 3D connected
    # component (``lcc``, nnU-Net's remove-all-but-largest-component) and then fills each class's holes
    # slice by slice (``lcc+fill``); ``inference_size`` feeds the model N x N slices instead of
    # ``input_size`` ones, with the trained weights, when the model can be built at N with the same
    # weight shapes (``models.registry.check_input_size``).
    tta: Literal["none", "flip"] = "none"
    postprocess: Literal["none", "lcc", "lcc+fill"] = "none"
    inference_size: Count | None = None

    def subset(self) -> str:
        """The subset in words (``""`` for the whole test set), for tables and headers."""
        cases = "the first test case" if self.max_cases == 1 else f"the first {self.max_cases} test cases"
        slices = "its central slice" if self.max_slices == 1 else f"the central {self.max_slices} slices of each"
        return ", ".join(([cases] if self.max_cases else []) + ([slices] if self.max_slices else []))

    def inference(self) -> str:
        """The inference-side options in words (``""`` at their neutral values), for the fairness line."""
        parts = (["test-time mirroring (4 flips, softmax averaged)"] if self.tta == "flip" else []) + \
            ([f"post-processing {self.postprocess}"] if self.postprocess != "none" else []) + \
            ([f"inference at {self.inference_size} px"] if self.inference_size else [])
        return ", ".join(parts)


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
    # torch's CPU threads per run (intra-op). On a CPU they decide the order in which kernels sum
    # floats, so they are part of the numbers; every executor gives each run this many. On CUDA they
    # are not applied (the CPU threads do not change a GPU run's numbers).
    threads: Count = DEFAULT_THREADS

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        problem = protocol_name_problem(name)
        if problem is not None:
            rule = f" ({RULE})" if name_problem(name) else ""
            raise ValueError(f"name {name!r} must be a plain folder name (it names the runs' folder): "
                             f"it {problem}{rule}")
        return name

    @model_validator(mode="after")
    def _schedule(self) -> Protocol:
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("set exactly one of 'epochs' and 'iterations'")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        return self

    def max_iterations(self, n_train_slices: int) -> int:
        """Iteration budget: given directly, or epochs x ceil(slices / batch) as the official code."""
        if self.iterations is not None:
            return self.iterations
        assert self.epochs is not None  # exactly one budget (checked when the protocol is made)
        return self.epochs * math.ceil(n_train_slices / self.batch_size)

    def effective_lr(self) -> float:
        """The base LR actually used, after the declared batch-size rule (``lr_rule`` says which)."""
        if self.lr_scaling == "linear" or (
            self.lr_scaling == "official" and self.batch_size != 24 and self.batch_size % 6 == 0
        ):
            return self.base_lr * self.batch_size / 24
        return self.base_lr

    def lr_rule(self) -> str:
        """How ``effective_lr`` comes from ``base_lr``, in words (``protocol show`` and run headers say it).

        The official Swin-Unet rule scales only batch sizes that are multiples of 6 other than 24, so
        batch 12 trains at half the LR while batch 16 (a power of two) keeps 0.05: say which applied.
        """
        b, base = self.batch_size, f"{self.base_lr:g}"
        if self.lr_scaling == "linear":
            return f"scaled from {base} by batch {b}/24 (lr_scaling linear)"
        if self.lr_scaling == "none":
            return "base_lr (lr_scaling none)"
        if b == 24:
            return "base_lr, which the official batch rule leaves unscaled at batch 24"
        if b % 6:
            return (f"base_lr, not scaled: the official batch rule scales only batch sizes that are multiples "
                    f"of 6, and {b} is not one")
        return f"scaled from {base} by the official batch rule: x {b}/24, as batch {b} is a multiple of 6"

    def hash(self) -> str:
        """Short sha256 over every field that can change a run's result (see ``recipe``)."""
        return recipe_hash(self.model_dump())

    def derive(self, changes: Mapping[str, object] | None = None, **keys: object) -> Protocol:
        """This protocol with changed keys (dotted, or keyword): see ``derive``."""
        return derive(self, {**(changes or {}), **keys})


# Keys added after results existed, at the values that reproduce what a run did before the key
# existed (every such run on a CPU: no autocast there, no cuDNN). At these values they stay out of
# the hash, so earlier protocols keep their hash and earlier runs their identity. ``threads`` is the
# exception that needs a rule: runs made before it used whatever count their process had, which
# their manifest records; 1 keeps the hashes of protocols that do not say it, and a run made before
# the key is the same run as a protocol's only if it recorded that protocol's count
# (``bench.engine.runs.same_run``, ``bench.engine.numerics.threads_of``).
# Dotted keys are nested ones (``evaluation.max_cases``).
NEUTRAL = {"precision": "fp32", "cudnn": Cudnn().model_dump(), "threads": DEFAULT_THREADS,
           "evaluation.max_cases": None, "evaluation.max_slices": None,
           "evaluation.tta": "none", "evaluation.postprocess": "none", "evaluation.inference_size": None}


def recipe(data: dict) -> dict:
    """What decides a run's numbers, from a protocol's ``model_dump()`` (a manifest stores one).

    Not the name or description; not the tuning settings, nor the validation settings unless
    ``bench run`` validates during training (it then trains on fewer cases); new keys at their
    neutral values (``NEUTRAL``) are left out.
    """
    out = {k: v for k, v in data.items() if k not in ("name", "description", "validation", "tuning")}
    for key, value in NEUTRAL.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:  # a copy of each section on the way: ``data`` stays as it is
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            if node.get(last, value) == value:
                node.pop(last, None)
    validation = data.get("validation") or {}
    if validation.get("during_run"):
        out["validation"] = {"during_run": True, "fraction": validation.get("fraction")}
    return out


def recipe_hash(data: dict) -> str:
    """The protocol hash of a protocol's ``model_dump()`` (a manifest stores one): 12 hex digits of the
    sha256 of its ``recipe``."""
    blob = json.dumps(recipe(data), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


FLAGS = {"convention": "--convention", "nsd_tolerance_mm": "--nsd-tolerance", "resize": "--resize",
         "batch_size": "--batch-size"}


def evaluation_settings(base: Evaluation | dict | None = None, **flags: object) -> Evaluation:
    """Evaluation settings: a run's record (or the defaults) with command-line flags (None: unchanged),
    validated by ``Evaluation`` itself; an error names the flag."""
    data = base.model_dump() if isinstance(base, Evaluation) else dict(base or {})
    data.update({k: v for k, v in flags.items() if v is not None})
    try:
        return Evaluation.model_validate(data)
    except ValidationError as e:
        key = str(e.errors()[0]["loc"][0]) if e.errors()[0]["loc"] else ""
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise BenchError(f"{FLAGS.get(key, key)} {data.get(key)}: {msg}") from None


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


def _at(data: dict, key: str) -> object:
    node: object = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _text(value) -> str:
    """A value as it appears in a protocol name: short, no spaces, no path separators."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_text(v)}" for k, v in value.items()) + "}"
    return str(value).replace("/", "_").replace(" ", "_")


def protocol_name(root: str, changes: Mapping[str, str]) -> str:
    """The name of a derived protocol: ``cpu@batch_size=4,iterations=30`` (keys sorted);
    ``parse_protocol_name`` reads it back."""
    if not changes:
        return root
    return f"{root}@" + ",".join(f"{k}={changes[k]}" for k in sorted(changes))


def parse_protocol_name(name: str) -> tuple[str, dict[str, str]]:
    """``cpu@batch_size=4,seeds=[0,1]`` -> ``("cpu", {"batch_size": "4", "seeds": "[0,1]"})``."""
    root, sep, suffix = name.partition("@")
    if not sep:
        return name, {}
    items, depth, start = [], 0, 0
    for i, ch in enumerate(suffix + ","):
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            items.append(suffix[start:i])
            start = i + 1
    return root, dict(item.partition("=")[::2] for item in items if item)


def _put(data: dict, key: str, value: object, where: str) -> None:
    """Set dotted ``key`` in a protocol's ``model_dump()``; one budget (iterations, epochs) replaces the other."""
    parts = key.split(".")
    if parts[0] in ("name", "description"):
        raise BenchError(f"{where} {key}: not a setting (the name records the overrides)")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            what = "unknown key" if part not in node else "not a section"
            raise BenchError(f"{where} {key}: {what} '{'.'.join(parts[: i + 1])}'")
        node = node[part]
    node[parts[-1]] = value
    if key in ("iterations", "epochs") and value is not None:
        data["epochs" if key == "iterations" else "iterations"] = None


def derive(protocol: Protocol, changes: Mapping[str, object], where: str = "--set") -> Protocol:
    """``protocol`` with dotted-key changes, validated like a file: the one way to override a protocol.

    The result is another recipe, so its name records the keys whose values changed
    (``cpu@batch_size=4``, merged with what the name already records): its runs get their own
    folders and report, never the base's. A value equal to the protocol's changes nothing, not
    even the name. ``--set``, ``--iterations``, ``--checkpoint-every``, ``bench tune``'s LR range and
    ablation knobs that are protocol keys all come here.
    """
    if not changes:
        return protocol
    before = protocol.model_dump()
    data = copy.deepcopy(before)
    for key, value in changes.items():
        _put(data, key, value, where)
    try:
        resolved = Protocol.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        given = "" if err["type"] == "extra_forbidden" else next(  # the bad value, as given
            (f" {k}={_text(v)}" for k, v in changes.items() if loc == k or loc.startswith(k + ".")), "")
        raise BenchError(f"{where}{given}: {_first_error(e)}") from None
    after = resolved.model_dump()
    changed = {k: _text(_at(after, k)) for k in changes if _at(after, k) != _at(before, k)}
    if not changed:
        return resolved
    root, recorded = parse_protocol_name(protocol.name)
    everything = recorded | changed
    description = _with_changes(base_description(protocol.model_dump()), everything)
    return resolved.model_copy(update={"name": protocol_name(root, everything), "description": description})


CHANGED = "[then changed: "  # what ``derive`` appends to a description: its text no longer says it all


def _with_changes(description: str, changes: Mapping[str, str]) -> str:
    said = ", ".join(f"{k}={changes[k]}" for k in sorted(changes))
    return f"{description} {CHANGED}{said}]" if description else f"{CHANGED}{said}]"


def base_description(data: Mapping[str, object]) -> str:
    """A protocol's description (from ``model_dump()`` or a manifest's record) without what ``derive``
    appended to it: the name records those changes already, and runs made before derive appended
    them keep their ``config_key``."""
    text = str(data.get("description") or "")
    if parse_protocol_name(str(data.get("name") or ""))[1] and CHANGED in text:
        text = text.rpartition(CHANGED)[0].rstrip()
    return text


def apply_sets(protocol: Protocol, sets: Sequence[str]) -> Protocol:
    """``protocol`` with ``--set KEY=VALUE`` overrides (see ``derive``)."""
    return derive(protocol, dict(parse_set(item) for item in sets))


def resolve_protocol(name_or_path: str, sets: Sequence[str] = (), changes: Mapping[str, object] | None = None
                     ) -> Protocol:
    """A shipped protocol or a file, with ``--set`` overrides and then ``changes`` applied in one
    ``derive`` (so the name records each changed key once, however it was given)."""
    return derive(load_protocol(name_or_path), {**dict(parse_set(item) for item in sets), **(changes or {})})


def protocol_yaml(protocol: Protocol) -> str:
    """The resolved protocol as YAML that ``--protocol FILE`` reads back (same hash); name, hash and the
    effective LR with its rule on top."""
    body = yaml.safe_dump(protocol.model_dump(exclude={"name"}), sort_keys=False, default_flow_style=None, width=120)
    return (f"# protocol {protocol.name}, hash {protocol.hash()}\n"
            f"# effective lr {protocol.effective_lr():g}: {protocol.lr_rule()}\n{body}")
