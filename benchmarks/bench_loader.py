"""Training data pipeline: samples/s and peak memory (PSS of the whole process tree) per worker count.

Three pipelines read the same Synapse-sized synthetic set (default 600 slices of 512 x 512, the
official file layout) and make 224 x 224 training batches of 24 with the official augmentation:

- ours: ``bench.data.sampling.training_loader``, exactly what training uses (every item read from
  its file; the OS page cache holds the files once for all workers);
- official: the official Swin-Unet pipeline written out (Synapse_dataset + RandomGenerator: one
  ``np.load`` per item, global RNG draws, a shuffling DataLoader), the reference;
- previous (``--previous``): ours as it was before, with a per-process dict cache of every slice read
  (float32 image, int64 label), which each worker fills on its own.

Each (pipeline, workers) measurement runs in a fresh child process; the parent samples the PSS of
that child and all its descendants (``bench.engine.memory.tree_pss_mb``, as run manifests do) every
100 ms and keeps the peak.
Samples/s are counted after the first batch (worker start-up excluded) over ``--epochs`` epochs.
Every measurement is repeated ``--repeats`` times, the pipelines taking turns, after one untimed
warm-up pass over the files (so that every pipeline finds them in the page cache); the median is
printed, with the load average, since samples/s depend on what else the machine runs.

    python benchmarks/bench_loader.py [--slices 600] [--size 512] [--workers 0,2,4] [--repeats 3] [--previous]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.data.sampling import TrainSlices
from bench.engine.memory import tree_pss_mb

INPUT, BATCH, SEED = 224, 24, 1234


# --- the data ------------------------------------------------------------------------------------

def make_slices(root: Path, n: int, size: int) -> list[str]:
    """``n`` CT-like slices (smooth image in [0, 1], labels 0..8) in the official train_npz layout."""
    from scipy import ndimage

    (root / "train_npz").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((size, size)), 8)
    yy, xx = np.mgrid[:size, :size]
    names = []
    for i in range(n):
        image = np.clip(base + 0.05 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)
        cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
        label = ((np.hypot(xx - cx, yy - cy) / (size / 8)).astype(np.int64).clip(0, 8)).astype(np.uint8)
        names.append(f"case{i // 100:04d}_slice{i % 100:03d}")
        np.savez(root / "train_npz" / f"{names[-1]}.npz", image=image, label=label)
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "train.txt").write_text("".join(f"{s}\n" for s in names))
    return names


# --- the official pipeline, written out (the reference) -------------------------------------------

class OfficialSlices:
    """The official Synapse_dataset: the list file's names, one ``np.load`` per item, then the transform."""

    def __init__(self, root: Path):
        self.root = root
        self.names = (root / "lists" / "train.txt").read_text().split()

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        data = np.load(self.root / "train_npz" / f"{self.names[i]}.npz")
        return official_transform({"image": data["image"], "label": data["label"]})


def official_transform(sample: dict) -> dict:
    """The official RandomGenerator: rot90 + flip with p 0.5, else a rotation with p 0.5; cubic zoom."""
    import torch
    from scipy import ndimage

    image, label = sample["image"], sample["label"]
    if random.random() > 0.5:
        k, axis = np.random.randint(0, 4), np.random.randint(0, 2)
        image = np.flip(np.rot90(image, k), axis=axis).copy()
        label = np.flip(np.rot90(label, k), axis=axis).copy()
    elif random.random() > 0.5:
        angle = np.random.randint(-20, 20)
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        label = ndimage.rotate(label, angle, order=0, reshape=False)
    x, y = image.shape
    if (x, y) != (INPUT, INPUT):
        image = ndimage.zoom(image, (INPUT / x, INPUT / y), order=3)
        label = ndimage.zoom(label, (INPUT / x, INPUT / y), order=0)
    return {"image": torch.from_numpy(image.astype(np.float32)).unsqueeze(0),
            "label": torch.from_numpy(label.astype(np.float32)).long()}


def _official_worker_init(worker_id: int) -> None:
    random.seed(SEED + worker_id)


# --- one measurement (in a child process) ---------------------------------------------------------

def _dataset(root: Path):
    from bench.data.organs import SYNAPSE_ORGANS
    from bench.data.synapse import Dataset

    names = (root / "lists" / "train.txt").read_text().split()
    return Dataset("bench", root, names, [], SYNAPSE_ORGANS)


def _loader(kind: str, root: Path, workers: int, epochs: int):
    import torch

    from bench.data import sampling
    from bench.protocol import Augmentation

    if kind == "official":
        random.seed(SEED)
        np.random.seed(SEED)
        torch.manual_seed(SEED)
        loader = torch.utils.data.DataLoader(OfficialSlices(root), batch_size=BATCH, shuffle=True,
                                             num_workers=workers, worker_init_fn=_official_worker_init)
        return (b for _ in range(epochs) for b in loader)
    ds = _dataset(root)
    steps = epochs * -(-len(ds.train_slices) // BATCH)
    loader = sampling.training_loader(ds, INPUT, Augmentation(), BATCH, SEED, 0, steps, workers)
    if kind == "previous":  # the same batches and workers over the earlier dataset class
        loader = torch.utils.data.DataLoader(PreviousSlices(ds, INPUT, Augmentation(), SEED),
                                             batch_sampler=loader.batch_sampler, num_workers=workers,
                                             worker_init_fn=loader.worker_init_fn)
    return iter(loader)


class PreviousSlices(TrainSlices):
    """The pipeline as it was before: every slice read kept in a dict (float32 image, int64 label), in
    every worker."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._cache: dict = {}

    def _raw(self, index: int):
        if index not in self._cache:
            image, label = super()._raw(index)
            self._cache[index] = image, label.astype(np.int64)
        return self._cache[index]


def child(kind: str, root: Path, workers: int, epochs: int) -> None:
    """Run one pipeline for ``epochs`` epochs; print samples/s (after the first batch) as JSON."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: on purpose
    batches = _loader(kind, root, workers, epochs)
    first = next(batches)
    n = 0
    t0 = time.perf_counter()
    for b in batches:
        n += len(b["image"] if isinstance(b, dict) else b[0])
    seconds = time.perf_counter() - t0
    shape = tuple((first["image"] if isinstance(first, dict) else first[0]).shape)
    print(json.dumps({"samples": n, "seconds": seconds, "batch_shape": shape}))


# --- the parent: process-tree memory ----------------------------------------------------------------

def measure(kind: str, root: Path, workers: int, epochs: int) -> dict:
    """Samples/s and peak PSS (MB) of one fresh child process tree."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, "--root", str(root), "--workers",
                             str(workers), "--epochs", str(epochs)], stdout=subprocess.PIPE, text=True)
    peak = [0]

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss_mb(proc.pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    out, _ = proc.communicate()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} with {workers} workers failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {"samples_per_s": result["samples"] / result["seconds"], "peak_pss_mb": peak[0],
            "batch_shape": result["batch_shape"]}


def warm_page_cache(root: Path) -> None:
    for f in sorted((root / "train_npz").iterdir()):
        f.read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", default="0,2,4")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--previous", action="store_true", help="Also measure the earlier per-worker dict cache.")
    ap.add_argument("--data", type=Path, help="Reuse (or create) the synthetic set here instead of a temp folder.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.root, int(args.workers), args.epochs)

    from bench.env import cpu_name

    workers = [int(w) for w in args.workers.split(",")]
    kinds = ["ours", "official"] + (["previous"] if args.previous else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "synapse"
        if not (root / "lists" / "train.txt").exists() or \
                len((root / "lists" / "train.txt").read_text().split()) != args.slices:
            t = time.perf_counter()
            make_slices(root, args.slices, args.size)
            print(f"wrote {args.slices} slices of {args.size} x {args.size} in {time.perf_counter() - t:.0f} s")
        warm_page_cache(root)
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"{args.slices} slices of {args.size} x {args.size} -> batches of {BATCH} "
              f"at {INPUT}, {args.epochs} epochs per measurement, median of {args.repeats}")
        rows = {}
        for w in workers:
            runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
            for _ in range(args.repeats):  # interleaved: a load change on a shared machine hits every pipeline
                for kind in kinds:
                    runs[kind].append(measure(kind, root, w, args.epochs))
            for kind in kinds:
                rows[kind, w] = {k: statistics.median(r[k] for r in runs[kind])
                                 for k in ("samples_per_s", "peak_pss_mb")}
                print(f"  {kind:8s} workers {w}: {rows[kind, w]['samples_per_s']:6.1f} samples/s, peak PSS "
                      f"{rows[kind, w]['peak_pss_mb']:7.0f} MB  (runs: "
                      + ", ".join(f"{r['samples_per_s']:.1f}/{r['peak_pss_mb']:.0f}" for r in runs[kind]) + ")",
                      flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print()
    print("| workers | " + " | ".join(f"{k} samples/s | {k} peak PSS (MB)" for k in kinds)
          + " | samples/s ours / official |")
    print("| --- " * (2 + 2 * len(kinds)) + "|")
    for w in workers:
        cells = [f"{rows[k, w]['samples_per_s']:.1f} | {rows[k, w]['peak_pss_mb']:,.0f}" for k in kinds]
        ratio = rows["ours", w]["samples_per_s"] / rows["official", w]["samples_per_s"]
        print(f"| {w} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
