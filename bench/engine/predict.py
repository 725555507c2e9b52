"""``bench predict``: a trained model segments new scans and images.

The model comes from a run folder (its manifest names the model, knobs, protocol, classes,
channels and the dataset's preprocessing; ``model.pt`` holds the weights) or from a weights
file and a protocol. Every input goes through exactly the preprocessing the model was trained
with and the protocol's inference (input size, resize mode: ``bilinear-logits`` gives smooth
edges at the native size). Masks are written in the input's own geometry (``bench.data.inputs``).
A bad input is one line in the summary; the other inputs are still written.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from rich.progress import Progress

from bench.data.ct_import import check_window
from bench.data.inputs import (
    Input,
    busiest_slice,
    mask_png,
    read_image_input,
    read_reference,
    read_volume_input,
    write_png,
    write_volume_mask,
)
from bench.data.organs import SYNAPSE_ORGANS
from bench.data.overlays import overlay, side_by_side
from bench.data.preprocessing import Preprocessing, describe_folder
from bench.engine.evaluation import sized_for_inference
from bench.engine.header import recorded_lr
from bench.engine.inference import predict_volume
from bench.engine.progress import Steps
from bench.engine.results import FINAL_WEIGHTS, MANIFEST, load_manifest
from bench.engine.stopping import Stopped, raise_if_stopped
from bench.errors import BenchError
from bench.names import name_problem
from bench.protocol import Protocol
from models import create_model
from models.weights import load_problem


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
    protocol: Protocol | None = None  # for the header line: the protocol, the data and the LR it was trained with
    dataset: str = ""
    lr: str = ""
    tta: str = "none"  # the protocol's inference options (bench.protocol.Evaluation)
    postprocess: str = "none"


@dataclass
class Summary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Input, str]] = field(default_factory=list)


def from_run(run_dir: Path, window: tuple[float, float] | None = None) -> Predictor:
    """The trained model of a complete run folder, on the CPU."""
    run_dir = Path(run_dir)
    m = load_manifest(run_dir)
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
    model = _build(run_dir, m, max(organs) + 1, channels, protocol.input_size)
    try:
        with warnings.catch_warnings():  # torch warns about a pickle's protocol before refusing it
            warnings.simplefilter("ignore")
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    except Exception as e:  # truncated file, other model, a pickle planted in a results folder
        raise BenchError(f"{weights}: unreadable weights ({load_problem(e)})") from None
    ev = protocol.evaluation
    model, size = sized_for_inference(model, protocol.input_size, ev)
    return Predictor(model, f"{m['run']['model']} from {run_dir}", size, ev.resize, ev.batch_size,
                     _with_window(prep, window), organs, protocol, f"{info['name']} (the run's)", recorded_lr(m),
                     ev.tta, ev.postprocess)


# what the dataset and protocol decide, never a knob of the run
BUILT_FROM_RUN = ("num_classes", "in_channels", "img_size", "weights")


def _build(run_dir: Path, m: dict, num_classes: int, channels: int, input_size: int) -> torch.nn.Module:
    """The run's model, as its manifest records it; what the record cannot build is named, not a traceback."""
    knobs = m.get("knobs") or {}
    where = run_dir / MANIFEST
    if not isinstance(knobs, dict):
        raise BenchError(f"{where}: 'knobs' is not a mapping of names to values")
    fixed = sorted(set(knobs) & set(BUILT_FROM_RUN))
    if fixed:
        raise BenchError(f"{where}: its knobs set {', '.join(fixed)}, which the run's dataset and protocol decide; "
                         "not a manifest this harness wrote")
    try:
        return create_model(m["model"], num_classes=num_classes, in_channels=channels, img_size=input_size, **knobs)
    except (TypeError, ValueError, KeyError) as e:
        raise BenchError(f"{where}: cannot build {m.get('model')} with knobs {knobs} ({e})") from None


def from_weights(model_name: str, path: Path, protocol: Protocol, organs: dict[int, str] | None = None,
                 prep: Preprocessing | None = None, window: tuple[float, float] | None = None,
                 dataset: str = "") -> Predictor:
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
    model, size = sized_for_inference(model, protocol.input_size, ev)
    return Predictor(model, f"{model_name} from {path}", size, ev.resize, ev.batch_size,
                     _with_window(prep, window), organs, protocol,
                     dataset or "Synapse's conventions (eight organs, CT)", f"not recorded (weights from {path})",
                     ev.tta, ev.postprocess)


def _with_window(prep: Preprocessing, window: tuple[float, float] | None) -> Preprocessing:
    if window is None:
        if prep.problem:
            raise BenchError(prep.problem)
        return prep
    if prep.kind != "volume":
        raise BenchError("--window applies to volumes (CT); this model was trained on 2D images")
    return replace(prep, window=check_window(window), problem=None)


def _predict_one(p: Predictor, inp: Input, target: Path, device: torch.device) -> _Predicted:
    """Segment one input into its mask ``target``."""
    if inp.kind != p.prep.kind:
        if p.prep.kind == "volume":
            raise BenchError(f"{inp.path}: a 2D image; this model was trained on volumes (CT / MR): "
                             "give NIfTI files or DICOM series")
        raise BenchError(f"{inp.path}: a volume; this model was trained on 2D images: give PNG, JPG or TIFF files")
    if inp.kind == "volume":
        image, oriented, original = read_volume_input(inp.path, p.prep)
        label = predict_volume(p.model, image, p.input_size, p.batch_size, p.resize, device, 1, p.tta, p.postprocess)
        write_volume_mask(label, oriented, original, target)
        return _Predicted(target, image, label, oriented)
    image = read_image_input(inp.path, p.prep.channels)
    label = predict_volume(p.model, image, p.input_size, p.batch_size, p.resize, device, p.prep.channels, p.tta,
                           p.postprocess)
    write_png(mask_png(label, p.prep.mask_values), target)
    return _Predicted(target, image, label)


@dataclass
class _Predicted:
    mask: Path  # the mask written
    image: np.ndarray  # the image array as the model saw it (D x H x W volume, or H x W [x 3])
    label: np.ndarray  # the prediction, same layout
    oriented: sitk.Image | None = None  # a volume's image after reorientation (its reference must be on its grid)


def _write_overlay(p: Predictor, inp: Input, done: _Predicted, target: Path, fill: bool, reference: Path | None
                   ) -> Path:
    """``<name>_overlay.png``: contours on the image (a volume's slice with the most foreground: the reference's
    when there is one) and, with a reference mask, the reference beside the prediction."""
    image, label = done.image, done.label
    ref = None if reference is None else read_reference(reference, inp, p.prep, done.oriented, label.shape,
                                                        max(p.organs) + 1)
    if inp.kind == "volume":
        z = busiest_slice(ref if ref is not None else label)
        image, label, ref = image[z], label[z], None if ref is None else ref[z]
    drawn = overlay(image, label, fill) if ref is None else side_by_side(image, label, ref, p.organs, fill)
    write_png(drawn, target)
    return target


def plan_outputs(inputs: list[Input], out: Path, with_overlay: bool
                 ) -> tuple[dict[Input, list[Path]], dict[Input, str]]:
    """(each input's files in ``out``, the inputs refused and why): an output name that another input's
    output already claims (``x.png``'s overlay and ``x_overlay.png``'s mask) refuses the later input
    before anything is written."""
    claimed: dict[str, tuple[Input, str]] = {}
    plan: dict[Input, list[Path]] = {}
    refused: dict[Input, str] = {}
    for inp in inputs:
        problem = name_problem(inp.name)
        if problem is not None:  # the one rule for names that become files (bench.names)
            refused[inp] = f"{inp.path}: its output name {inp.name!r} {problem}; rename the input"
            continue
        names = [(inp.output, "mask"), (f"{inp.name}_overlay.png", "overlay")][: 2 if with_overlay else 1]
        clash = next(((name, what) for name, what in names if name in claimed), None)
        if clash is not None:
            owner, owned = claimed[clash[0]]
            refused[inp] = f"{inp.path}: its {clash[1]} {clash[0]} would overwrite the {owned} of {owner.path}"
            continue
        claimed.update({name: (inp, what) for name, what in names})
        plan[inp] = [out / name for name, _ in names]
    return plan, refused


def check_out(out: Path, inputs: list[Input], targets: list[Path]) -> None:
    """Refuse an ``--out`` that is an input or the folder holding one, and any output that is an input
    file under another name (a link): masks are never written over, or in among, what the user gave."""
    resolved = out.resolve()
    for inp in inputs:
        path = inp.path.resolve()
        if path == resolved:
            raise BenchError(f"--out {out}: is the input {inp.path}; choose another folder for the masks")
        if path.parent == resolved:
            raise BenchError(f"--out {out}: holds the input {inp.path}; the masks would be written beside the "
                             "inputs, or over them: choose another folder")
    given = {(f.stat().st_dev, f.stat().st_ino) for inp in inputs
             for f in ([inp.path] if inp.path.is_file() else [c for c in inp.path.iterdir() if c.is_file()])}
    for target in targets:
        if target.is_file() and (target.stat().st_dev, target.stat().st_ino) in given:
            raise BenchError(f"--out {out}: {target.name} is one of the inputs (a link to it); choose another folder")


def predict_inputs(p: Predictor, inputs: list[Input], out: Path, device: torch.device, with_overlay: bool = False,
                   progress: Progress | None = None, say=print, fill: bool = False,
                   references: dict[str, Path] | None = None) -> Summary:
    """Segment every input into ``out``; a bad input is recorded (one line) and the rest go on. With
    ``with_overlay`` (or ``references``) each also gets an overlay PNG (``fill``: translucent classes;
    ``references``: input name -> its reference mask, drawn beside the prediction).

    Stopped by a signal (``bench.engine.stopping``), the input in progress leaves no file and the
    exception's note says which inputs were segmented and which were not.
    """
    out, with_overlay = Path(out), with_overlay or bool(references)
    plan, refused = plan_outputs(inputs, out, with_overlay)
    check_out(out, inputs, [t for targets in plan.values() for t in targets])
    out.mkdir(parents=True, exist_ok=True)
    p.model.to(device).eval()
    summary = Summary()
    steps = Steps(progress, "predict", len(inputs), "input")  # lines (no terminal) on the display's console
    for k, inp in enumerate(inputs):
        written: list[Path] = []
        try:
            raise_if_stopped()
            if inp in refused:
                raise BenchError(refused[inp])
            targets = plan[inp]
            done = _predict_one(p, inp, targets[0], device)
            written.append(done.mask)
            if with_overlay:
                written.append(_write_overlay(p, inp, done, targets[1], fill, (references or {}).get(inp.name)))
            summary.written += written
        except BenchError as e:
            summary.failed.append((inp, str(e)))
            say(f"error: {e}")
        except Stopped as e:
            for path in written:  # the mask of an input whose overlay was not written
                path.unlink(missing_ok=True)
            e.note = _stopped_note(summary, inputs[k:], len(inputs), out)
            raise
        steps.advance(inp.name)
    steps.close()
    return summary


def _stopped_note(summary: Summary, rest: list[Input], total: int, out: Path) -> str:
    done = total - len(rest) - len(summary.failed)
    failed = f", {len(summary.failed)} failed" if summary.failed else ""
    names = ", ".join(inp.name for inp in rest[:5]) + (f" and {len(rest) - 5} more" if len(rest) > 5 else "")
    return f"{done} of {total} input(s) segmented into {out}{failed}; not segmented: {names}"
