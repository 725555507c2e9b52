"""A run's identity, its folder and its state: the one home of "which run is this, where does it
live, and can it be reused?". Every command, executor and the report ask here.

A trained run lives in ``<results>/<dataset>/<protocol>/<model>/seed<k>/``; an external run
(another tool's predictions, ``bench evaluate --pred``) in ``<results>/<dataset>/external/<name>/``.
``run_id`` and ``external_id`` make identities, ``parse_run_path`` reads a folder back, and
``run_state`` decides what a folder holds for a run of given settings (its ``config_key``).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import pandas as pd

from bench.data.preprocessing import describe
from bench.data.synapse import Dataset
from bench.engine import numerics
from bench.engine.results import MANIFEST, metrics_problem, read_manifest
from bench.engine.validation import held_out_view
from bench.errors import BenchError
from bench.names import EXTERNAL, check_name
from bench.protocol import DEFAULT_THREADS, Protocol, base_description, recipe, recipe_hash

JOB_MARKER = "job.json"  # left in a run folder by a submission to a scheduler
THREADS_KEY = "@threads="  # a config key's thread count: <hash>@threads=N


@dataclass(frozen=True)
class RunSpec:
    """What decides one run's numbers besides the protocol and the dataset.

    ``lr_tag`` is empty for a run at the protocol's LR; otherwise it names the LR's source in the
    model label (``lr_tag``), so runs that differ only in LR have their own folders, side by side.
    """

    model: str
    seed: int
    lr: float
    lr_source: str
    weights: str | None = None
    knobs: dict = field(default_factory=dict)
    lr_tag: str = ""

    @property
    def label(self) -> str:
        """The run's model folder name: the registry name, plus its knobs when set, then its LR when it
        is not the protocol's (``swinunet@skip_connections=0,lr=tuned``; ``split_lr`` reads it back)."""
        parts = [f"{k}={v}" for k, v in sorted(self.knobs.items())]
        parts += [f"{LR_KEY}{self.lr_tag}"] if self.lr_tag else []
        return self.model + ("@" + ",".join(parts) if parts else "")


LR_KEY = "lr="  # the label's last part, for a run whose LR is not its protocol's
TUNED = "tuned"


def lr_tag(value: float | None = None, study: str | None = None, default_study: str | None = None) -> str:
    """How a model label names an LR that is not the protocol's: ``--lr 0.02`` gives ``0.02``; the best
    trial of the model's default study gives ``tuned``, of another study ``tuned-<study>``."""
    if study is None:
        if value is None:
            raise ValueError("lr_tag needs a value or a study")
        return repr(float(value))
    if study == default_study:
        return TUNED
    return f"{TUNED}-" + re.sub(r"[^A-Za-z0-9._-]", "_", study)


def split_lr(label: str) -> tuple[str, str | None]:
    """A model label without its LR part, and that part: ``unet@lr=tuned`` -> ``("unet", "tuned")``,
    ``unet`` -> ``("unet", None)`` (the protocol's LR)."""
    at = max(label.rfind("@" + LR_KEY), label.rfind("," + LR_KEY))
    tag = label[at + 1 + len(LR_KEY):]
    if at < 0 or not tag or any(c in tag for c in ",=@"):
        return label, None
    return label[:at], tag


@dataclass(frozen=True)
class RunId:
    """A run's identity; its folder is ``path(results)``. Made by ``run_id``, ``external_id`` or
    ``parse_run_path`` only."""

    dataset: str
    protocol: str
    model: str
    seed: int

    @property
    def external(self) -> bool:
        return self.protocol == EXTERNAL

    def path(self, results: Path) -> Path:
        """The run's folder under ``results``; ``parse_run_path`` reads it back."""
        if self.external:
            return Path(results) / self.dataset / EXTERNAL / self.model
        return Path(results) / self.dataset / self.protocol / self.model / f"seed{self.seed}"


def add_identity(rows: pd.DataFrame, run: RunId, protocol_hash: str) -> pd.DataFrame:
    """``rows`` (scored cases, ``bench.engine.evaluation.score_cases``) with the run's identity in front, in place.

    The columns come first in the order metrics.parquet has always had: protocol_hash, seed,
    model, protocol, dataset, then case.
    """
    for col, value in (("dataset", run.dataset), ("protocol", run.protocol), ("model", run.model),
                       ("seed", run.seed), ("protocol_hash", protocol_hash)):
        rows.insert(0, col, value)
    return rows


def run_id(spec: RunSpec, protocol: Protocol, ds: Dataset) -> RunId:
    """The identity of a trained run: dataset, protocol name (which records any override), model
    label (which records any knob) and seed. Each part names a folder, so each follows the name rule."""
    for what, name in (("dataset", ds.name), ("protocol", protocol.name), ("model", spec.label)):
        check_name(name, f"run of {spec.label} seed {spec.seed}", f"{what} name")
    return RunId(ds.name, protocol.name, spec.label, spec.seed)


def external_id(dataset: str, name: str) -> RunId:
    """The identity of another tool's predictions scored on ``dataset`` under ``name`` (the name rule,
    and not ``seed...``, which would read back as a trained run's folder)."""
    check_name(name, "--name", "external run name")
    if name.startswith("seed"):
        raise BenchError(f"--name: external run name {name!r} starts with 'seed' (it would read back as a "
                         "trained run's seed<k> folder)")
    return RunId(dataset, EXTERNAL, name, 0)


def recorded_id(manifest: dict) -> RunId:
    """The identity a run's manifest records (``run``: dataset, protocol, model, seed)."""
    run = manifest["run"]
    return RunId(str(run["dataset"]), str(run["protocol"]), str(run["model"]), int(run["seed"]))


def parse_run_path(path: Path) -> RunId:
    """A run folder's identity, from its path alone."""
    path = Path(path)
    if path.parent.name == EXTERNAL and not path.name.startswith("seed"):
        return RunId(path.parents[1].name, EXTERNAL, path.name, 0)
    if not path.name.startswith("seed") or not path.name[4:].lstrip("-").isdigit():
        raise BenchError(f"{path}: not a run folder (expected .../<dataset>/<protocol>/<model>/seed<k> "
                         "or .../<dataset>/external/<name>)")
    return RunId(path.parents[2].name, path.parents[1].name, path.parent.name, int(path.name[4:]))


def scan_runs(results: Path) -> tuple[list[Path], list[Path]]:
    """``(run folders, other folders)`` under ``results``. Run folders, trained and external, hold a
    manifest (complete or not) or a scheduler's ``job.json`` (submitted, maybe not started) at a
    path that reads back as a run's (``parse_run_path``, then ``path`` gives the same folder); the
    other folders hold such a file where no run lives (``seedabc``, ``seed01``, a trained run
    filed under ``external/``), and are for the caller to name, never to read as runs."""
    root = Path(results)
    found = {p.parent for name in (MANIFEST, JOB_MARKER) for p in root.glob(f"*/*/*/seed*/{name}")}
    found |= {p.parent for p in root.glob(f"*/{EXTERNAL}/*/{MANIFEST}")}
    runs: list[Path] = []
    others: list[Path] = []
    for folder in sorted(found):
        try:
            ok = parse_run_path(folder).path(root) == folder
        except (BenchError, ValueError, IndexError):
            ok = False
        (runs if ok else others).append(folder)
    return runs, others


def list_runs(results: Path) -> list[Path]:
    """Every run folder under ``results``, trained and external (see ``scan_runs``)."""
    return scan_runs(results)[0]


def run_config(spec: RunSpec, protocol: Protocol, ds: Dataset) -> dict:
    """The resolved configuration a trained run's manifest records."""
    config: dict[str, object] = {
        "model": spec.model, "knobs": spec.knobs, "weights": spec.weights, "seed": spec.seed,
        "lr": spec.lr, "lr_source": spec.lr_source,
        "protocol": protocol.model_dump(), "protocol_name": protocol.name, "protocol_hash": protocol.hash(),
        "dataset": {"name": ds.name, "root": str(Path(ds.root).resolve()), "fingerprint": ds.fingerprint(),
                    "num_classes": ds.num_classes, "organs": ds.organs, "channels": ds.channels,
                    "preprocessing": describe(ds).to_dict()},
        "convention": protocol.evaluation.convention,
    }
    if protocol.validation.during_run:  # the model trains without these cases
        config["validation_cases"] = sorted(held_out_view(ds, protocol).test_cases)
    return config


def config_key(config: dict) -> str:
    """Hash of what decides the numbers (the data's location may move without changing them; the
    protocol counts through ``bench.protocol.recipe``, so keys added later at their neutral values
    leave the key of a run made before them unchanged; a derived protocol's description counts without
    its derive marker), then ``@threads=N``, the CPU thread count.

    The part before ``@`` is the key the run had before ``threads`` was a protocol key (the hash
    over the protocol without it), so ``same_run`` still recognises a run made then by the count
    its manifest records."""
    protocol = {k: v for k, v in config["protocol"].items() if k != "threads"}
    base = _key(config | {"protocol": protocol, "protocol_hash": recipe_hash(protocol)})
    return f"{base}{THREADS_KEY}{config['protocol'].get('threads', DEFAULT_THREADS)}"


def _key(config: dict) -> str:
    protocol = recipe(config["protocol"]) | {"name": config["protocol"].get("name"),
                                             "description": base_description(config["protocol"])}
    data = {k: v for k, v in config.items() if k != "dataset"} | {"data": config["dataset"]["fingerprint"],
                                                                 "protocol": protocol}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def same_run(manifest: dict | None, key: str) -> bool:
    """The manifest is of a run with these settings (``key``), trained at the precision and the CPU
    thread count they say (a run made before ``threads`` was a key: at the count it recorded)."""
    if manifest is None or numerics.legacy_autocast(manifest):
        return False
    if manifest.get("key") == key:
        return True
    base, sep, count = key.partition(THREADS_KEY)
    return (bool(sep) and manifest.get("key") == base and "threads" not in (manifest.get("protocol") or {})
            and numerics.threads_of(manifest) == int(count))


class RunState(Enum):
    """What a run folder holds for a run of given settings."""

    ABSENT = "absent"  # nothing of these settings (no manifest, a torn one, or an unfinished run of others)
    COMPLETE = "complete"  # complete with these settings and readable metrics: reuse it
    STALE = "stale"  # these settings, unfinished or with unreadable metrics: resume or re-evaluate in place
    CONFLICT = "conflict"  # a completed run of other settings: kept unless --force replaces it


def run_state(path: Path, key: str) -> RunState:
    """The state of the run folder ``path`` for a run whose ``config_key`` is ``key``."""
    m = read_manifest(path)
    if not m:
        return RunState.ABSENT
    if not same_run(m, key):
        return RunState.CONFLICT if m.get("status") == "complete" else RunState.ABSENT
    if m.get("status") == "complete" and metrics_problem(path) is None:
        return RunState.COMPLETE
    return RunState.STALE


def conflict_message(path: Path, spec: RunSpec | None = None) -> str:
    """Why a run cannot go into ``path`` (it holds a completed run of other settings), and what to do.

    With ``spec`` (the run asked for), an LR that differs is named: a ``tuned`` folder whose study
    found a better trial since is the usual case."""
    m = read_manifest(path) or {}
    threads = numerics.threads_of(m)
    lr = f"lr {m.get('lr')}" + (f" from {m['lr_source']}" if m.get("lr_source") else "")
    asked = ""
    if spec is not None and m.get("lr") != spec.lr:
        asked = f"; this run asks for lr {spec.lr:g} from {spec.lr_source}"
    return (f"{path} holds a completed run with different settings (protocol {numerics.protocol_hash_of(m)}, "
            f"{numerics.precision_of(m)}, {threads} thread{'s' if threads != 1 else ''}, {lr}){asked}; "
            "use --force to replace it or --results to write elsewhere")
