"""Regenerate tests/models/data/official_*.json.gz from the official code.

Run once, from the checkout, with the official files on disk (never copied into this repository):

    SEGBENCH_OFFICIAL_SWINUNET=.../Swin-Unet/networks/swin_transformer_unet_skip_expand_decoder_sys.py \\
    SEGBENCH_OFFICIAL_TRANSUNET=.../TransUNet/networks/vit_seg_modeling.py \\
    SEGBENCH_OFFICIAL_NEST_UNETS=.../Unet-Segmentation-Pytorch-Nest-of-Unets/Models.py \\
    python tests/models/make_official_reference.py [swinunet transunet unet_plain attunet]

(names: regenerate only those; default all).

Sources: HuCaoFighting/Swin-Unet @ 7d80541 (``SwinTransformerSys``, the network inside the
official ``SwinUnet`` wrapper) and Beckschen/TransUNet @ 02ef001 (``VisionTransformer`` with the
R50-ViT-B_16 configuration; ``vit_seg_configs.py`` and ``vit_seg_modeling_resnet_skip.py`` beside
it; ``ml_collections`` is stubbed if missing; the Swin-Unet file needs ``einops``) and
bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets @ f63262d (``U_Net`` and ``AttU_Net`` in ``Models.py``). What is
written is described in tests/models/official_reference.py. The output only changes if the
official code, the weight formula or the configurations there change.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from official_reference import (  # noqa: E402
    SMALL_NEST_UNET,
    SMALL_SWINUNET,
    SMALL_TRANSUNET,
    describe,
    fingerprint,
    official_module,
    official_weights,
    reference_input,
    save,
    stub_ml_collections,
)


def _run(model: torch.nn.Module, img_size: int, channels: int = 3) -> dict:
    """Load the generated weights under the official keys, then the output for the generated input
    (one channel, repeated to ``channels``)."""
    small = describe(model)
    model.double().load_state_dict(official_weights(small["keys"]), strict=False)  # derived buffers stay
    with torch.no_grad():
        out = model.eval()(reference_input(img_size).repeat(1, channels, 1, 1))
    return {**small, "output": fingerprint(out)}


def swinunet() -> dict:
    network = official_module("SEGBENCH_OFFICIAL_SWINUNET", "official_swinunet")
    common = dict(patch_size=4, in_chans=3, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.2, ape=False,
                  patch_norm=True)
    paper = network.SwinTransformerSys(img_size=224, num_classes=9, embed_dim=96, depths=[2, 2, 2, 2],
                                       num_heads=[3, 6, 12, 24], window_size=7, **common)
    small = network.SwinTransformerSys(**SMALL_SWINUNET, **common)
    return {"source": "HuCaoFighting/Swin-Unet @ 7d80541, networks/swin_transformer_unet_skip_expand_decoder_sys.py "
                      "SwinTransformerSys (keys as in the SwinUnet wrapper's checkpoints, without 'swin_unet.')",
            "paper": {"config": "Swin-T, 224, 9 classes, window 7", **describe(paper)},
            "small": {"config": SMALL_SWINUNET, **_run(small, SMALL_SWINUNET["img_size"])}}


def transunet() -> dict:
    stub_ml_collections()
    network = official_module("SEGBENCH_OFFICIAL_TRANSUNET", "official_transunet")

    def build(img_size: int, num_classes: int, n_skip: int, **small) -> torch.nn.Module:
        config = copy.deepcopy(network.CONFIGS["R50-ViT-B_16"])
        config.n_classes, config.n_skip = num_classes, n_skip
        config.patches.grid = (img_size // 16, img_size // 16)
        if small:
            config.hidden_size = small["hidden_size"]
            config.transformer.num_layers, config.transformer.num_heads = small["num_layers"], small["num_heads"]
            config.transformer.mlp_dim = small["mlp_dim"]
            config.resnet.num_layers = tuple(small["resnet_layers"])
        return network.VisionTransformer(config, img_size=img_size, num_classes=num_classes)

    paper = build(224, 9, 3)
    small = build(**SMALL_TRANSUNET)
    return {"source": "Beckschen/TransUNet @ 02ef001, networks/vit_seg_modeling.py VisionTransformer, "
                      "CONFIGS['R50-ViT-B_16'] as train.py sets it",
            "paper": {"config": "R50-ViT-B/16, 224, 9 classes, 3 skips", **describe(paper)},
            "small": {"config": SMALL_TRANSUNET, **_run(small, SMALL_TRANSUNET["img_size"])}}


def nest_unet(class_name: str) -> dict:
    network = official_module("SEGBENCH_OFFICIAL_NEST_UNETS", "official_nest_unets")
    cls = getattr(network, class_name)

    def build(in_channels: int, num_classes: int) -> torch.nn.Module:  # the two classes name their arguments apart
        return cls(in_channels, num_classes)

    c = SMALL_NEST_UNET
    return {"source": f"bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets @ f63262d, Models.py {class_name}",
            "paper": {"config": "1 input channel, 9 classes (fully convolutional)", **describe(build(1, 9))},
            "small": {"config": c, **_run(build(c["in_channels"], c["num_classes"]), c["img_size"], channels=1)}}


MAKERS = {"swinunet": swinunet, "transunet": transunet,
          "unet_plain": lambda: nest_unet("U_Net"), "attunet": lambda: nest_unet("AttU_Net")}

if __name__ == "__main__":
    for name in sys.argv[1:] or MAKERS:
        torch.manual_seed(0)
        save(name, MAKERS[name]())
        print(f"wrote tests/models/data/official_{name}.json.gz")
