"""Parity with the official Swin-Unet and TransUNet, and with the ``U_Net`` / ``AttU_Net`` of
bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets, in every test run, without their code.

The facts come from tests/models/data/official_*.json.gz, generated once from the official
networks (see official_reference.py for what they hold, make_official_reference.py for how to
regenerate them): the paper configurations' state-dict keys, shapes and parameter counts, and a
small configuration's output for generated weights. The slow tests in test_weights.py and
test_transunet.py compare against the official code itself when it is on disk.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from official_reference import (
    SMALL_NEST_UNET,
    SMALL_SWINUNET,
    SMALL_TRANSUNET,
    describe,
    fingerprint,
    load,
    official_weights,
)
from official_reference import reference_input as make_input

from models import create_model
from models.transunet import checkpoint_filter
from models.unet_plain import checkpoint_filter as nest_unets_filter

NEST_UNETS = {"unet_plain": ("unet-plain", 34_526_409), "attunet": ("attunet", 34_877_941)}  # data file: our name

pytestmark = pytest.mark.usefixtures("one_thread")


def _parameters(keys: dict) -> dict:
    return {k: shape for k, (shape, kind) in keys.items() if kind == "parameter"}


def test_swinunet_has_the_official_keys_shapes_and_parameter_counts():
    official = load("swinunet")["paper"]
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        ours = describe(create_model("swinunet", num_classes=9, in_channels=1, img_size=224))
    assert _parameters(ours["keys"]) == _parameters(official["keys"])
    assert ours["parameters"] == official["parameters"]  # per module: patch_embed, layers.0 .. layers_up.3, ...
    assert ours["total"] == official["total"] == 27_168_900  # also in shared/reference/synapse-protocol.md
    # every official buffer is either ours (none are) or derived from the geometry, never silently dropped
    assert {k for k, (_, kind) in official["keys"].items() if kind == "buffer"} <= {
        k for k in official["keys"] if k.endswith(("relative_position_index", "attn_mask"))}


def test_transunet_loads_every_official_key_into_the_right_shape():
    official = load("transunet")["paper"]
    with torch.device("meta"):
        ours = create_model("transunet", num_classes=9, in_channels=1, img_size=224)
        contents = {k: torch.empty(shape) for k, (shape, _) in official["keys"].items()}
    converted = checkpoint_filter(contents, ours, Path("TU_Synapse224_epoch149.pth"))
    assert converted.format == "transunet_official" and not converted.partial and not converted.unused
    want = {k: list(v.shape) for k, v in ours.state_dict().items()}
    assert {k: list(v.shape) for k, v in converted.state.items()} == want
    assert sum(p.numel() for p in ours.parameters()) == official["total"] == 105_277_081


@pytest.mark.parametrize("network", NEST_UNETS)
def test_nest_unets_load_every_key_of_the_repository_class_into_the_right_shape(network):
    official = load(network)["paper"]
    name, count = NEST_UNETS[network]
    with torch.device("meta"):
        ours = create_model(name, num_classes=9, in_channels=1, img_size=224)
        contents = {k: torch.empty(shape) for k, (shape, _) in official["keys"].items()}
    converted = nest_unets_filter(contents, ours, Path(f"{network}.pth"))
    assert converted.format == "nest_of_unets" and not converted.partial
    assert {k: list(v.shape) for k, v in converted.state.items()} == {
        k: list(v.shape) for k, v in ours.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == official["total"] == count


def _ours(network: str, weights: Path) -> torch.nn.Module:
    if network in NEST_UNETS:
        c = SMALL_NEST_UNET
        return create_model(NEST_UNETS[network][0], num_classes=c["num_classes"], in_channels=c["in_channels"],
                            img_size=c["img_size"], weights=str(weights))
    if network == "swinunet":
        c = SMALL_SWINUNET
        return create_model("swinunet", num_classes=c["num_classes"], img_size=c["img_size"], embed_dim=c["embed_dim"],
                            depths=c["depths"], num_heads=c["num_heads"], window_size=c["window_size"],
                            weights=str(weights))
    c = SMALL_TRANSUNET
    return create_model("transunet", num_classes=c["num_classes"], img_size=c["img_size"],
                        skip_connections=c["n_skip"], hidden_size=c["hidden_size"], num_layers=c["num_layers"],
                        num_heads=c["num_heads"], mlp_dim=c["mlp_dim"], resnet_layers=tuple(c["resnet_layers"]),
                        weights=str(weights))


SMALL = {"swinunet": SMALL_SWINUNET, "transunet": SMALL_TRANSUNET, "unet_plain": SMALL_NEST_UNET,
         "attunet": SMALL_NEST_UNET}


@pytest.mark.parametrize("network, prefix", [("swinunet", "module.swin_unet."), ("transunet", "module."),
                                             ("unet_plain", ""), ("attunet", "module.")])
def test_outputs_equal_the_official_networks(tmp_path, network, prefix):
    """Generated weights under the official keys, saved as a trained official checkpoint (DataParallel
    prefixes included), loaded by our loader: our output is the official one, in float64."""
    small = load(network)["small"]
    assert small["config"] == SMALL[network]
    path = tmp_path / "official.pth"
    torch.save({prefix + k: v.float() for k, v in official_weights(small["keys"]).items()}, path)
    torch.manual_seed(0)
    ours = _ours(network, path)
    assert not ours.weights_report.missing and not ours.weights_report.dropped
    with torch.no_grad():
        got = fingerprint(ours.double().eval()(make_input(small["config"]["img_size"])))
    if network in NEST_UNETS:
        assert ours.weights_report.format == "nest_of_unets"
    want = small["output"]
    assert got["shape"] == want["shape"]
    scale = np.abs(want["strided"]).max()
    assert scale > 0.01 and np.std(want["strided"]) > 0.1 * scale  # varied outputs: a real comparison
    diff = np.abs(np.subtract(got["strided"], want["strided"])).max()
    assert diff < 1e-9 + 1e-8 * scale, f"max difference {diff:.3g} (outputs up to {scale:.3g})"  # stored to 1e-10
    np.testing.assert_allclose(got["sums"], want["sums"], rtol=1e-8, atol=1e-6)
