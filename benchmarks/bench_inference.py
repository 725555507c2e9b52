"""Whole-volume inference: our batched predictor against the official one-slice-per-forward loop.

The official `test_single_volume` zooms each slice to the input size (cubic), runs the network
on that one slice, takes the argmax and zooms the label map back (nearest). Ours runs the same
steps with slices batched through the network. Both run here, in the same process, on the
same model and volume; the script checks that the predictions are identical and prints the
medians and the ratio.

    python benchmarks/bench_inference.py [--model swinunet] [--slices 24] [--size 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy import ndimage

from bench.engine.inference import predict_volume
from bench.env import cpu_name
from models import create_model


@torch.no_grad()
def official_loop(model: torch.nn.Module, image: np.ndarray, input_size: int) -> np.ndarray:
    """The official procedure, written out: one slice per forward pass."""
    model.eval()
    out = np.zeros(image.shape, dtype=np.uint8)
    for i, s in enumerate(image):
        h, w = s.shape
        x = ndimage.zoom(s, (input_size / h, input_size / w), order=3)
        logits = model(torch.from_numpy(x.astype(np.float32))[None, None])
        lab = logits.argmax(1)[0].numpy().astype(np.uint8)
        out[i] = ndimage.zoom(lab, (h / input_size, w / input_size), order=0)
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="swinunet")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--slices", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=9, img_size=args.input_size).eval()
    image = np.random.default_rng(0).random((args.slices, args.size, args.size)).astype(np.float32)
    image = ndimage.gaussian_filter(image, 3)  # smooth, CT-like values rather than white noise

    t_ref, ref = timed(lambda: official_loop(model, image, args.input_size), args.repeats)
    t_ours, ours = timed(lambda: predict_volume(model, image, args.input_size, args.batch, "nearest-label"),
                         args.repeats)
    print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"volume {args.slices} x {args.size} x {args.size}, model {args.model} at {args.input_size}, "
          f"batch {args.batch}, {args.repeats} repeats after one warm-up")
    print(f"official one-slice loop : median {t_ref:.2f} s")
    print(f"ours, batched           : median {t_ours:.2f} s")
    print(f"ratio (official / ours) : {t_ref / t_ours:.2f}x; identical predictions: {np.array_equal(ref, ours)}")


if __name__ == "__main__":
    main()
