"""Every registered model at the `cpu` protocol's geometry: parameters, GFLOPs, training and inference speed.

    python benchmarks/bench_models.py [--models 'swinunet*,unet'] [--threads 2] [--out docs/models-table.md]

For each model (9 classes, 1 channel, the protocol's input size): parameters, forward GFLOPs per image
(a multiply-add is 2 FLOPs), training images/s (forward + backward + SGD at the protocol's batch, median
of --steps steps after 2 warm-up steps, models.compute.measure_training) and inference (evaluation-mode
forward passes at the protocol's evaluation batch, and ms per slice one at a time,
models.compute.measure_inference), with the peak resident memory of training. A model that fails is a
row with its error. The table is written as Markdown with the machine, the thread count and the load
average before and after (speeds on a shared machine are only comparable within one run).

OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless set): on a machine shared with other
jobs, spinning threads that lose their core stall each other, which inflated one-slice times up to
tenfold in a test here; on a quiet machine the setting changes little.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.env import cpu_name  # noqa: E402
from bench.protocol import load_protocol  # noqa: E402
from models import create_model, list_models  # noqa: E402
from models.compute import count_parameters, gflops, measure_inference, measure_training  # noqa: E402

COLUMNS = ["model", "parameters", "GFLOPs", "train images/s", "train peak RSS MB", "eval slices/s", "ms/slice"]


def measure(name: str, size: int, batch: int, eval_batch: int, steps: int) -> list[str]:
    """One table row; a failure is a row with its error, not a crash of the whole table."""
    model = None
    try:
        torch.manual_seed(0)
        model = create_model(name, num_classes=9, in_channels=1, img_size=size)
        row = [name, f"{count_parameters(model):,}", f"{gflops(model, size):.2f}"]
        inference = measure_inference(model, size, batch=eval_batch, repeats=3, device="cpu")
        training = measure_training(model, size, batch=batch, steps=steps, device="cpu")
        return row + [f"{training.images_per_second:.2f}", f"{training.peak_memory_mb:,.0f}",
                      f"{inference.slices_per_second:.2f}", f"{inference.ms_per_slice:.0f}"]
    except Exception as e:  # the table reports it
        return [name, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"] + [""] * (len(COLUMNS) - 2)
    finally:
        del model
        gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="*", help="comma-separated names or shell patterns (default: all)")
    ap.add_argument("--protocol", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("docs/models-table.md"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    proto = load_protocol(args.protocol)
    size, batch, eval_batch = proto.input_size, proto.batch_size, proto.evaluation.batch_size
    names = list(dict.fromkeys(n for pattern in args.models.split(",") for n in list_models(pattern.strip())))
    load_before, started = os.getloadavg(), time.time()
    rows = []
    for i, name in enumerate(names):
        rows.append(measure(name, size, batch, eval_batch, args.steps))
        print(f"[{i + 1}/{len(names)}] " + " | ".join(rows[-1]), flush=True)
    load_after = os.getloadavg()
    header = [
        f"# Every registered model at the `{args.protocol}` protocol's geometry",
        "",
        f"Measured by `python benchmarks/bench_models.py` on {cpu_name()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {args.threads} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), on "
        f"{time.strftime('%Y-%m-%d')} in {time.time() - started:.0f} s;"
        f" load average {load_before[0]:.1f} before and {load_after[0]:.1f} after (other jobs shared the machine, so "
        f"compare speeds within this table only).",
        "",
        f"Input {size} x {size}, 1 channel, 9 classes. GFLOPs: forward, per image, a multiply-add counted as 2. "
        f"Training: forward + backward + SGD, batch {batch}, median of {args.steps} steps after 2 warm-up steps; "
        f"peak RSS is the whole process's. Inference: evaluation mode, batch {eval_batch} (slices/s) and one slice "
        f"per pass (ms/slice), median of 3 after one warm-up.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    text = "\n".join(header + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
