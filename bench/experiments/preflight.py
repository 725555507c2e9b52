"""Checks before any training, so what can be known to fail fails in seconds with one line.

Protocol values are checked when the protocol loads (``bench.protocol``) and datasets when they
are opened (``bench.data.validate``); this module checks what needs both, or the runs' folders:
every (model, knobs, input size) of a sweep can be built, ``--weights`` files name models of the
sweep and can be read, and no run folder holds a checkpoint that would run code when resumed.
"""
from __future__ import annotations

from pathlib import Path

from bench.data.synapse import Dataset
from bench.engine.checkpoint import check_run_folder
from bench.engine.runs import RunSpec, RunState, config_key, conflict_message, run_config, run_id, run_state
from bench.engine.settings import RunSettings
from bench.errors import BenchError
from bench.protocol import Protocol
from models import check_input_size, check_model_args
from models.weights import read_npz, read_state_dict


def check_models(jobs: list[tuple[RunSpec, Protocol]], ds: Dataset) -> None:
    """Every job's model can be built with its knobs at its protocol's input size (the model decides)."""
    seen = set()
    for spec, proto in jobs:
        key = (spec.model, repr(sorted(spec.knobs.items())), proto.input_size)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_model_args(spec.model, num_classes=ds.num_classes, in_channels=ds.channels, img_size=proto.input_size,
                             **spec.knobs)
        except (ValueError, TypeError) as e:
            raise BenchError(f"{spec.label} cannot run under protocol {proto.name} (input_size "
                             f"{proto.input_size}): {e}") from None
        size = proto.evaluation.inference_size
        if size and size != proto.input_size:
            try:
                check_input_size(spec.model, size, proto.input_size, num_classes=ds.num_classes,
                                 in_channels=ds.channels, **spec.knobs)
            except ValueError as e:
                raise BenchError(f"{spec.label} cannot infer at evaluation.inference_size {size} under protocol "
                                 f"{proto.name} (trained at {proto.input_size}): {e}") from None


def check_weights(weights: dict[str, str], models: list[str]) -> None:
    """``--weights MODEL=PATH``: MODEL is one of ``--models`` and PATH is a weights file we can read."""
    for model, path in weights.items():
        if model not in models:
            raise BenchError(f"--weights {model}={path}: {model} is not in --models ({', '.join(models)}); "
                             "the file would be ignored")
        p = Path(path)
        if not p.is_file():
            raise BenchError(f"--weights {model}: file not found: {path}")
        try:
            read_npz(p) if p.suffix == ".npz" else read_state_dict(p)
        except (ValueError, OSError) as e:
            raise BenchError(f"--weights {model}: {str(e).splitlines()[0]}") from None


def check_run_folders(jobs: list[tuple[RunSpec, Protocol]], ds: Dataset, results: Path) -> None:
    """No run folder holds a completed run of other settings (refused before any training rather than
    after an hour of it), nor a file that would run code when this sweep resumes it."""
    for spec, proto in jobs:
        folder = run_id(spec, proto, ds).path(results)
        state = run_state(folder, config_key(run_config(spec, proto, ds)))
        if state is RunState.CONFLICT:
            raise BenchError(conflict_message(folder, spec))
        if folder.is_dir() and state is not RunState.COMPLETE:  # a complete run is reused without loading
            check_run_folder(folder)


def check_jobs(jobs: list[tuple[RunSpec, Protocol]], ds: Dataset, settings: RunSettings) -> None:
    """Everything above that concerns the jobs (``--force`` clears the run folders first)."""
    check_models(jobs, ds)
    if not settings.force:
        check_run_folders(jobs, ds, settings.results)
