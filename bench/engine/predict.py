"""``bench predict``: a trained model segments new scans and images.

The model comes from a run folder (its manifest names the model, knobs, protocol, classes,
channels and the dataset's preprocessing; ``model.pt`` holds the weights) or from a weights
file and a protocol. Every input goes through exactly the preprocessing the model was trained
with and the protocol's inference (input size, resize mode: ``bilinear-logits`` gives smooth
edges at the native size). Masks are written in the input's own geometry (``bench.data.inputs``).
A bad input is one line in the summary; the other inputs are still written.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.progress import Progress

from bench.data.inputs import (
    Input,
    busiest_slice,
    mask_png,
    overlay,
    read_image_input,
    read_volume_input,
    write_png,
    write_volume_mask,
)
from bench.data.organs import SYNAPSE_ORGANS
from bench.data.preprocessing import Preprocessing, describe_folder
from bench.engine.inference import predict_volume
from bench.engine.results import FINAL_WEIGHTS, read_manifest
from bench.errors import BenchError
from bench.protocol import Protocol
from models import create_model


@dataclass
class Predictor:
    """A model ready for inference, with everything needed to treat its inputs as its training data."""

    model: torch.nn.Module
    label: str  # what it is, for messages: "swinunet from results/.../seed0"
    input_size: int
    resize: str
    batch_size: int
    prep: Preprocessing
    organs: dict[int, str]


@dataclass
class Summary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Input, str]] = field(default_factory=list)


def from_run(run_dir: Path, window: tuple[float, float] | None = None) -> Predictor:
    """The trained model of a complete run folder, on the CPU."""
    run_dir = Path(run_dir)
    m = read_manifest(run_dir)
    if m is None:
        raise BenchError(f"{run_dir}: no manifest.json; not a run folder (.../<dataset>/<protocol>/<model>/seed<k>)")
    if m.get("kind") == "external":
        raise BenchError(f"{run_dir}: an external run (scored predictions of another tool) has no model")
    if m.get("status") != "complete":
        raise BenchError(f"{run_dir}: run is {m.get('status')}, not complete; finish it with `bench run` first")
    weights = run_dir / FINAL_WEIGHTS
    if not weights.is_file():
        raise BenchError(f"{weights}: not found (was the run made with --drop-weights?)")
    protocol = Protocol.model_validate(m["protocol"])
    info = m["dataset"]
    organs = {int(k): v for k, v in info["organs"].items()}
    channels = int(m.get("in_channels") or info.get("channels") or 1)
    if info.get("preprocessing"):
        prep = Preprocessing.from_dict(info["preprocessing"])
    elif Path(info["root"]).is_dir():  # a run made before preprocessing was recorded
        prep = describe_folder(Path(info["root"]), channels)
    else:
        raise BenchError(f"{run_dir}: the manifest does not record the dataset's preprocessing and the dataset "
                         f"folder {info['root']} is gone; use --weights MODEL={weights} --protocol P instead")
    model = create_model(m["model"], num_classes=max(organs) + 1, in_channels=channels,
                         img_size=protocol.input_size, **(m.get("knobs") or {}))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    except Exception as e:  # truncated file, other model
        why = (str(e).splitlines() or [""])[0][:200]
        raise BenchError(f"{weights}: unreadable weights ({type(e).__name__}: {why})") from None
    ev = protocol.evaluation
    return Predictor(model, f"{m['run']['model']} from {run_dir}", protocol.input_size, ev.resize, ev.batch_size,
                     _with_window(prep, window), organs)


def from_weights(model_name: str, path: Path, protocol: Protocol, organs: dict[int, str] | None = None,
                 prep: Preprocessing | None = None, window: tuple[float, float] | None = None) -> Predictor:
    """A model from a weights file (any format ``--weights`` loads) under ``protocol``; by default with
    the Synapse conventions (eight organs, one channel, CT window -125..275 HU, LPS)."""
    organs = organs or dict(SYNAPSE_ORGANS)
    prep = prep or Preprocessing("volume")
    try:
        model = create_model(model_name, num_classes=max(organs) + 1, in_channels=prep.channels,
                             img_size=protocol.input_size, weights=str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise BenchError(f"--weights {model_name}={path}: {str(e).splitlines()[0][:300]}") from None
    ev = protocol.evaluation
    return Predictor(model, f"{model_name} from {path}", protocol.input_size, ev.resize, ev.batch_size,
                     _with_window(prep, window), organs)


def _with_window(prep: Preprocessing, window: tuple[float, float] | None) -> Preprocessing:
    if window is None:
        if prep.problem:
            raise BenchError(prep.problem)
        return prep
    if prep.kind != "volume":
        raise BenchError("--window applies to volumes (CT); this model was trained on 2D images")
    lo, hi = (float(w) for w in window)
    if not lo < hi:
        raise BenchError(f"--window {lo:g} {hi:g}: LO must be below HI")
    return replace(prep, window=(lo, hi), problem=None)


def _predict_one(p: Predictor, inp: Input, out: Path, with_overlay: bool, device: torch.device) -> list[Path]:
    if inp.kind != p.prep.kind:
        if p.prep.kind == "volume":
            raise BenchError(f"{inp.path}: a 2D image; this model was trained on volumes (CT / MR): "
                             "give NIfTI files or DICOM series")
        raise BenchError(f"{inp.path}: a volume; this model was trained on 2D images: give PNG, JPG or TIFF files")
    target = out / inp.output
    if inp.kind == "volume":
        image, oriented, original = read_volume_input(inp.path, p.prep)
        label = predict_volume(p.model, image, p.input_size, p.batch_size, p.resize, device)
        write_volume_mask(label, oriented, original, target)
        shown_image, shown_label = image[busiest_slice(label)], label[busiest_slice(label)]
    else:
        image = read_image_input(inp.path, p.prep.channels)
        label = predict_volume(p.model, image, p.input_size, p.batch_size, p.resize, device, p.prep.channels)
        write_png(mask_png(label, p.prep.mask_values), target)
        shown_image, shown_label = image, label
    written = [target]
    if with_overlay:
        written.append(out / f"{inp.name}_overlay.png")
        write_png(overlay(shown_image, shown_label), written[-1])
    return written


def predict_inputs(p: Predictor, inputs: list[Input], out: Path, device: torch.device, with_overlay: bool = False,
                   progress: Progress | None = None, say=print) -> Summary:
    """Segment every input into ``out``; a bad input is recorded (one line) and the rest go on."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p.model.to(device).eval()
    summary = Summary()
    seen: dict[str, Path] = {}
    task = progress.add_task("predict", total=len(inputs)) if progress is not None else None
    for inp in inputs:
        try:
            if inp.output in seen:
                raise BenchError(f"{inp.path}: its output {inp.output} would overwrite the mask of {seen[inp.output]}")
            seen[inp.output] = inp.path
            summary.written += _predict_one(p, inp, out, with_overlay, device)
        except BenchError as e:
            summary.failed.append((inp, str(e)))
            say(f"error: {e}")
        if progress is not None:
            progress.update(task, advance=1)
    if progress is not None:
        progress.remove_task(task)
    return summary
