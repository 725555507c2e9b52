"""Time one Swin-Unet training step (forward + backward + SGD step) on the CPU: ours vs the official network.

    python benchmarks/bench_swinunet_step.py \
        --official /path/to/networks/swin_transformer_unet_skip_expand_decoder_sys.py

The official file (HuCaoFighting/Swin-Unet @ 7d80541) may also come from SEGBENCH_OFFICIAL_SWINUNET; it needs
einops. Without it only our network is timed. Both networks get the same weights and inputs; the repeats
alternate between them so background load drifts hit both alike. Prints the machine, per-network
medians and the ratio ours / official.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.env import cpu_name  # noqa: E402
from models import create_model  # noqa: E402


class OfficialGray(nn.Module):
    """The official SwinUnet wrapper's forward: repeat a gray input to RGB, run the network."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.swin_unet = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.swin_unet(x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x)


def build_official(path: str, img_size: int, num_classes: int) -> nn.Module:
    spec = importlib.util.spec_from_file_location("official_swinunet_sys", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = module.SwinTransformerSys(img_size=img_size, patch_size=4, in_chans=3, num_classes=num_classes,
                                        embed_dim=96, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                        mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.2, ape=False, patch_norm=True)
    return OfficialGray(network)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One training step as the official trainer takes it (SGD, momentum 0.9, weight decay 1e-4)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", default=os.environ.get("SEGBENCH_OFFICIAL_SWINUNET"),
                    help="path to the official swin_transformer_unet_skip_expand_decoder_sys.py")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {cpu_name()} | {os.cpu_count()} logical CPUs | torch threads {torch.get_num_threads()} | "
          f"torch {torch.__version__} | python {platform.python_version()} | {platform.system()} {platform.release()}")
    print(f"step: Swin-Unet tiny, 9 classes, {args.batch} x 1 x {args.img_size} x {args.img_size}, "
          f"forward + CE backward + SGD; warm-up {args.warmup}, repeats {args.repeats}")

    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, args.img_size, args.img_size)
    y = torch.randint(0, 9, (args.batch, args.img_size, args.img_size))
    models: dict[str, nn.Module] = {"ours": create_model("swinunet", num_classes=9, img_size=args.img_size)}
    if args.official:
        try:
            official = build_official(args.official, args.img_size, 9)
            # same weights in both (ours ignores the official's derived buffers)
            models["ours"].load_state_dict({k: v for k, v in official.swin_unet.state_dict().items()
                                            if k in models["ours"].state_dict()})
            models["official"] = official
        except Exception as e:  # a failure is a row, not a crash: still time ours
            print(f"official: could not build ({type(e).__name__}: {e})")
    else:
        print("official: not given (--official or SEGBENCH_OFFICIAL_SWINUNET); timing ours only")

    steps = {name: make_step(m, x, y) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    for _ in range(args.repeats):  # alternate so load changes affect both
        for name, step in steps.items():
            times[name].append(step())

    for name, ts in times.items():
        print(f"{name:9s} median {statistics.median(ts):.3f} s/step  "
              f"(min {min(ts):.3f}, max {max(ts):.3f}, n={len(ts)})")
    if "official" in times:
        ratio = statistics.median(times["ours"]) / statistics.median(times["official"])
        print(f"ratio ours / official: {ratio:.3f}")


if __name__ == "__main__":
    main()
