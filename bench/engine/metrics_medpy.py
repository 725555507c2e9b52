"""The official Synapse evaluation on medpy: the trusted reference for ``bench.engine.metrics``.

Slow by design (medpy computes a Euclidean distance transform over the whole volume for
every directed distance), so it is used by the tests and the benchmark, never by the engine.
Also loads the real TotalSegmentator mask pair the tests and the benchmark check against.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from medpy.metric import binary

# medpy's directed surface distances (a module-private function, called, not copied): the
# reference for the NSD, which medpy does not provide.
_medpy_surface_distances = getattr(binary, "__surface_distances")

# Synapse id <- TotalSegmentator "total" id (shared/data/totalseg-example/README.md).
TOTALSEG_TO_SYNAPSE: dict[int, int] = {1: 52, 2: 4, 3: 3, 4: 2, 5: 5, 6: 7, 7: 1, 8: 6}


def calculate_metric_percase(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and HD95 (voxel units) of one organ exactly as the official Swin-Unet and
    TransUNet ``calculate_metric_percase``, except that the inputs are not modified."""
    pred = np.asarray(pred) > 0
    gt = np.asarray(gt) > 0
    if pred.sum() > 0 and gt.sum() > 0:
        return float(binary.dc(pred, gt)), float(binary.hd95(pred, gt))
    if pred.sum() > 0 and gt.sum() == 0:
        return 1.0, 0.0
    return 0.0, 0.0


def nsd_medpy(pred: np.ndarray, gt: np.ndarray, tolerance: float,
              spacing: Sequence[float] | None = None) -> float:
    """Normalised surface Dice from medpy's surface distances: the fraction of the surface
    voxels of both masks that lie within ``tolerance`` of the other mask's surface."""
    d1 = _medpy_surface_distances(pred, gt, spacing, 1)
    d2 = _medpy_surface_distances(gt, pred, spacing, 1)
    return (np.count_nonzero(d1 <= tolerance) + np.count_nonzero(d2 <= tolerance)) / (
        d1.size + d2.size)


def evaluate_case_medpy(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int] | Mapping[int, str],
    spacing: Sequence[float] | None = None,
    all_metrics: bool = False,
    nsd_tolerance: float = 2.0,
) -> pd.DataFrame:
    """One row per label (``label``, ``dice``, ``hd95``) from medpy, the official way.

    With ``spacing=None`` this is the official procedure (``calculate_metric_percase`` per
    label). With a spacing, medpy measures distances in mm; the empty-mask rows still follow
    the official rules. ``all_metrics`` adds medpy's ``hd``, ``asd``, ``assd``, the NSD at
    ``nsd_tolerance`` and ``hd95_max`` (the larger directed 95th percentile of medpy's surface
    distances) for labels present in both masks (NaN otherwise); it is slow.
    """
    rows = []
    for label in labels:
        p, g = pred == label, ref == label
        row: dict[str, float] = {"label": int(label)}
        both_present = bool(p.any() and g.any())
        if spacing is None or not both_present:
            row["dice"], row["hd95"] = calculate_metric_percase(p, g)
        else:
            row["dice"] = float(binary.dc(p, g))
            row["hd95"] = float(binary.hd95(p, g, voxelspacing=spacing))
        if all_metrics:
            if both_present:
                row["hd"] = float(binary.hd(p, g, voxelspacing=spacing))
                row["asd"] = float(binary.asd(p, g, voxelspacing=spacing))
                row["assd"] = float(binary.assd(p, g, voxelspacing=spacing))
                row["nsd"] = float(nsd_medpy(p, g, nsd_tolerance, spacing))
                row["hd95_max"] = float(max(np.percentile(_medpy_surface_distances(p, g, spacing, 1), 95),
                                            np.percentile(_medpy_surface_distances(g, p, spacing, 1), 95)))
            else:
                row.update(hd=np.nan, asd=np.nan, assd=np.nan, nsd=np.nan, hd95_max=np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def load_totalseg_pair(directory: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The TotalSegmentator example as a Synapse-labelled pair ``(ref, pred, spacing)``.

    ``ref`` is seg-total (normal model), ``pred`` seg-total-fast (fast model), both
    remapped to Synapse ids with every other label set to 0; arrays are in SimpleITK's
    (z, y, x) order and ``spacing`` is given in that same order, in mm.
    """
    import SimpleITK as sitk  # a medpy dependency; imported here as only this loader needs it

    lut = np.zeros(256, dtype=np.uint8)
    for synapse_id, totalseg_id in TOTALSEG_TO_SYNAPSE.items():
        lut[totalseg_id] = synapse_id
    volumes = []
    for name in ("seg-total.nii.gz", "seg-total-fast.nii.gz"):
        image = sitk.ReadImage(str(Path(directory) / name))
        array = sitk.GetArrayFromImage(image)
        if array.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8 TotalSegmentator labels, got {array.dtype}")
        volumes.append(lut[array])
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))  # (x, y, z) -> (z, y, x)
    return volumes[0], volumes[1], spacing
