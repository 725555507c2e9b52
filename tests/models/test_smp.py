"""Weights for segmentation_models.pytorch baselines: whole-model and encoder-only local files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from models import create_model
from models.weights import load_weights

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def _unet(seed: int, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("smp-unet-resnet18", num_classes=3, in_channels=in_channels, img_size=SIZE).eval()


def test_whole_model_round_trip(tmp_path: Path) -> None:
    src, dst = _unet(0), _unet(1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    report = load_weights(dst, tmp_path / "w.pth")
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    assert report.format == "state_dict" and dst.pretrained_from == str(tmp_path / "w.pth")


@pytest.mark.parametrize("prefix", ["", "encoder."])
def test_imagenet_encoder_only(tmp_path: Path, prefix: str) -> None:
    # torchvision's ResNet-18 layout, classifier included, as resnet18-f37072fd.pth
    torch.manual_seed(2)
    imagenet = torchvision.models.resnet18().state_dict()
    torch.save({prefix + k: v for k, v in imagenet.items()}, tmp_path / "resnet18.pth")
    gray, rgb = _unet(0), _unet(0, in_channels=3)
    before = {k: v.clone() for k, v in gray.state_dict().items()}
    report = load_weights(gray, tmp_path / "resnet18.pth")
    load_weights(rgb, tmp_path / "resnet18.pth")
    got = gray.state_dict()
    assert report.format == "smp_encoder" and report.dropped == ["encoder.fc.bias", "encoder.fc.weight"]
    assert set(report.missing) == {k for k in got if not k.startswith("encoder.")}
    assert torch.equal(got["encoder.layer4.1.conv2.weight"], imagenet["layer4.1.conv2.weight"])
    assert torch.equal(got["encoder.conv1.weight"], imagenet["conv1.weight"].sum(dim=1, keepdim=True))
    assert all(torch.equal(got[k], before[k]) for k in report.missing)
    # the summed RGB kernel on a gray image = the RGB kernel on the gray image repeated three times
    x = torch.rand(1, 1, SIZE, SIZE)
    with torch.no_grad():
        a, b = gray.encoder(x)[-1], rgb.encoder(x.repeat(1, 3, 1, 1))[-1]
    assert torch.allclose(a, b, atol=1e-5)


def test_unrelated_file_is_a_clear_error(tmp_path: Path) -> None:
    torch.save(create_model("swinunet-nano", img_size=SIZE).state_dict(), tmp_path / "swin.pth")
    with pytest.raises(ValueError, match=r"does not match Unet: .*file keys not in the model \[concat_back_dim"):
        load_weights(_unet(0), tmp_path / "swin.pth")
