"""bench.engine.metrics against medpy (the official Synapse procedure) and hand-checked values.

Tolerance: 1e-6 absolute on every metric (the implementation is designed to match medpy
bit for bit; the tolerance only absorbs platform differences). The reference for NSD is
built on medpy's own surface distances, since medpy has no NSD.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import SHARED
from scipy.ndimage import binary_erosion, generate_binary_structure

from bench.data.organs import SYNAPSE_ORGANS
from bench.engine.metrics import (
    BOTH_EMPTY,
    BOTH_PRESENT,
    METRICS,
    PRED_ONLY,
    REF_ONLY,
    evaluate_case,
    surface,
    volume_diagonal,
)
from bench.engine.metrics_medpy import calculate_metric_percase, evaluate_case_medpy, load_totalseg_pair

TOL = 1e-6
TOTALSEG = SHARED / "data" / "totalseg-example"
needs_totalseg = pytest.mark.skipif(
    not (TOTALSEG / "seg-total.nii.gz").is_file(),
    reason=f"real TotalSegmentator masks not found at {TOTALSEG} (shared data absent)",
)
LABELS = list(SYNAPSE_ORGANS)


def assert_matches_medpy(pred, ref, labels, spacing=None, convention="synapse", tol_nsd=2.0):
    """Every metric of every both-present row equals medpy's; under "synapse" the empty-mask
    rows also equal the official ``calculate_metric_percase``."""
    ours = evaluate_case(pred, ref, labels, spacing=spacing, convention=convention,
                         nsd_tolerance_mm=tol_nsd)
    medpy_spacing = spacing if convention == "strict" else None
    theirs = evaluate_case_medpy(pred, ref, labels, spacing=medpy_spacing, all_metrics=True,
                                 nsd_tolerance=tol_nsd)
    assert list(ours["label"]) == list(theirs["label"])
    present = (ours["status"] == BOTH_PRESENT).to_numpy()
    for metric in METRICS:
        np.testing.assert_allclose(ours[metric][present], theirs[metric][present],
                                   rtol=0, atol=TOL, err_msg=metric)
    if convention == "synapse":
        for metric in ("dice", "hd95"):
            np.testing.assert_allclose(ours[metric], theirs[metric], rtol=0, atol=TOL,
                                       err_msg=metric)
    return ours


# --- real masks: seg-total (reference) against seg-total-fast (prediction) ----------------

@pytest.fixture(scope="module")
def real_pair():
    ref, pred, spacing = load_totalseg_pair(TOTALSEG)
    return ref, pred, spacing


@needs_totalseg
@pytest.mark.parametrize("convention", ["synapse", "strict"])
def test_real_masks_match_medpy(real_pair, convention):
    ref, pred, spacing = real_pair
    assert spacing == (3.0, 3.0, 3.0)
    ours = assert_matches_medpy(pred, ref, SYNAPSE_ORGANS, spacing, convention)
    assert (ours["status"] == BOTH_PRESENT).all()  # all eight organs are in both masks
    assert list(ours["organ"]) == list(SYNAPSE_ORGANS.values())


@needs_totalseg
def test_real_masks_anisotropic_spacing(real_pair):
    ref, pred, _ = real_pair
    assert_matches_medpy(pred, ref, LABELS, (2.5, 0.7, 0.9), "strict")
    # "synapse" ignores the spacing, as the official code does
    a = evaluate_case(pred, ref, LABELS, spacing=(2.5, 0.7, 0.9))
    b = evaluate_case(pred, ref, LABELS)
    pd.testing.assert_frame_equal(a[list(METRICS)], b[list(METRICS)])


@needs_totalseg
@pytest.mark.parametrize("convention", ["synapse", "strict"])
def test_real_masks_edited(real_pair, convention):
    """Missed organ, organ absent from the reference, shifted organ, far false positive."""
    ref, pred, spacing = real_pair
    pred, ref = pred.copy(), ref.copy()
    pred[pred == 2] = 0  # gallbladder missed
    ref[ref == 6] = 0  # pancreas absent from the reference, still predicted
    kidney = pred == 3
    pred[kidney] = 0
    pred[np.roll(kidney, (2, -3, 5), axis=(0, 1, 2))] = 3  # left kidney shifted
    pred[0, 0, 0] = 1  # a stray aorta voxel in the volume corner
    ours = assert_matches_medpy(pred, ref, LABELS, spacing, convention)
    status = dict(zip(ours["label"], ours["status"], strict=False))
    assert status[2] == REF_ONLY and status[6] == PRED_ONLY


def _monai(pred, ref, labels, spacing, tolerance):
    """MONAI per label (one-hot, background dropped): compute_hausdorff_distance(percentile=95) and
    compute_surface_dice(use_subvoxels=False)."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    def onehot(v):
        return torch.from_numpy(np.stack([v == 0, *[v == k for k in labels]])[None])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation notes
        hd95 = compute_hausdorff_distance(onehot(pred), onehot(ref), percentile=95, spacing=spacing)[0].numpy()
        nsd = compute_surface_dice(onehot(pred), onehot(ref), [tolerance] * len(labels), spacing=spacing,
                                   use_subvoxels=False)[0].numpy()
    return hd95, nsd


@needs_totalseg
@pytest.mark.parametrize("convention, spacing", [("synapse", None), ("strict", None), ("strict", (2.5, 0.7, 0.9))])
def test_hd95_max_and_nsd_equal_monai(real_pair, convention, spacing):
    """hd95_max is MONAI's HD95 (the larger directed 95th percentile) and nsd MONAI's surface Dice
    counting surface voxels (use_subvoxels=False), in voxels under "synapse" and in mm under
    "strict". MONAI computes distances and the quantile position in float32, so the values agree
    to float32 rounding (1e-5 relative), not bit for bit."""
    ref, pred, real_spacing = real_pair
    spacing = spacing or real_spacing
    pred, ref = pred.copy(), ref.copy()
    kidney = pred == 3
    pred[kidney] = 0
    pred[np.roll(kidney, (1, -2, 3), axis=(0, 1, 2))] = 3  # a shifted organ: distances of many sizes
    ours = evaluate_case(pred, ref, LABELS, spacing=spacing, convention=convention, nsd_tolerance_mm=2.0)
    hd95, nsd = _monai(pred, ref, LABELS, spacing if convention == "strict" else None, 2.0)
    assert (ours["status"] == BOTH_PRESENT).all()
    np.testing.assert_allclose(ours["hd95_max"], hd95, rtol=1e-5, atol=0)
    np.testing.assert_allclose(ours["nsd"], nsd, rtol=1e-5, atol=0)
    assert (ours["nsd"] < 1).any()
    # the two HD95 definitions differ on real masks (pancreas: 4.24 vs 5.20 mm at 3 mm)
    assert (ours["hd95_max"] >= ours["hd95"] - TOL).all() and (ours["hd95_max"] > ours["hd95"] + 0.1).any()
    if convention == "strict" and spacing == real_spacing:
        pancreas = ours.set_index("label").loc[6]  # pancreas
        assert pancreas["hd95"] == pytest.approx(4.2426, abs=1e-4)
        assert pancreas["hd95_max"] == pytest.approx(5.1962, abs=1e-4)


# --- hand-checked values -------------------------------------------------------------------

def squares_2d():
    """Two 3 x 3 squares, the prediction shifted by two columns (worked out in the test)."""
    ref = np.zeros((10, 10), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[0:3, 0:3] = 1
    pred[0:3, 2:5] = 1
    return pred, ref


def test_hand_checked_shifted_squares():
    # Surfaces: the 8 border voxels of each square. Prediction -> reference distances by row:
    # (0, 1, 2), (0, 2), (0, 1, 2), and symmetrically back: six 0s, four 1s, six 2s.
    pred, ref = squares_2d()
    row = evaluate_case(pred, ref, [1], nsd_tolerance_mm=1.0).iloc[0]
    assert row["dice"] == pytest.approx(2 * 3 / 18)
    assert row["hd95"] == 2.0 and row["hd"] == 2.0  # 95th percentile: between two 2s
    assert row["asd"] == 1.0 and row["assd"] == 1.0
    assert row["nsd"] == pytest.approx(10 / 16)
    # Columns 0.5 mm apart halve every distance in "strict"; "synapse" ignores the spacing.
    strict = evaluate_case(pred, ref, [1], spacing=(1.0, 0.5), convention="strict",
                           nsd_tolerance_mm=0.5).iloc[0]
    assert (strict["hd95"], strict["asd"], strict["nsd"]) == (1.0, 0.5, pytest.approx(10 / 16))
    assert evaluate_case(pred, ref, [1], spacing=(1.0, 0.5)).iloc[0]["hd95"] == 2.0
    assert_matches_medpy(pred, ref, [1], (1.0, 0.5), "strict", tol_nsd=0.5)


def test_hand_checked_single_voxels():
    pred = np.zeros((4, 5, 6), dtype=np.uint8)
    ref = np.zeros_like(pred)
    pred[1, 2, 3] = 1
    ref[2, 2, 3] = 1  # one voxel further along axis 0
    synapse = evaluate_case(pred, ref, [1]).iloc[0]
    assert (synapse["dice"], synapse["hd95"], synapse["asd"], synapse["nsd"]) == (0, 1, 1, 1)
    strict = evaluate_case(pred, ref, [1], spacing=(2.5, 1, 1), convention="strict").iloc[0]
    assert (strict["dice"], strict["hd95"], strict["asd"], strict["nsd"]) == (0, 2.5, 2.5, 0)
    same = evaluate_case(ref, ref, [1], convention="strict").iloc[0]
    assert (same["dice"], same["hd95"], same["nsd"]) == (1, 0, 1)


def test_empty_mask_rules():
    shape, spacing = (4, 5, 6), (2.0, 1.0, 0.5)
    pred = np.zeros(shape, dtype=np.uint8)
    ref = np.zeros_like(pred)
    pred[1:3, 1:3, 1:3] = 1  # label 1: predicted only
    ref[1:3, 1:3, 1:3] = 2  # label 2: missed; label 3: in neither
    worst = math.sqrt(8**2 + 5**2 + 3**2)
    assert volume_diagonal(shape, spacing) == pytest.approx(worst)

    synapse = evaluate_case(pred, ref, [1, 2, 3], spacing=spacing).set_index("label")
    assert list(synapse["status"]) == [PRED_ONLY, REF_ONLY, BOTH_EMPTY]
    assert list(synapse["dice"]) == [1, 0, 0] and list(synapse["hd95"]) == [0, 0, 0]
    for label in (1, 2, 3):  # the official function, on the same masks
        official = calculate_metric_percase(pred == label, ref == label)
        assert official == (synapse.loc[label, "dice"], synapse.loc[label, "hd95"])

    strict = evaluate_case(pred, ref, [1, 2, 3], spacing=spacing,
                           convention="strict").set_index("label")
    for label in (1, 2):
        assert strict.loc[label, "dice"] == 0 and strict.loc[label, "nsd"] == 0
        for metric in ("hd95", "hd", "asd", "assd"):
            assert strict.loc[label, metric] == pytest.approx(worst)
    assert strict.loc[3, list(METRICS)].isna().all()
    assert strict["dice"].mean() == 0  # pandas skips the NaN row: excluded, not zero
    assert (strict["status"] == BOTH_EMPTY).sum() == 1  # and counted


# --- edge cases against medpy --------------------------------------------------------------

def boxes(shape, *placements):
    """A label volume with label k+1 filling the k-th (slices) placement."""
    volume = np.zeros(shape, dtype=np.int16)
    for k, where in enumerate(placements):
        volume[where] = k + 1
    return volume


EDGE_CASES = {
    "shifted": (boxes((12, 14, 16), np.s_[2:8, 3:9, 4:12]),
                boxes((12, 14, 16), np.s_[4:10, 3:9, 1:9])),
    "single_voxel_vs_organ": (boxes((9, 9, 9), np.s_[4, 4, 4]),
                              boxes((9, 9, 9), np.s_[1:8, 2:7, 3:5])),
    "single_voxels_apart": (boxes((9, 9, 9), np.s_[0, 0, 0]),
                            boxes((9, 9, 9), np.s_[8, 8, 8])),
    "touching_border": (boxes((8, 10, 12), np.s_[0:8, 0:3, 5:12], np.s_[5:8, 7:10, 0:2]),
                        boxes((8, 10, 12), np.s_[0:6, 0:4, 6:12], np.s_[4:8, 6:10, 0:3])),
    "whole_volume": (np.ones((5, 6, 7), dtype=np.uint8), boxes((5, 6, 7), np.s_[1:4, 1:5, 1:6])),
    "two_components": (boxes((10, 20, 20), np.s_[2:6, 2:8, 2:8], np.s_[0:2, 18:20, 18:20]),
                       boxes((10, 20, 20), np.s_[2:7, 3:8, 2:9], np.s_[8:10, 0:3, 0:1])),
    "plane_2d": (boxes((30, 40), np.s_[0:10, 5:25]), boxes((30, 40), np.s_[3:14, 0:22])),
}


@pytest.mark.parametrize("convention", ["synapse", "strict"])
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_match_medpy(case, convention):
    pred, ref = EDGE_CASES[case]
    spacing = (3.0, 0.8, 0.6)[-pred.ndim:]
    assert_matches_medpy(pred, ref, [1, 2], spacing, convention)


def test_surface_equals_medpy_definition():
    """Surface = mask minus its connectivity-1 erosion with the outside as background."""
    rng = np.random.default_rng(0)
    for shape in [(7,), (9, 11), (6, 7, 8)]:
        mask = rng.random(shape) < 0.7
        footprint = generate_binary_structure(mask.ndim, 1)
        expected = mask ^ binary_erosion(mask, structure=footprint, iterations=1)
        np.testing.assert_array_equal(surface(mask), expected)


# --- random blobs --------------------------------------------------------------------------

def random_blobs(rng, shape, n_labels):
    """Overlapping random ellipsoids as a label volume (later labels paint over earlier)."""
    grid = np.indices(shape).reshape(len(shape), -1).T
    volume = np.zeros(shape, dtype=np.uint8)
    for label in range(1, n_labels + 1):
        for _ in range(rng.integers(1, 3)):
            centre = rng.uniform(0, shape)
            radii = rng.uniform(1, np.array(shape) / 2.5)
            inside = (((grid - centre) / radii) ** 2).sum(1) <= 1
            volume.reshape(-1)[inside] = label
    return volume


@pytest.mark.parametrize("seed", range(12))
def test_random_blobs_match_medpy(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(8, 24, size=2 if seed % 4 == 0 else 3))
    ref = random_blobs(rng, shape, 3)
    pred = np.roll(ref, rng.integers(-2, 3, size=ref.ndim), axis=tuple(range(ref.ndim)))
    noise = rng.random(shape) < 0.02
    pred[noise] = rng.integers(0, 4, size=noise.sum())
    spacing = tuple(rng.uniform(0.5, 3.0, size=ref.ndim))
    for convention in ("synapse", "strict"):
        assert_matches_medpy(pred, ref, [1, 2, 3, 4], spacing, convention,
                             tol_nsd=float(rng.uniform(0.5, 3)))


# --- interface -----------------------------------------------------------------------------

def test_rows_columns_and_inputs_untouched():
    pred, ref = squares_2d()
    pred_before, ref_before = pred.copy(), ref.copy()
    df = evaluate_case(pred, ref, {1: "square", 7: "absent"}, threads=2)
    assert list(df["label"]) == [1, 7] and list(df["organ"]) == ["square", "absent"]
    assert {"status", "n_pred", "n_ref", "n_overlap", "spacing", "convention"} <= set(df.columns)
    assert df.loc[0, "n_overlap"] == 3 and df.loc[0, "spacing"] == (1.0, 1.0)
    np.testing.assert_array_equal(pred, pred_before)
    np.testing.assert_array_equal(ref, ref_before)
    bools = evaluate_case(pred.astype(bool), ref.astype(bool), [1])
    assert bools.loc[0, "dice"] == df.loc[0, "dice"]


@pytest.mark.parametrize("kwargs, error", [
    (dict(convention="monai"), ValueError),
    (dict(spacing=(1.0,)), ValueError),
    (dict(spacing=(1.0, 0.0)), ValueError),
    (dict(labels=[0, 1]), ValueError),
])
def test_bad_arguments(kwargs, error):
    pred, ref = squares_2d()
    args = dict(labels=[1]) | kwargs
    with pytest.raises(error):
        evaluate_case(pred, ref, **args)


def test_bad_volumes():
    pred, ref = squares_2d()
    with pytest.raises(ValueError, match="shapes differ"):
        evaluate_case(pred, ref[:5], [1])
    with pytest.raises(TypeError, match="integer"):
        evaluate_case(pred.astype(float), ref, [1])


# --- slow: a full-resolution real mask -----------------------------------------------------

@needs_totalseg
@pytest.mark.slow
@pytest.mark.parametrize("convention", ["synapse", "strict"])
def test_full_resolution_real_mask(convention):
    """512 x 512 x 20 real CT mask against an edited copy (shift, erosion), Dice and HD95."""
    import SimpleITK as sitk

    from bench.engine.metrics_medpy import TOTALSEG_TO_SYNAPSE

    image = sitk.ReadImage(str(TOTALSEG / "seg-ct-dicom.nii.gz"))
    lut = np.zeros(256, dtype=np.uint8)
    for synapse_id, totalseg_id in TOTALSEG_TO_SYNAPSE.items():
        lut[totalseg_id] = synapse_id
    ref = lut[sitk.GetArrayFromImage(image)]
    spacing = tuple(reversed(image.GetSpacing()))
    pred = np.roll(ref, (0, 3, -2), axis=(0, 1, 2))
    liver = pred == 5
    pred[liver & ~binary_erosion(liver, iterations=2)] = 0
    ours = evaluate_case(pred, ref, LABELS, spacing=spacing, convention=convention)
    theirs = evaluate_case_medpy(pred, ref, LABELS,
                                 spacing=spacing if convention == "strict" else None)
    present = (ours["status"] == BOTH_PRESENT).to_numpy()
    assert present.sum() >= 4
    for metric in ("dice", "hd95"):
        np.testing.assert_allclose(ours[metric][present], theirs[metric][present],
                                   rtol=0, atol=TOL)
