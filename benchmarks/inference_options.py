"""What each inference-side option (``evaluation.tta``, ``postprocess``, ``inference_size``) does to DSC
and HD95: the trained weights of complete run folders scored again under each option, on the run's
own dataset and evaluation settings otherwise. Nothing is trained and no run folder is written.

    python benchmarks/inference_options.py RUN_DIR [RUN_DIR ...] [--size 192] [--max-cases N]

Prints one Markdown table: per model and option, mean DSC % and mean HD95 over organs and test
cases (the report's means), and the difference to ``none``. An option the model cannot take (an
inference size its weights do not fit) is a row saying why. Post-processing acts on the label volume
only, so its rows post-process the predictions of the same model pass (``bench.engine.postprocess``,
exactly what ``predict_volume`` applies last) instead of predicting again.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.data.resolve import open_layout
from bench.engine.evaluation import evaluate_model, score_cases, sized_for_inference
from bench.engine.inference import predict_volume
from bench.engine.postprocess import postprocess
from bench.engine.predict import from_run
from bench.engine.results import load_manifest
from bench.env import cpu_name
from bench.errors import BenchError


def means(metrics) -> tuple[float, float]:
    fg = metrics[metrics["label"] != 0]
    dice = fg[fg["metric"] == "dice"].groupby("case")["value"].mean().mean() * 100
    hd = fg[fg["metric"] == "hd95"].groupby("case")["value"].mean().mean()
    return float(dice), float(hd)


def _row(model: str, name: str, dice: float, hd: float, base: tuple[float, float], seconds: float) -> str:
    return (f"| {model} | {name} | {dice:.2f} | {hd:.2f} | {dice - base[0]:+.2f} | {hd - base[1]:+.2f} "
            f"| {seconds:.0f} |")


def _model(run: Path, size: int, max_cases: int | None, ttas: list[str]) -> None:
    m = load_manifest(run)
    p = from_run(run)
    ds = open_layout(Path(m["dataset"]["root"]), m["dataset"]["name"], say=lambda *a, **k: None)
    assert p.protocol is not None
    proto, cpu = p.protocol, torch.device("cpu")
    ev0 = proto.evaluation.model_copy(update={"max_cases": max_cases})
    base: tuple[float, float] | None = None
    for tta in ttas:
        ev, kept, t = ev0.model_copy(update={"tta": tta}), {}, time.perf_counter()

        def predict(case, image, ev=ev, kept=kept):
            kept[case] = predict_volume(p.model, image, proto.input_size, ev.batch_size, ev.resize, cpu,
                                        ds.channels, ev.tta)
            return kept[case]

        dice, hd = means(score_cases(ds, ev, predict))
        base = base or (dice, hd)
        print(_row(m["model"], tta, dice, hd, base, time.perf_counter() - t), flush=True)
        for post in ("lcc", "lcc+fill"):
            t = time.perf_counter()
            dice, hd = means(score_cases(ds, ev, lambda case, _image, post=post, kept=kept:
                                         postprocess(kept[case], post)))
            name = post if tta == "none" else f"flip, {post}"
            print(_row(m["model"], name, dice, hd, base, time.perf_counter() - t), flush=True)
    ev = ev0.model_copy(update={"inference_size": size})
    t = time.perf_counter()
    try:
        sized_for_inference(p.model, proto.input_size, ev)
    except BenchError as e:
        print(f"| {m['model']} | inference_size {size} | - | - | - | - | refused: {e} |", flush=True)
        return
    dice, hd = means(evaluate_model(p.model, ds, proto.input_size, ev, cpu))
    assert base is not None
    print(_row(m["model"], f"inference_size {size}", dice, hd, base, time.perf_counter() - t), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--max-cases", type=int, default=None, help="score the first N test cases only")
    ap.add_argument("--tta", default="none,flip", help="the test-time mirrorings to score (none first)")
    args = ap.parse_args()
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| model | option | DSC % | HD95 | DSC - none | HD95 - none | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for run in args.runs:
        _model(run, args.size, args.max_cases, args.tta.split(","))


if __name__ == "__main__":
    main()
