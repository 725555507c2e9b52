"""R50 U-Net / R50 Att-UNet: TransUNet's R50 as the encoder, the plain U-Net's decoder, Google's npz.

The networks are reconstructions (the TransUNet paper's baseline code was never released): what is
checked is that the encoder is exactly TransUNet's CNN, that the decoder is the one of ``unet-plain`` /
``attunet`` over the R50's skips, and that ``R50+ViT-B_16.npz`` initialises the encoder as it does
TransUNet's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_transunet import SIZE, SMALL, _perturbed, _small, to_google_npz

from models import create_model
from models.unet_plain import AttentionGate, DecoderStage

pytestmark = pytest.mark.usefixtures("one_thread")


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_encoder_is_transunets_r50() -> None:
    with torch.device("meta"):
        r50, transunet = create_model("r50-unet"), create_model("transunet")
    assert {k: v.shape for k, v in r50.backbone.state_dict().items()} == {
        k: v.shape for k, v in transunet.backbone.state_dict().items()}
    assert _count(r50.backbone) == 11_894_848


@pytest.mark.parametrize("name, attention, count", [("r50-unet", False, 27_017_737), ("r50-attunet", True, 27_352_434)])
def test_decoder_is_the_plain_unets_over_the_r50_skips(name: str, attention: bool, count: int) -> None:
    with torch.device("meta"):
        m = create_model(name, num_classes=9, in_channels=1, img_size=224)
    assert all(isinstance(s, DecoderStage) for s in m.decoder)
    widths = [(s.up.conv.in_channels, s.conv.conv1.in_channels - s.up.conv.out_channels, s.up.conv.out_channels)
              for s in m.decoder]
    assert widths == [(1024, 512, 512), (512, 256, 256), (256, 64, 64), (64, 0, 64)]  # (in, skip, out)
    gates = [isinstance(s.gate, AttentionGate) for s in m.decoder]
    assert gates == ([True, True, True, False] if attention else [False] * 4)  # no skip, no gate at 1/2 -> 1/1
    # pinned: a reconstruction has no official count; a change of architecture must be deliberate
    assert _count(m) == count


def test_google_npz_initialises_the_encoder_as_transunets(tmp_path: Path) -> None:
    source = _perturbed(_small(0))
    np.savez(tmp_path / "R50+ViT-B_16.npz", **to_google_npz(source))
    torch.manual_seed(1)
    m = create_model("r50-attunet", num_classes=3, img_size=SIZE, resnet_layers=SMALL["resnet_layers"],
                     weights=str(tmp_path / "R50+ViT-B_16.npz"))
    report = m.weights_report
    assert report.format == "r50_npz"
    assert not [k for k in report.missing if k.startswith("backbone.")]
    assert {k.split(".")[0] for k in report.missing} == {"decoder", "head"}
    assert any(k.startswith("Transformer/") for k in report.dropped)  # the ViT is reported, not loaded
    for k, v in source.backbone.state_dict().items():
        torch.testing.assert_close(m.backbone.state_dict()[k], v, rtol=0, atol=0, msg=k)
    x = torch.rand(1, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(m.eval().backbone(x.repeat(1, 3, 1, 1)), source.backbone(x.repeat(1, 3, 1, 1)))


def test_a_trained_state_dict_round_trips(tmp_path: Path) -> None:
    src = create_model("r50-unet", num_classes=3, img_size=SIZE, resnet_layers=(1, 1, 1)).eval()
    torch.save({"model": src.state_dict()}, tmp_path / "r50.pth")
    dst = create_model("r50-unet", num_classes=3, img_size=SIZE, resnet_layers=(1, 1, 1),
                       weights=str(tmp_path / "r50.pth")).eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
