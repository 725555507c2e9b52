"""Wall time of one sweep through each executor: local, Slurm (``--max-parallel 2``) and Ray.

The sweep is 2 models x 2 seeds (``--models``), each command run from a fresh results folder,
``--repeats`` times per executor after one warm-up (which also builds the dataset). Prints the
median per executor and its ratio to the local median measured in the same run, and checks
that every executor wrote the same metrics. Needs a reachable Slurm (``sinfo`` answers; e.g.
``python3 .ci/minislurm.py start DIR`` as root and the SLURM_CONF it prints) and Ray.

    python benchmarks/bench_executors.py [--models swinunet-nano,smp-linknet-mobilenet_v2]
        [--protocol smoke] [--iterations N] [--repeats 3] [--threads N]

Each run uses its protocol's ``threads`` (smoke: 1) whatever the executor; ``--threads N`` runs
another recipe (``--set threads=N``: ``smoke@threads=N``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.data.synthetic import generate
from bench.env import cpu_name
from bench.protocol import load_protocol

EXECUTORS = {"local": [], "slurm": ["--executor", "slurm", "--max-parallel", "2", "--wait"],
             "ray": ["--executor", "ray"]}


def run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    return seconds


def metrics(results: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in sorted(results.glob("*/*/*/seed*/metrics.parquet"))]
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="swinunet-nano,smp-linknet-mobilenet_v2")
    ap.add_argument("--protocol", default="smoke")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (--set threads=N; "
                    "default: the protocol's)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-executors-"))
    data = generate.generate(work / "tiny", seed=0, size=64, train_cases=("0005", "0006"), test_cases=("0001",))
    env = dict(os.environ, COLUMNS="200")
    base = [sys.executable, "-m", "bench", "run", "--models", args.models, "--seeds", "0,1", "--protocol",
            args.protocol, "--dataset", str(data), "--drop-weights"]
    if args.iterations:
        base += ["--iterations", str(args.iterations)]
    if args.threads:
        base += ["--set", f"threads={args.threads}"]
    threads = args.threads or load_protocol(args.protocol).threads
    times: dict[str, list[float]] = {name: [] for name in EXECUTORS}
    first: dict[str, pd.DataFrame] = {}
    try:
        for i in range(args.repeats + 1):  # round 0 is the warm-up
            for name, flags in EXECUTORS.items():
                out = work / f"{name}-{i}"
                where = ["--results", str(out / "results"), "--reports", str(out / "reports")]
                seconds = run([*base, *where, *flags], env)
                first.setdefault(name, metrics(out / "results"))
                shutil.rmtree(out)
                if i:
                    times[name].append(seconds)
                print(f"round {i} {name}: {seconds:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = all(first[name].equals(first["local"]) for name in EXECUTORS)
    local = statistics.median(times["local"])
    print(f"\n{cpu_name()}, {os.cpu_count()} logical cores, {threads} torch thread(s) per run; "
          f"{args.models} x seeds 0,1 under {args.protocol}; median of {args.repeats}; metrics identical: {same}")
    print("| executor | median s | runs | ratio to local |\n| --- | --- | --- | --- |")
    for name in EXECUTORS:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.1f} | {', '.join(f'{t:.1f}' for t in times[name])} | {local / med:.2f}x |")
    if not same:
        raise SystemExit("the executors wrote different metrics")


if __name__ == "__main__":
    main()
