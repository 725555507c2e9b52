"""Contract tests over every registered model, plus the architecture facts we must match.

Models are built at a 64 x 64 input (a multiple of Swin-Unet's and the smp encoders' 32, and the
U-Net's and TransUNet's 16; at 32 the Swin bottleneck is one token, whose position bias gets no
gradient) with 3 classes, and the larger families at a narrow width (CONTRACT_KNOBS): the knob a
variant stands for (skips, upsampling, depth, attention gates, residual encoder) is kept, and the
full-width structure and parameter counts are checked separately at the paper's size. A bad input
size is 68: a multiple of 4 but not of 8, which every network here downsamples by at least.
"""
from __future__ import annotations

import fnmatch

import pytest
import torch
import torch.nn as nn

from models import create_model, is_model, list_models
from models.swinunet import SwinUnet, resolve_window_size

SIZE = 64
NUM_CLASSES = 3
# per-family overrides that keep the contract tests light on a shared CPU
CONTRACT_KNOBS = {
    "swinunet*": dict(embed_dim=24, num_heads=(1, 2, 4, 8)),
    "transunet*": dict(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, resnet_layers=(1, 1, 1)),
    "unet-plain": dict(widths=(8, 16, 32, 64, 128)),
    "attunet": dict(widths=(8, 16, 32, 64, 128)),
    "r50-*": dict(resnet_layers=(1, 1, 1), decoder_channels=(32, 16, 8, 8)),
    "nnunet-*": dict(base_features=8, max_features=64),
    "monai-attentionunet": dict(channels=(8, 16, 32, 64, 128)),
    "monai-swinunetr": dict(feature_size=12),
    "monai-unetr": dict(hidden_size=96, mlp_dim=192, num_heads=2),
}


def _contract_knobs(name: str) -> dict:
    return next((k for pattern, k in CONTRACT_KNOBS.items() if fnmatch.fnmatch(name, pattern)), {})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list_models())
def model(request) -> nn.Module:
    # module scope: pytest groups the tests by model, so each model is built once
    torch.manual_seed(0)
    return create_model(request.param, num_classes=NUM_CLASSES, in_channels=1, img_size=SIZE,
                        **_contract_knobs(request.param))


def _input(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(1))


def test_output_shape_and_finite(model: nn.Module) -> None:
    model.train()
    out = model(_input())
    assert out.shape == (2, NUM_CLASSES, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_every_parameter_gets_gradient(model: nn.Module) -> None:
    # eval mode: stochastic depth may drop a whole block for a tiny batch, which would test luck
    # rather than wiring; gradients flow the same way in eval mode
    model.eval()
    model.zero_grad(set_to_none=True)
    # Nudge every weight off its initial value first: a residual branch whose last norm starts at zero
    # (nnU-Net's ResEnc, as nnunetv2 initialises it) is wired in but passes no gradient at that point.
    # An unused parameter still gets none.
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(1e-3 * torch.randn(p.shape, generator=g).to(p.dtype))
    out = model(_input(batch=1))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("shape", [(1, 1, SIZE + 4, SIZE + 4), (1, 1, SIZE, SIZE + 4), (1, 3, SIZE, SIZE)])
def test_bad_input_raises_clear_error(model: nn.Module, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError) as e:
        model(torch.randn(*shape))
    # the message names what the model got: the whole shape, or the channel count against the expected one
    msg = str(e.value)
    assert str(shape) in msg or (shape[1] == 3 and "got 3" in msg and "1 input channel" in msg), msg


def test_records_pretrained_source(model: nn.Module) -> None:
    assert getattr(model, "pretrained_from", "missing") is None


# --- the facts in shared/reference/synapse-protocol.md -------------------------------------------

def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_swinunet_parameter_count() -> None:
    assert _count(create_model("swinunet", num_classes=9, in_channels=1, img_size=224)) == 27_168_900


def test_unet_parameter_count() -> None:
    assert _count(create_model("unet", num_classes=9, in_channels=1)) == 24_898_953


@pytest.mark.parametrize("name,count", [("transunet", 105_277_081), ("transunet-skip0", 103_765_657)])
def test_transunet_parameter_count(name: str, count: int) -> None:
    # counted on the official R50-ViT-B_16 (n_skip 3 and 0, 9 classes, 224): Beckschen/TransUNet @ 02ef001
    assert _count(create_model(name, num_classes=9, in_channels=1, img_size=224)) == count


def test_smp_names_resolve_without_registration() -> None:
    m = create_model("smp-MAnet-efficientnet-b0", num_classes=NUM_CLASSES, img_size=SIZE)
    assert type(m).__name__ == "MAnet" and m.encoder_name == "efficientnet-b0" and m.pretrained_from is None
    assert is_model("smp-linknet-resnet18") and not is_model("smp-linknet-resnet19")
    assert "smp-unet-resnet34" in list_models("smp-*") and "smp-manet-efficientnet-b0" not in list_models()


@pytest.mark.parametrize("name,match", [
    ("smp-unet3d-resnet34", r"'unet3d' is not an smp architecture.*deeplabv3plus.*unetplusplus"),
    ("smp-unet-resnet19", r"'resnet19' is not an smp encoder; valid encoders: resnet18, resnet34"),
    ("smp-unet", r"'' is not an smp encoder"),
    ("smp-unet-tu-not_a_timm_model", r"tu-<timm model name>"),
    ("transunet-huge", r"unknown model 'transunet-huge'; valid models: .*transunet-tiny.*'smp-\.\.\.'"),
])
def test_unknown_names_explain_themselves(name: str, match: str) -> None:
    with pytest.raises(KeyError, match=match) as info:
        create_model(name)
    assert str(info.value).startswith(f"unknown model '{name}'")


def test_smp_input_checks() -> None:
    with pytest.raises(ValueError, match="divisible by 32, got 100"):
        create_model("smp-unet-resnet34", img_size=100)
    with pytest.raises(ValueError, match="never download"):
        create_model("smp-unet-resnet34", img_size=SIZE, encoder_weights="imagenet")
    # smp's own U-Net would resize a 72 x 72 input silently; every comparison model refuses it
    with pytest.raises(ValueError, match=r"divisible by 32, got \(1, 1, 72, 72\)"):
        create_model("smp-unet-resnet18", img_size=SIZE)(torch.randn(1, 1, 72, 72))


def test_swinunet_official_key_names() -> None:
    keys = set(create_model("swinunet", img_size=64).state_dict())
    for k in [
        "patch_embed.proj.weight", "patch_embed.norm.bias",
        "layers.0.blocks.1.attn.relative_position_bias_table", "layers.0.blocks.1.attn.qkv.weight",
        "layers.2.blocks.0.mlp.fc2.bias", "layers.2.downsample.reduction.weight", "layers.2.downsample.norm.weight",
        "layers_up.0.expand.weight", "layers_up.0.norm.weight", "layers_up.1.blocks.1.norm2.weight",
        "layers_up.2.upsample.expand.weight", "concat_back_dim.3.weight", "norm.weight", "norm_up.weight",
        "up.expand.weight", "up.norm.weight", "output.weight",
    ]:
        assert k in keys, k
    assert "layers.3.downsample.reduction.weight" not in keys and "layers_up.3.upsample.expand.weight" not in keys


def test_swinunet_repeats_gray_to_rgb() -> None:
    m = create_model("swinunet-nano", img_size=SIZE)
    assert m.patch_embed.proj.in_channels == 3
    assert create_model("swinunet-nano", in_channels=2, img_size=SIZE).patch_embed.proj.in_channels == 2


@pytest.mark.parametrize("img_size,window", [(224, 7), (128, 4), (96, 6), (160, 5), (256, 4)])
def test_swinunet_window_is_chosen_for_the_input_size(img_size: int, window: int) -> None:
    assert resolve_window_size((img_size, img_size), None, 4, 4) == window


def test_swinunet_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("swinunet-nano", img_size=100)
    with pytest.raises(ValueError, match="windows that work"):
        create_model("swinunet-nano", img_size=128, window_size=7)


@pytest.mark.parametrize("n,fused", [(0, []), (1, [3]), (2, [2, 3]), (3, [1, 2, 3])])
def test_swinunet_skip_connections_keep_shallowest_first(n: int, fused: list[int]) -> None:
    m = create_model(f"swinunet-skip{n}", img_size=SIZE, embed_dim=24, num_heads=(1, 2, 4, 8))
    linear = [i for i, layer in enumerate(m.concat_back_dim) if isinstance(layer, nn.Linear)]
    assert linear == fused  # decoder stage 3 works at 1/4 scale, stage 1 at 1/16


def test_swinunet_scale_presets() -> None:
    # shallow/narrow overrides keep this cheap; each build checks the preset's other half
    small = create_model("swinunet-small", img_size=SIZE, embed_dim=24, num_heads=(1, 2, 4, 8))
    assert [len(s.blocks) for s in small.layers] == [2, 2, 18, 2] and len(small.layers_up[1].blocks) == 18
    base = create_model("swinunet-base", img_size=SIZE, depths=(1, 1, 1, 1))
    assert base.patch_embed.proj.out_channels == 128 and base.layers[3].blocks[0].attn.num_heads == 32
    tiny = create_model("swinunet", img_size=SIZE, depths=(1, 1, 1, 1))
    assert isinstance(tiny, SwinUnet) and tiny.patch_embed.proj.out_channels == 96


def test_swinunet_knobs_override_variant_defaults() -> None:
    m = create_model("swinunet-skip0", img_size=SIZE, skip_connections=2, embed_dim=24, depths=(1, 1, 1, 1),
                     num_heads=(1, 2, 4, 8))
    assert m.skip_connections == 2 and m.patch_embed.proj.out_channels == 24
    with pytest.raises(ValueError, match="upsampling"):
        create_model("swinunet-nano", img_size=SIZE, upsampling="nearest")
    with pytest.raises(ValueError, match="scale"):
        create_model("swinunet", img_size=SIZE, scale="huge")
