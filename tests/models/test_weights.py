"""Weight loading: checkpoint formats round-trip, clear errors, and parity with the official Swin-Unet.

The synthetic tests build their checkpoints from tiny models. The parity tests need the official
network file (HuCaoFighting/Swin-Unet @ 7d80541, networks/swin_transformer_unet_skip_expand_decoder_sys.py)
named by the environment variable SEGBENCH_OFFICIAL_SWINUNET, and einops importable; they skip otherwise.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from models import create_model
from models.weights import load_weights

SIZE = 64
NANO = dict(img_size=SIZE, num_classes=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def _nano(seed: int, name: str = "swinunet-nano", **knobs) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **{**NANO, **knobs}).eval()


def _same(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module.swin_unet.", "swin_unet.", "safetensors"])
def test_round_trip_formats(tmp_path: Path, wrap: str) -> None:
    src, dst = _nano(0), _nano(1)
    state = src.state_dict()
    path = tmp_path / "w.pth"
    if wrap in ("model", "state_dict"):
        torch.save({wrap: state, "epoch": 3}, path)
    elif wrap.endswith("."):
        torch.save({wrap + k: v for k, v in state.items()}, path)
    elif wrap == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    assert not _same(src, dst)
    report = load_weights(dst, path)
    assert _same(src, dst)
    assert dst.pretrained_from == str(path) and report.format == "state_dict" and not report.missing


def test_official_buffers_in_file_are_ignored(tmp_path: Path) -> None:
    # official checkpoints also store the buffers our timm blocks derive from the geometry
    src, dst = _nano(0), _nano(1)
    state = {f"swin_unet.{k}": v for k, v in src.state_dict().items()}
    state["swin_unet.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    state["swin_unet.layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    torch.save(state, tmp_path / "w.pth")
    load_weights(dst, tmp_path / "w.pth")
    assert _same(src, dst)


def test_create_model_with_weights_records_source(tmp_path: Path) -> None:
    torch.save(_nano(0, "unet").state_dict(), tmp_path / "unet.pth")
    model = create_model("unet", num_classes=3, weights=str(tmp_path / "unet.pth"))
    assert model.pretrained_from == str(tmp_path / "unet.pth")


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(_nano(0), tmp_path / "nope.pth")


def test_mismatched_keys_are_listed(tmp_path: Path) -> None:
    torch.save(_nano(0).state_dict(), tmp_path / "w.pth")
    expected = r"0 model keys not in the file.*6 file keys not in the model \[concat_back_dim"
    with pytest.raises(ValueError, match=expected):
        load_weights(_nano(1, "swinunet-skip0", embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
                     tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"\.\.\. and \d+ more"):
        load_weights(_nano(1, "unet"), tmp_path / "w.pth")
    other = _nano(1, embed_dim=32)  # same keys, other shapes
    expected = r"shape mismatches .*layers\.0\.blocks\.0\.attn\.proj\.bias \(24,\) vs model \(32,\)"
    with pytest.raises(ValueError, match=expected):
        load_weights(other, tmp_path / "w.pth")
    assert other.pretrained_from is None


def test_non_strict_loads_the_matching_part(tmp_path: Path) -> None:
    src = _nano(0)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    dst = _nano(1, "swinunet-skip0", embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    report = load_weights(dst, tmp_path / "w.pth", strict=False)
    assert "concat_back_dim.1.weight" in report.dropped
    assert torch.equal(dst.layers[2].blocks[0].mlp.fc1.weight, src.layers[2].blocks[0].mlp.fc1.weight)


def _encoder_checkpoint(src: nn.Module, timm_layout: bool = False) -> dict[str, torch.Tensor]:
    """An ImageNet-style Swin encoder checkpoint made from ``src``'s encoder, with a classifier head,
    derived buffers and one shape-mismatched tensor, as in Microsoft's swin_tiny_patch4_window7_224.pth."""
    enc = {k: v.clone() for k, v in src.state_dict().items() if k.split(".")[0] in ("patch_embed", "layers", "norm")}
    enc["head.weight"], enc["head.bias"] = torch.randn(1000, 192), torch.randn(1000)
    enc["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    enc["layers.1.blocks.0.attn.relative_position_bias_table"] = torch.randn(169, 2)  # a 7x7 window table
    if timm_layout:
        enc = {k.replace(f"layers.{i}.downsample", f"layers.{i + 1}.downsample"): v
               for k, v in enc.items() for i in [int(k.split(".")[1]) if k.startswith("layers.") else -9]}
    return enc


@pytest.mark.parametrize("timm_layout", [False, True])
def test_imagenet_encoder_is_mirrored_into_decoder(tmp_path: Path, timm_layout: bool) -> None:
    src, dst = _nano(0), _nano(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    torch.save({"model": _encoder_checkpoint(src, timm_layout)}, tmp_path / "swin_tiny.pth")
    report = load_weights(dst, tmp_path / "swin_tiny.pth")
    got, want = dst.state_dict(), src.state_dict()
    assert report.format == "swin_imagenet" and dst.pretrained_from == str(tmp_path / "swin_tiny.pth")
    assert torch.equal(got["layers.0.downsample.reduction.weight"], want["layers.0.downsample.reduction.weight"])
    assert torch.equal(got["norm.weight"], want["norm.weight"])
    for i in range(3):  # layers.{i} -> layers_up.{3-i}
        mirrored = got[f"layers_up.{3 - i}.blocks.0.mlp.fc1.weight"]
        assert torch.equal(mirrored, want[f"layers.{i}.blocks.0.mlp.fc1.weight"])
    for k in ("layers.1.blocks.0.attn.relative_position_bias_table",  # shape mismatch: dropped
              "layers_up.2.blocks.0.attn.relative_position_bias_table",  # its mirror too
              "concat_back_dim.1.weight", "up.expand.weight", "output.weight"):  # decoder only
        assert torch.equal(got[k], before[k]), k
        assert k in report.missing
    assert "head.weight" in report.dropped


# --- parity with the official network ------------------------------------------------------------

def _official():
    """The official ``networks`` package (network file + its SwinUnet wrapper beside it), or skip."""
    path = os.environ.get("SEGBENCH_OFFICIAL_SWINUNET")
    if not path:
        pytest.skip("set SEGBENCH_OFFICIAL_SWINUNET to the official "
                    "networks/swin_transformer_unet_skip_expand_decoder_sys.py (HuCaoFighting/Swin-Unet @ 7d80541)")
    path = Path(path)
    if not path.is_file():
        pytest.skip(f"SEGBENCH_OFFICIAL_SWINUNET={path} is not a file")
    pytest.importorskip("einops", reason="the official Swin-Unet code imports einops")
    if "official_networks" not in sys.modules:  # the wrapper imports the network relatively
        package = types.ModuleType("official_networks")
        package.__path__ = [str(path.parent)]
        sys.modules["official_networks"] = package
    network = importlib.import_module(f"official_networks.{path.stem}")
    wrapper = (importlib.import_module("official_networks.vision_transformer")
               if (path.parent / "vision_transformer.py").is_file() else None)
    return network, wrapper


def _perturbed(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # move every weight off its tidy initial value so no mix-up can hide
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _max_diff(ours: nn.Module, ref: nn.Module, img_size: int, repeat: bool) -> float:
    x = torch.rand(2, 1, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the official wrapper repeats gray to RGB itself; the bare network does not
        return (ours(x) - ref(x.repeat(1, 3, 1, 1) if repeat else x)).abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("img_size,window,config", [
    (224, 7, dict(embed_dim=96, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24])),  # the paper's Swin-T
    (128, 4, dict(embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24])),  # our CPU size, auto window
])
def test_matches_official_network(tmp_path: Path, img_size: int, window: int, config: dict) -> None:
    network, _ = _official()
    torch.manual_seed(0)
    ref = _perturbed(network.SwinTransformerSys(
        img_size=img_size, patch_size=4, in_chans=3, num_classes=9, window_size=window, mlp_ratio=4.0,
        qkv_bias=True, drop_path_rate=0.2, ape=False, patch_norm=True, **config))
    # a trained checkpoint of the official SwinUnet wrapper after DataParallel: buffers included
    torch.save({f"module.swin_unet.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "official.pth")
    ours = create_model("swinunet", num_classes=9, in_channels=1, img_size=img_size,
                        weights=str(tmp_path / "official.pth"), **config).eval()
    assert ours.window_size == window
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    rates = [[float(getattr(b.drop_path, "drop_prob", 0.0)) for b in getattr(s, "blocks", [])]
             for s in [*ref.layers, *ref.layers_up]]
    assert rates == [[float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in getattr(s, "blocks", [])]
                     for s in [*ours.layers, *ours.layers_up]]
    diff = _max_diff(ours, ref, img_size, repeat=True)
    assert diff < 1e-4, f"max abs difference {diff:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("img_size,window", [(224, 7), (128, 4)])
def test_imagenet_init_matches_official_load_from(tmp_path: Path, img_size: int, window: int) -> None:
    """Microsoft's encoder checkpoint format through the official ``SwinUnet.load_from`` and ours."""
    network, wrapper = _official()
    if wrapper is None:
        pytest.skip("the official networks/vision_transformer.py is not beside the network file")
    swin = dict(PATCH_SIZE=4, IN_CHANS=3, EMBED_DIM=48, DEPTHS=[2, 2, 2, 2], NUM_HEADS=[3, 6, 12, 24],
                WINDOW_SIZE=window, MLP_RATIO=4.0, QKV_BIAS=True, QK_SCALE=None, APE=False, PATCH_NORM=True)
    config = types.SimpleNamespace(
        DATA=types.SimpleNamespace(IMG_SIZE=img_size), TRAIN=types.SimpleNamespace(USE_CHECKPOINT=False),
        MODEL=types.SimpleNamespace(DROP_RATE=0.0, DROP_PATH_RATE=0.2, SWIN=types.SimpleNamespace(**swin),
                                    PRETRAIN_CKPT=str(tmp_path / "swin_imagenet.pth")))
    # an ImageNet-style encoder trained at 224 with 7x7 windows, classifier head and buffers included
    torch.manual_seed(0)
    encoder = _perturbed(network.SwinTransformerSys(img_size=224, window_size=7, embed_dim=48, num_classes=9))
    imagenet = {k: v for k, v in encoder.state_dict().items() if k.split(".")[0] in ("patch_embed", "layers", "norm")}
    imagenet["head.weight"], imagenet["head.bias"] = torch.randn(1000, 384), torch.randn(1000)
    torch.save({"model": imagenet}, tmp_path / "swin_imagenet.pth")

    torch.manual_seed(1)
    ref = wrapper.SwinUnet(config, img_size=img_size, num_classes=9)
    initial = {k: v.clone() for k, v in ref.swin_unet.state_dict().items()}
    ref.load_from(config)
    official = ref.swin_unet.state_dict()
    ours = create_model("swinunet", num_classes=9, img_size=img_size, embed_dim=48)
    report = load_weights(ours, tmp_path / "swin_imagenet.pth")
    own = ours.state_dict()
    # the same keys are loaded (the file's values are perturbed, so a loaded key always changes) ...
    assert {k for k in own if not torch.equal(initial[k], official[k])} == set(own) - set(report.missing)
    # ... and with the untouched layers made equal, the networks agree
    ours.load_state_dict({k: official[k] if k in report.missing else own[k] for k in own})
    diff = _max_diff(ours.eval(), ref.eval(), img_size, repeat=False)
    assert diff < 1e-4, f"max abs difference {diff:.3g}"
    assert (window != 7) == any("relative_position_bias_table" in k for k in report.missing)
