"""Speed of ``bench.engine.metrics.evaluate_case`` against the official medpy procedure.

One Synapse-sized case (D x 512 x 512, eight organs) is scored by both in the same run;
the script prints the machine, both medians, their ratio, and checks that the values agree.
The case is the real TotalSegmentator pair (seg-total as reference, seg-total-fast as
prediction, 122 x 101 x 30 at 3 mm) upsampled organ by organ with linear interpolation, so
surfaces stay smooth; without the shared data it falls back to synthetic ellipsoids.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_metrics.py
    PYTHONPATH=. .venv/bin/python benchmarks/bench_metrics.py --convention strict --ref-repeats 1

Exit status 1 when a value differs from medpy by more than 1e-6.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.ndimage import zoom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from bench.data.organs import SYNAPSE_ORGANS  # noqa: E402
from bench.engine.metrics import evaluate_case  # noqa: E402
from bench.engine.metrics_medpy import evaluate_case_medpy, load_totalseg_pair  # noqa: E402

SHARED = Path(os.environ.get("SEGBENCH_SHARED") or Path(__file__).resolve().parents[2] / "shared")
TOTALSEG = SHARED / "data" / "totalseg-example"
SPACING = (2.5, 0.7, 0.7)  # a typical Synapse voxel (mm); only the strict convention uses it
TOLERANCE = 1e-6


def upsample(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each label's mask linearly interpolated to ``shape`` and thresholded at 0.5."""
    factors = [n_out / n_in for n_out, n_in in zip(shape, volume.shape, strict=False)]
    out = np.zeros(shape, dtype=np.uint8)
    for label in SYNAPSE_ORGANS:
        out[zoom((volume == label).astype(np.float32), factors, order=1) >= 0.5] = label
    return out


def synthetic_pair(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eight ellipsoids of organ-like sizes; the prediction's are slightly moved and resized."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    ref = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    for label in SYNAPSE_ORGANS:
        centre = rng.uniform(0.25, 0.75, 3) * shape
        radii = rng.uniform(0.08, 0.3, 3) * shape
        for volume, jitter in ((ref, 0.0), (pred, 0.04)):
            c = centre + rng.normal(0, jitter, 3) * radii
            r = radii * (1 + rng.normal(0, jitter, 3))
            inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r, strict=False)) <= 1
            volume[inside] = label
    return ref, pred


def build_case(depth: int) -> tuple[np.ndarray, np.ndarray, str]:
    shape = (depth, 512, 512)
    if (TOTALSEG / "seg-total.nii.gz").is_file():
        ref, pred, _ = load_totalseg_pair(TOTALSEG)
        return upsample(ref, shape), upsample(pred, shape), "TotalSegmentator pair, upsampled"
    ref, pred = synthetic_pair(shape)
    return ref, pred, "synthetic ellipsoids (shared data absent)"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    import medpy

    return (f"{cpu}; {os.cpu_count()} logical cores ({usable} usable); load average {load}\n"
            f"python {platform.python_version()}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, medpy {getattr(medpy, '__version__', '?')}")


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=90, help="slices (Synapse: 85-198)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of ours")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed runs of medpy")
    parser.add_argument("--convention", choices=["synapse", "strict"], default="synapse")
    parser.add_argument("--threads", type=int, default=None, help="evaluate_case threads")
    args = parser.parse_args()

    print(machine())
    ref, pred, source = build_case(args.depth)
    present = [label for label in SYNAPSE_ORGANS if (ref == label).any()]
    print(f"case: {source}, shape {ref.shape}, {len(present)} organs in the reference, "
          f"convention {args.convention}, threads {args.threads or 'default'}")

    spacing = SPACING
    medpy_spacing = spacing if args.convention == "strict" else None
    ours_fn = lambda: evaluate_case(pred, ref, SYNAPSE_ORGANS, spacing=spacing,  # noqa: E731
                                    convention=args.convention, threads=args.threads)
    medpy_fn = lambda: evaluate_case_medpy(pred, ref, SYNAPSE_ORGANS,  # noqa: E731
                                           spacing=medpy_spacing)

    # Warm-up (imports, allocator, caches): medpy on a subsampled copy, ours on the case.
    evaluate_case_medpy(pred[::3, ::4, ::4], ref[::3, ::4, ::4], SYNAPSE_ORGANS)
    ours_fn()

    ours_times, ours = timed(ours_fn, args.repeats)
    medpy_times, theirs = timed(medpy_fn, args.ref_repeats)

    worst = 0.0
    identical = True
    for metric in ("dice", "hd95"):  # hd95_max is checked against MONAI in tests/engine/test_metrics.py
        a, b = ours[metric].to_numpy(), theirs[metric].to_numpy()
        worst = max(worst, float(np.max(np.abs(a - b))))
        identical &= bool(np.array_equal(a, b))
    ours_median, medpy_median = statistics.median(ours_times), statistics.median(medpy_times)

    print(f"ours : median {ours_median:8.3f} s over {args.repeats} runs "
          f"(min {min(ours_times):.3f}, max {max(ours_times):.3f})")
    print(f"medpy: median {medpy_median:8.3f} s over {args.ref_repeats} runs "
          f"(min {min(medpy_times):.3f}, max {max(medpy_times):.3f})")
    print(f"ratio: {medpy_median / ours_median:.1f}x faster")
    print(f"values: max |ours - medpy| over dice and hd95 = {worst:.3g}"
          f" ({'bit-identical' if identical else 'not bit-identical'})")
    print(ours[["label", "organ", "status", "dice", "hd95", "asd", "nsd"]]
          .to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
