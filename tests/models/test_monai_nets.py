"""``monai-*`` models: MONAI's own classes, built with the arguments each preset states.

The reference networks are built here from ``monai.networks.nets`` with the arguments written out
again (not read from models/monai_nets.py), at the paper protocol's 224 with 1 channel and 9 classes,
on the meta device where the class allows it (shapes only; SwinUNETR computes with tensors while it is
built): the parameter count and every state-dict shape must be MONAI's.
"""
from __future__ import annotations

import pytest
import torch

from models import create_model, is_model, list_models

nets = pytest.importorskip("monai.networks.nets", reason="MONAI is a dependency of segbench; install it")

SIZE = 224


def _reference(name: str) -> torch.nn.Module:
    c = dict(in_channels=1, out_channels=9)
    if name == "monai-attentionunet":
        return nets.AttentionUnet(spatial_dims=2, channels=(64, 128, 256, 512, 1024), strides=(2, 2, 2, 2), **c)
    if name == "monai-swinunetr":
        return nets.SwinUNETR(spatial_dims=2, feature_size=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
                              window_size=7, **c)
    if name == "monai-unetr":
        return nets.UNETR(spatial_dims=2, img_size=(SIZE, SIZE), feature_size=16, hidden_size=768, mlp_dim=3072,
                          num_heads=12, proj_type="conv", norm_name="instance", res_block=True, **c)
    if name == "monai-segresnet":
        return nets.SegResNet(spatial_dims=2, init_filters=32, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), **c)
    if name == "monai-dynunet":  # nnU-Net's 2D topology at 224: six stages, 32 to 512 filters
        return nets.DynUNet(spatial_dims=2, kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2],
                            upsample_kernel_size=[2] * 5, filters=(32, 64, 128, 256, 512, 512),
                            norm_name=("INSTANCE", {"affine": True}), deep_supervision=False, res_block=False, **c)
    size = name.rsplit("-", 1)[-1].upper()  # monai-mednext-s ... -l
    return getattr(nets, f"MedNeXt{size}")(spatial_dims=2, kernel_size=3, deep_supervision=False, **c)


def _shapes(m: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name", list_models("monai-*"))
def test_parameter_count_and_shapes_are_monais(name: str) -> None:
    device = "cpu" if name == "monai-swinunetr" else "meta"
    with torch.device(device):
        ours, theirs = create_model(name, num_classes=9, in_channels=1, img_size=SIZE), _reference(name)
    assert type(ours) is type(theirs)
    assert _shapes(ours) == _shapes(theirs)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_registered_presets() -> None:
    assert list_models("monai-*") == sorted(
        ["monai-attentionunet", "monai-swinunetr", "monai-unetr", "monai-segresnet", "monai-dynunet",
         "monai-mednext-s", "monai-mednext-b", "monai-mednext-m", "monai-mednext-l"])


def test_mednext_kernel_size_resolves_from_the_name() -> None:
    assert is_model("monai-mednext-l-k5") and not is_model("monai-mednext-xl") and not is_model("monai-vnet3d")
    with torch.device("meta"):
        k5 = create_model("monai-mednext-s-k5", img_size=64)
    kernels = {m.kernel_size for m in k5.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert kernels == {(5, 5)}  # MedNeXt's depthwise convolutions


def test_unknown_name_lists_the_presets() -> None:
    with pytest.raises(KeyError, match=r"monai-<network> with network one of attentionunet, swinunetr.*mednext"):
        create_model("monai-nope")


def test_knobs_override_the_preset_and_unused_parameters_are_frozen() -> None:
    with torch.device("meta"):
        small = create_model("monai-unetr", img_size=64, hidden_size=96, mlp_dim=192, num_heads=2)
    assert small.vit.patch_embedding.patch_embeddings.out_channels == 96
    frozen = [n for n, p in small.named_parameters() if not p.requires_grad]
    assert frozen and all(".norm_cross_attn." in n for n in frozen)


def test_unetr_takes_only_its_size() -> None:
    m = create_model("monai-unetr", img_size=64, hidden_size=96, mlp_dim=192, num_heads=2)
    with pytest.raises(ValueError, match=r"H = W = 64 \(it was built for that size\), got \(1, 1, 96, 96\)"):
        m(torch.zeros(1, 1, 96, 96))
    with pytest.raises(ValueError, match="divisible by 32, got 80"):
        create_model("monai-swinunetr", img_size=80)
