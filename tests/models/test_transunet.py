"""TransUNet: the skip knob, Google's npz and official trained checkpoints, parity with the official network.

The npz tests write a synthetic checkpoint in the layout of Google's ``R50+ViT-B_16.npz`` (the keys the
official ``VisionTransformer.load_from`` reads, plus the class token and classifier it ignores) from our
own model's weights; the trained-checkpoint test renames our weights into the official network's keys. The
parity tests need the official network file (Beckschen/TransUNet @ 02ef001,
networks/vit_seg_modeling.py, with vit_seg_configs.py and vit_seg_modeling_resnet_skip.py beside it)
named by SEGBENCH_OFFICIAL_TRANSUNET; it skips otherwise. ``ml_collections`` is stubbed if missing.
"""
from __future__ import annotations

import copy
import importlib
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from official_reference import stub_ml_collections

from models import create_model
from models.weights import load_weights

SIZE = 64
# narrow and shallow: the mapping and wiring are what is tested, not the width
SMALL = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, resnet_layers=(2, 1, 1))


pytestmark = pytest.mark.usefixtures("one_thread")


def _small(seed: int, name: str = "transunet", **knobs) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=3, **{"img_size": SIZE, **SMALL, **knobs}).eval()


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_skip_connections_deepest_first(n: int) -> None:
    m = _small(0, f"transunet-skip{n}")
    fused = [b.conv1[0].in_channels - c for b, c in zip(m.decoder.blocks, (512, 256, 128, 64), strict=False)]
    assert fused == [512, 256, 64, 0][:n] + [0] * (4 - n)  # 1/8, 1/4, 1/2; the last block never fuses
    x = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        _, skips = m.forward_cnn(x.repeat(1, 3, 1, 1))
        assert [tuple(s.shape[1:]) for s in skips] == [(512, 8, 8), (256, 16, 16), (64, 32, 32)]
        assert m(x).shape == (1, 3, SIZE, SIZE)


def test_quarter_scale_skip_is_zero_padded_as_official() -> None:
    # the unpadded stem pool gives 15 x 15 at 1/4 of 64; the skip is padded with a zero row and column
    m = _small(0)
    with torch.no_grad():
        _, (_, quarter, _) = m.forward_cnn(torch.rand(1, 3, SIZE, SIZE))
    assert quarter.shape[-1] == 16 and not quarter[..., -1, :].any() and not quarter[..., :, -1].any()
    assert quarter[..., :15, :15].abs().sum() > 0


def test_knob_errors() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("transunet-tiny", img_size=100)
    with pytest.raises(ValueError, match="0..3"):
        create_model("transunet-tiny", img_size=SIZE, skip_connections=4)


# --- Google's npz layout --------------------------------------------------------------------------

def to_google_npz(model: nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """``model``'s encoder in the key layout of Google's R50+ViT-B_16.npz (written independently of
    models.weights, from the official load_from): HWIO kernels, per-head attention kernels, a class token
    whose position entry comes first, and a classifier head nobody loads."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    hidden = sd["norm.weight"].shape[0]
    out: dict[str, torch.Tensor] = {
        "conv_root/kernel": sd["backbone.stem.conv.weight"].permute(2, 3, 1, 0),
        "gn_root/scale": sd["backbone.stem.norm.weight"], "gn_root/bias": sd["backbone.stem.norm.bias"],
        "embedding/kernel": sd["patch_embed.weight"].permute(2, 3, 1, 0), "embedding/bias": sd["patch_embed.bias"],
        "Transformer/posembed_input/pos_embedding": torch.cat([torch.randn(1, 1, hidden, generator=g),
                                                               sd["pos_embed"]], dim=1),
        "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
        "cls": torch.randn(1, 1, hidden, generator=g),
        "head/kernel": torch.randn(hidden, 10, generator=g), "head/bias": torch.randn(10, generator=g),
    }
    for i, stage in enumerate(model.backbone.stages):
        for j, block in enumerate(stage.blocks):
            ours, src = f"backbone.stages.{i}.blocks.{j}.", f"block{i + 1}/unit{j + 1}/"
            pairs = [(f"conv{r}", f"gn{r}", f"conv{r}", f"norm{r}") for r in (1, 2, 3)]
            if block.downsample is not None:
                pairs.append(("conv_proj", "gn_proj", "downsample.conv", "downsample.norm"))
            for conv, gn, our_conv, our_norm in pairs:
                out[f"{src}{conv}/kernel"] = sd[f"{ours}{our_conv}.weight"].permute(2, 3, 1, 0)
                out[f"{src}{gn}/scale"] = sd[f"{ours}{our_norm}.weight"]
                out[f"{src}{gn}/bias"] = sd[f"{ours}{our_norm}.bias"]
    for i, block in enumerate(model.blocks):
        ours, src = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        heads = block.attn.num_heads
        q, k, v = sd[ours + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = sd[ours + "attn.qkv.bias"].chunk(3)
        mha = f"{src}MultiHeadDotProductAttention_1/"
        for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            out[f"{mha}{name}/kernel"] = w.T.reshape(hidden, heads, -1)
            out[f"{mha}{name}/bias"] = b.reshape(heads, -1)
        out[f"{mha}out/kernel"] = sd[ours + "attn.proj.weight"].T.reshape(heads, -1, hidden)
        out[f"{mha}out/bias"] = sd[ours + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{src}{ln}/scale"], out[f"{src}{ln}/bias"] = sd[f"{ours}{norm}.weight"], sd[f"{ours}{norm}.bias"]
        for r in (0, 1):
            out[f"{src}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{ours}mlp.fc{r + 1}.weight"].T
            out[f"{src}MlpBlock_3/Dense_{r}/bias"] = sd[f"{ours}mlp.fc{r + 1}.bias"]
    return {k: v.contiguous().numpy() for k, v in out.items()}


def _perturbed(model: nn.Module, scale: float = 0.05) -> nn.Module:
    with torch.no_grad():  # move every weight off its tidy initial value so no mix-up can hide
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _decoder(key: str) -> bool:
    return key.startswith(("decoder.", "segmentation_head."))


def test_npz_round_trip(tmp_path: Path) -> None:
    src, dst = _perturbed(_small(0)), _small(1)
    np.savez(tmp_path / "R50+ViT-B_16.npz", **to_google_npz(src))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_weights(dst, tmp_path / "R50+ViT-B_16.npz")
    got, want = dst.state_dict(), src.state_dict()
    assert report.format == "vit_npz" and dst.pretrained_from == str(tmp_path / "R50+ViT-B_16.npz")
    for k in got:  # the encoder comes from the file, the decoder stays as initialised
        assert torch.equal(got[k], before[k] if _decoder(k) else want[k]), k
    assert set(report.missing) == {k for k in got if _decoder(k)}
    assert report.dropped == ["cls", "head/bias", "head/kernel"]
    dst.load_state_dict({k: v for k, v in want.items() if _decoder(k)}, strict=False)
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_npz_position_grid_is_resized(tmp_path: Path) -> None:
    # a 224 checkpoint (14 x 14 grid + class token) into a 64 x 64 model (4 x 4): zoomed, not dropped
    src = _perturbed(_small(0, img_size=224))
    np.savez(tmp_path / "w.npz", **to_google_npz(src))
    dst = _small(1)
    report = load_weights(dst, tmp_path / "w.npz")
    assert "pos_embed" not in report.missing and dst.pos_embed.shape == (1, 16, SMALL["hidden_size"])
    grid = src.pos_embed.detach().reshape(14, 14, -1)
    assert torch.allclose(dst.pos_embed[0, 0], grid[0, 0]) and torch.allclose(dst.pos_embed[0, -1], grid[-1, -1])


def to_official_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our TransUNet's weights under the official ``VisionTransformer`` state-dict keys."""
    hybrid, enc = "transformer.embeddings.hybrid_model.", "transformer.encoder."
    names = {"norm1": "gn1", "norm2": "gn2", "norm3": "gn3",
             "downsample.conv": "downsample", "downsample.norm": "gn_proj"}
    out = {}
    for k, v in model.state_dict().items():
        parts = k.split(".")
        if k.startswith("backbone.stem."):
            out[hybrid + "root." + {"conv": "conv", "norm": "gn"}[parts[2]] + "." + parts[3]] = v
        elif k.startswith("backbone.stages."):
            layer = ".".join(parts[5:-1])
            unit = f"{hybrid}body.block{int(parts[2]) + 1}.unit{int(parts[4]) + 1}."
            out[f"{unit}{names.get(layer, layer)}.{parts[-1]}"] = v
        elif k.startswith("patch_embed."):
            out["transformer.embeddings.patch_embeddings." + parts[1]] = v
        elif k == "pos_embed":
            out["transformer.embeddings.position_embeddings"] = v
        elif k.startswith("norm."):
            out[enc + "encoder_norm." + parts[1]] = v
        elif k.startswith("blocks.") and parts[2] == "attn" and parts[3] == "qkv":
            for name, t in zip(("query", "key", "value"), v.chunk(3), strict=False):
                out[f"{enc}layer.{parts[1]}.attn.{name}.{parts[4]}"] = t
        elif k.startswith("blocks."):
            rest = {"norm1": "attention_norm", "norm2": "ffn_norm", "mlp": "ffn", "attn": "attn"}[parts[2]]
            inner = "out" if parts[3] == "proj" else parts[3]
            out[f"{enc}layer.{parts[1]}.{rest}." + (f"{inner}." if parts[2] in ("mlp", "attn") else "") + parts[-1]] = v
        else:
            out[k] = v
    return out


def test_official_trained_checkpoint_round_trip(tmp_path: Path) -> None:
    src, dst = _perturbed(_small(0)), _small(1)
    official = to_official_state(src)
    assert "transformer.encoder.layer.1.attn.value.bias" in official and "transformer.embeddings.hybrid_model." \
        "body.block1.unit1.gn_proj.weight" in official
    torch.save({f"module.{k}": v for k, v in official.items()}, tmp_path / "TU_Synapse224.pth")  # DataParallel
    report = load_weights(dst, tmp_path / "TU_Synapse224.pth")
    assert report.format == "transunet_official" and not report.missing and not report.dropped
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # a file from another configuration: the mismatches are listed, nothing half-loaded is kept quiet
    with pytest.raises(ValueError, match=r"does not match TransUNet: 0 shape mismatches.*model keys not in the file "
                                         r"\[backbone\.stages\.0\.blocks\.2\."):
        load_weights(_small(1, resnet_layers=(3, 1, 1)), tmp_path / "TU_Synapse224.pth")


def test_npz_errors(tmp_path: Path) -> None:
    npz = to_google_npz(_small(0))
    np.savez(tmp_path / "vit.npz", **{k: v for k, v in npz.items() if not k.startswith(("conv_root", "gn_root"))})
    with pytest.raises(ValueError, match="pure ViT"):
        load_weights(_small(1), tmp_path / "vit.npz")
    np.savez(tmp_path / "w.npz", **npz)
    with pytest.raises(ValueError, match="TransUNet"):
        load_weights(create_model("swinunet-nano", img_size=SIZE), tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_weights(_small(1), tmp_path / "nope.npz")
    # a wider model than the file: the ResNet loads, every ViT tensor is reported as a shape mismatch
    report = load_weights(_small(1, hidden_size=64), tmp_path / "w.npz")
    assert "blocks.0.attn.qkv.weight" in report.missing and "blocks.0.attn.qkv.weight" in report.dropped
    assert "backbone.stem.conv.weight" not in report.missing


# --- parity with the official network ------------------------------------------------------------

def _official():
    path = os.environ.get("SEGBENCH_OFFICIAL_TRANSUNET")
    if not path:
        pytest.skip("set SEGBENCH_OFFICIAL_TRANSUNET to the official networks/vit_seg_modeling.py "
                    "(Beckschen/TransUNet @ 02ef001)")
    path = Path(path)
    if not path.is_file():
        pytest.skip(f"SEGBENCH_OFFICIAL_TRANSUNET={path} is not a file")
    stub_ml_collections()
    if "official_transunet" not in sys.modules:  # the network imports its configs relatively
        package = types.ModuleType("official_transunet")
        package.__path__ = [str(path.parent)]
        sys.modules["official_transunet"] = package
    return importlib.import_module(f"official_transunet.{path.stem}")


def official_transunet(img_size: int, num_classes: int, n_skip: int) -> nn.Module:
    """The official R50-ViT-B_16 network, configured as its train.py does."""
    network = _official()
    config = copy.deepcopy(network.CONFIGS["R50-ViT-B_16"])
    config.n_classes, config.n_skip = num_classes, n_skip
    config.patches.grid = (img_size // 16, img_size // 16)
    return network.VisionTransformer(config, img_size=img_size, num_classes=num_classes)


@pytest.mark.slow
@pytest.mark.parametrize("img_size,n_skip", [(224, 3), (128, 1)])
def test_matches_official_network(tmp_path: Path, img_size: int, n_skip: int) -> None:
    """The same npz through the official ``load_from`` and our loader, the same decoder: same output."""
    torch.manual_seed(0)
    ref = official_transunet(img_size, 9, n_skip)
    ours = create_model(f"transunet-skip{n_skip}", num_classes=9, img_size=img_size)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    # a 224 checkpoint with perturbed weights: at 128 the position grid is zoomed by both loaders
    source = ours if img_size == 224 else create_model("transunet", num_classes=9)
    np.savez(tmp_path / "R50+ViT-B_16.npz", **to_google_npz(_perturbed(source, 0.2)))
    ref.load_from(dict(np.load(tmp_path / "R50+ViT-B_16.npz")))
    report = load_weights(ours, tmp_path / "R50+ViT-B_16.npz")
    _perturbed(ref.decoder), _perturbed(ref.segmentation_head)
    decoder = {k: v for k, v in ref.state_dict().items() if _decoder(k)}
    assert set(decoder) == {k for k in ours.state_dict() if _decoder(k)} == set(report.missing)
    ours.load_state_dict(decoder, strict=False)
    # in float64: with random weights float32 rounding grows through the 12 blocks to ~1e-3 relative,
    # which would hide a small real difference; the official float32 zero-padding buffer of the 1/4 skip
    # leaves ~1e-7
    x = torch.rand(2, 1, img_size, img_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        a, b = ours.double().eval()(x), ref.double().eval()(x)
    diff = (a - b).abs().max().item() / b.abs().max().item()
    assert diff < 1e-5, f"max abs difference {diff:.3g} of the largest output"


@pytest.mark.slow
@pytest.mark.parametrize("img_size,n_skip", [(224, 3), (96, 2)])
def test_official_trained_checkpoint_gives_the_official_outputs(tmp_path: Path, img_size: int, n_skip: int) -> None:
    """A trained official checkpoint (the whole network, DataParallel-prefixed) loads into ours exactly."""
    torch.manual_seed(0)
    ref = _perturbed(official_transunet(img_size, 9, n_skip), 0.02)
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "TU_Synapse.pth")
    ours = create_model(f"transunet-skip{n_skip}", num_classes=9, img_size=img_size,
                        weights=str(tmp_path / "TU_Synapse.pth"))
    assert ours.weights_report.format == "transunet_official" and not ours.weights_report.missing
    x = torch.rand(2, 1, img_size, img_size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        a, b = ours.double().eval()(x), ref.double().eval()(x)
    diff = (a - b).abs().max().item() / b.abs().max().item()
    assert diff < 1e-5, f"max abs difference {diff:.3g} of the largest output"
