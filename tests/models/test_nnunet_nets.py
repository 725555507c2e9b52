"""nnU-Net's networks against the plans nnunetv2's own planners write.

For each input size, a tiny nnU-Net raw dataset whose images are 1 x S x S (nnU-Net's 2D layout) is
planned by the real ``ExperimentPlanner``, ``nnUNetPlannerResEncM`` and ``nnUNetPlannerResEncL``
(``plan_experiment``: target spacing, transpose, the 2D configuration with its patch size, topology
and memory check). Their ``2d`` network is built from the plans file with nnunetv2's own
``PlansManager`` and ``get_network_from_plans``, and compared with ours: the topology, every state-dict
shape and the parameter count.

The dataset fingerprint (spacings and shapes after cropping: all the planner reads of the images) is
written by the test instead of by nnunetv2's extractor, which starts a spawned worker pool (about 25 s
per dataset on two cores) to measure what the test already knows: the images are not cropped
(no zero voxels) and have unit spacing.

Skips without nnunetv2 (``pip install nnunetv2``); with SEGBENCH_REQUIRE_NNUNET=1 (CI) a missing
nnunetv2 fails instead.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model
from models.nnunet import plan_2d

PLANNERS = {  # planner class -> plans name -> our model
    "ExperimentPlanner": ("nnUNetPlans", "nnunet-plain"),
    "nnUNetPlannerResEncM": ("nnUNetResEncUNetMPlans", "nnunet-resenc-m"),
    "nnUNetPlannerResEncL": ("nnUNetResEncUNetLPlans", "nnunet-resenc-l"),
}
SIZES = (96, 224)  # the cpu and paper protocols' input sizes
NUM_CLASSES = 9


def _require_nnunetv2() -> None:
    try:
        importlib.import_module("nnunetv2")
    except ImportError:
        if os.environ.get("SEGBENCH_REQUIRE_NNUNET"):
            pytest.fail("nnunetv2 is not installed (SEGBENCH_REQUIRE_NNUNET is set)")
        pytest.skip("nnunetv2 is not installed (pip install nnunetv2; it comes with the test extra)")


def _raw_dataset(raw: Path, pre: Path, dataset_id: int, size: int) -> str:
    """Two 1 x size x size training images with labels 0..8, dataset.json and the fingerprint."""
    import SimpleITK as sitk

    name = f"Dataset{dataset_id:03d}_Plan{size}"
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(size)
    for case in ("a", "b"):
        for array, sub, suffix in ((1 + rng.random((1, size, size), dtype=np.float32), "imagesTr", "_0000"),
                                   (rng.integers(0, NUM_CLASSES, (1, size, size)).astype(np.uint8), "labelsTr", "")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(image, str(folder / sub / f"{case}{suffix}.nii.gz"))
    labels = {"background": 0, **{f"organ{i}": i for i in range(1, NUM_CLASSES)}}
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                     "numTraining": 2, "file_ending": ".nii.gz"}))
    (pre / name).mkdir(parents=True)
    fingerprint = {"spacings": [[1.0, 1.0, 1.0]] * 2, "shapes_after_crop": [[1, size, size]] * 2,
                   "median_relative_size_after_cropping": 1.0,
                   "foreground_intensity_properties_per_channel": {"0": {
                       "max": 2.0, "mean": 1.5, "median": 1.5, "min": 1.0, "percentile_00_5": 1.005,
                       "percentile_99_5": 1.995, "std": 0.29}}}
    (pre / name / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    return name


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[tuple[int, str], dict]:
    """(size, planner class) -> the plans file nnunetv2 wrote."""
    _require_nnunetv2()
    root = tmp_path_factory.mktemp("nnunet")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_def_n_proc": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import nnunetv2
        from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

        names = {size: _raw_dataset(root / "raw", root / "preprocessed", 990 + i, size)
                 for i, size in enumerate(SIZES)}
        out = {}
        threads = torch.get_num_threads()
        for planner_name, (plans_name, _) in PLANNERS.items():
            planner = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "experiment_planning"),
                                                  planner_name, "nnunetv2.experiment_planning")
            for i, size in enumerate(SIZES):
                plan_experiment_dataset(990 + i, planner)
                out[size, planner_name] = json.loads(
                    (root / "preprocessed" / names[size] / f"{plans_name}.json").read_text())
        torch.set_num_threads(threads)  # the planners' memory estimate changes it
    return out


def _their_network(plans_doc: dict) -> torch.nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    config = PlansManager(plans_doc).get_configuration("2d")
    with torch.device("meta"):  # shapes only
        return get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                      config.network_arch_init_kwargs_req_import, 1, NUM_CLASSES,
                                      allow_init=False, deep_supervision=False)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("planner", list(PLANNERS))
def test_network_equals_the_one_nnunetv2_plans(plans, planner: str, size: int) -> None:
    plan = plans[size, planner]["configurations"]["2d"]
    assert plan["patch_size"] == [size, size]  # the planner took the whole image as the 2D patch
    arch = plan["architecture"]["arch_kwargs"]
    ours_topology = plan_2d(size)
    assert arch["n_stages"] == ours_topology.n_stages
    assert tuple(arch["features_per_stage"]) == ours_topology.features_per_stage
    assert [tuple(k) for k in arch["kernel_sizes"]] == list(ours_topology.kernel_sizes)
    assert [tuple(s) for s in arch["strides"]] == list(ours_topology.strides)
    theirs = _their_network(plans[size, planner])
    with torch.device("meta"):
        ours = create_model(PLANNERS[planner][1], num_classes=NUM_CLASSES, in_channels=1, img_size=size)
    assert type(ours).__name__ == plan["architecture"]["network_class_name"].rsplit(".", 1)[-1]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_resenc_m_and_l_are_one_network_in_2d(plans) -> None:
    for size in SIZES:
        m = plans[size, "nnUNetPlannerResEncM"]["configurations"]["2d"]["architecture"]
        large = plans[size, "nnUNetPlannerResEncL"]["configurations"]["2d"]["architecture"]
        assert m == large


@pytest.mark.parametrize("size, stages, divisor", [(64, 5, 16), (96, 5, 16), (128, 6, 32), (224, 6, 32),
                                                   (512, 8, 128), ((96, 224), 6, (16, 32))])
def test_topology_rule(size, stages: int, divisor) -> None:
    topo = plan_2d(size)
    assert topo.n_stages == stages and topo.divisor == (divisor if isinstance(divisor, tuple) else (divisor,) * 2)
    assert max(topo.features_per_stage) <= 512 and topo.features_per_stage[0] == 32


def test_bad_size_names_the_sizes_nnunet_would_accept() -> None:
    with pytest.raises(ValueError, match="4 poolings for a side of 100.*multiple of 16: use 96 or 112"):
        plan_2d(100)


def test_deep_supervision_heads_are_frozen_and_the_output_is_full_resolution() -> None:
    m = create_model("nnunet-plain", num_classes=3, img_size=64, base_features=4, max_features=16)
    heads = list(m.decoder.seg_layers)
    assert all(not p.requires_grad for h in heads[:-1] for p in h.parameters())
    assert all(p.requires_grad for p in heads[-1].parameters())
    assert m(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)
