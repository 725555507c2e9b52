"""Per-case, per-label segmentation metrics: Dice, HD95 (two definitions), HD, ASD, ASSD and NSD.

One call, ``evaluate_case``, scores every label of one case and returns one row per label.
The work is split in two steps so that the empty-mask rules stay visible:

1. counting (``_count_label``): voxel counts and the two arrays of directed surface
   distances, computed once per label and independent of any convention;
2. reducing (``_reduce``): the metric values, from those counts, under a named convention
   (``"synapse"`` or ``"strict"``) whose empty-mask rules are the tables ``SYNAPSE_RULES``
   and ``STRICT_RULES`` below.

Surfaces, distances and HD95 follow medpy 0.5 (``medpy.metric.binary``) exactly: a surface
voxel is a foreground voxel with at least one face neighbour (connectivity 1) that is
background or outside the array; the distance of a surface voxel is the Euclidean distance,
scaled per axis by the spacing, to the nearest surface voxel of the other mask; HD95 is the
95th percentile (numpy's default linear interpolation) of both directed distance arrays
concatenated. ``hd95_max`` is the field's other HD95: the larger of the two directed 95th
percentiles, as MONAI's ``compute_hausdorff_distance(percentile=95)``, DeepMind's
``surface-distance`` and nnU-Net-era papers compute it (same surfaces, same distances).
``nsd`` counts surface voxels (MONAI's ``compute_surface_dice`` with ``use_subvoxels=False``),
not the surface areas of Nikolov et al. ``bench.engine.metrics_medpy`` holds the medpy-based
reference these values are tested against (equal within 1e-6; in practice bit for bit).

Why it is fast (about two orders of magnitude faster than medpy on a Synapse-sized volume):
one pass finds every label's bounding box; each label is then handled inside the bounding
box of its own masks only; surfaces are computed once per mask and reused for every
metric; nearest-surface distances come from a k-d tree over the surface voxels instead of
a Euclidean distance transform over the whole volume; labels run in parallel threads.
Cropping is exact: everything outside a mask's bounding box is background, which is also
how medpy treats the outside of the volume, so the crop does not change which voxels are
surface, and a nearest-neighbour search over all surface voxels does not depend on any box.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import find_objects
from scipy.spatial import cKDTree

CONVENTIONS = ("synapse", "strict")

# Which empty-mask case applied to a label (the ``status`` column).
BOTH_PRESENT = "both_present"  # label in prediction and reference: all metrics are measured
PRED_ONLY = "pred_only"  # false positive: predicted, absent from the reference
REF_ONLY = "ref_only"  # missed organ: in the reference, not predicted
BOTH_EMPTY = "both_empty"  # absent from both (correctly not predicted)
STATUSES = (BOTH_PRESENT, PRED_ONLY, REF_ONLY, BOTH_EMPTY)

METRICS = ("dice", "hd95", "hd95_max", "hd", "asd", "assd", "nsd")
DISTANCE_METRICS = ("hd95", "hd95_max", "hd", "asd", "assd")

WORST = "worst"  # placeholder in a rule table: the case's worst-case distance, see below

# The official Swin-Unet / TransUNet ``calculate_metric_percase``: Dice 1 and HD95 0 for a
# false positive, Dice 0 and HD95 0 for a missed organ and for an organ absent from both.
# The official code has no HD95_max/HD/ASD/ASSD/NSD; they follow HD95 and Dice of the same row.
SYNAPSE_RULES: dict[str, dict[str, float]] = {
    PRED_ONLY: dict(dice=1.0, hd95=0.0, hd95_max=0.0, hd=0.0, asd=0.0, assd=0.0, nsd=1.0),
    REF_ONLY: dict(dice=0.0, hd95=0.0, hd95_max=0.0, hd=0.0, asd=0.0, assd=0.0, nsd=0.0),
    BOTH_EMPTY: dict(dice=0.0, hd95=0.0, hd95_max=0.0, hd=0.0, asd=0.0, assd=0.0, nsd=0.0),
}

# Every error costs: a false positive or a missed organ scores Dice 0, NSD 0 and the
# worst-case distance (``volume_diagonal``); an organ absent from both is undefined (NaN),
# excluded from means and counted through its status.
STRICT_RULES: dict[str, dict[str, float | str]] = {
    PRED_ONLY: dict(dice=0.0, hd95=WORST, hd95_max=WORST, hd=WORST, asd=WORST, assd=WORST, nsd=0.0),
    REF_ONLY: dict(dice=0.0, hd95=WORST, hd95_max=WORST, hd=WORST, asd=WORST, assd=WORST, nsd=0.0),
    BOTH_EMPTY: dict(dice=math.nan, hd95=math.nan, hd95_max=math.nan, hd=math.nan, asd=math.nan,
                     assd=math.nan, nsd=math.nan),
}


@dataclass(frozen=True)
class LabelCounts:
    """Everything measured for one label, before any convention is applied."""

    label: int
    n_pred: int  # foreground voxels in the prediction
    n_ref: int  # foreground voxels in the reference
    n_overlap: int  # voxels foreground in both
    pred_to_ref: np.ndarray  # distance of each prediction surface voxel to the reference surface
    ref_to_pred: np.ndarray  # distance of each reference surface voxel to the prediction surface

    @property
    def status(self) -> str:
        if self.n_pred and self.n_ref:
            return BOTH_PRESENT
        if self.n_pred:
            return PRED_ONLY
        return REF_ONLY if self.n_ref else BOTH_EMPTY


def volume_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the volume's extent (``shape * spacing``): the strict worst-case distance.

    It exceeds the distance between any two voxel centres of the volume, so a missed organ
    or a false positive always scores worse than any prediction that can be measured.
    """
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=False))))


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels as medpy defines them: ``mask ^ binary_erosion(mask)`` with a
    connectivity-1 structure and the outside of the array counted as background."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = mask.copy()
    centre = (slice(1, -1),) * mask.ndim
    for axis in range(mask.ndim):
        for lo, hi in ((0, -2), (2, None)):  # the neighbour before, then after, along `axis`
            shifted = list(centre)
            shifted[axis] = slice(lo, hi)
            interior &= padded[tuple(shifted)]
    return mask & ~interior


def directed_distances(
    from_points: np.ndarray, to_points: np.ndarray, coincident: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """Distance from each of ``from_points`` to the nearest of ``to_points`` (N x ndim voxel
    indices), scaled per axis by ``spacing``; ``coincident`` flags the ``from_points`` that
    are also in ``to_points``, which are at distance 0 and skip the search.

    A k-d tree over ``to_points`` only picks the nearest point; the distance is then
    recomputed from the integer offset in the order scipy's ``distance_transform_edt`` uses
    (offset times spacing, squared, summed over axes, square root), so that the values
    equal medpy's bit for bit, in the same order.
    """
    distances = np.zeros(len(from_points), dtype=np.float64)
    far = ~coincident
    if not far.any():
        return distances
    queries = from_points[far]
    # An unbalanced, non-compacted tree builds faster; the nearest point found is the same.
    tree = cKDTree(to_points * spacing, balanced_tree=False, compact_nodes=False)
    _, nearest = tree.query(queries * spacing, k=1)
    offsets = (queries - to_points[nearest]).T.astype(np.float64)
    offsets *= spacing[:, None]
    np.multiply(offsets, offsets, out=offsets)
    distances[far] = np.sqrt(np.add.reduce(offsets, axis=0))
    return distances


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=False))


def _count_label(
    pred: np.ndarray,
    ref: np.ndarray,
    label: int,
    pred_box: tuple[slice, ...] | None,
    ref_box: tuple[slice, ...] | None,
    spacing: np.ndarray,
) -> LabelCounts:
    """Counts and surface distances of one label, working inside its bounding boxes."""
    if not (pred_box and ref_box):
        empty = np.empty(0, dtype=np.float64)
        n_pred = int(np.count_nonzero(pred[pred_box] == label)) if pred_box else 0
        n_ref = int(np.count_nonzero(ref[ref_box] == label)) if ref_box else 0
        return LabelCounts(label, n_pred, n_ref, 0, empty, empty)

    box = _union(pred_box, ref_box)
    pred_mask = pred[box] == label
    ref_mask = ref[box] == label
    n_pred, n_ref = int(np.count_nonzero(pred_mask)), int(np.count_nonzero(ref_mask))
    n_overlap = int(np.count_nonzero(pred_mask & ref_mask))

    # Surface voxels in C order, the order medpy lists its distances in.
    pred_surface, ref_surface = surface(pred_mask), surface(ref_mask)
    pred_points, ref_points = np.argwhere(pred_surface), np.argwhere(ref_surface)
    pred_to_ref = directed_distances(pred_points, ref_points,
                                     ref_surface[tuple(pred_points.T)], spacing)
    ref_to_pred = directed_distances(ref_points, pred_points,
                                     pred_surface[tuple(ref_points.T)], spacing)
    return LabelCounts(label, n_pred, n_ref, n_overlap, pred_to_ref, ref_to_pred)


def _reduce(
    counts: LabelCounts, convention: str, nsd_tolerance: float, worst: float
) -> dict[str, float]:
    """Metric values of one label under ``convention`` (distances in the units of
    ``counts``, which the caller chose to match the convention)."""
    status = counts.status
    if status != BOTH_PRESENT:
        rules = SYNAPSE_RULES if convention == "synapse" else STRICT_RULES
        return {m: worst if v == WORST else float(v) for m, v in rules[status].items()}

    # medpy's dc: 2|A&B| / (|A| + |B|)
    dice = 2.0 * counts.n_overlap / float(counts.n_pred + counts.n_ref)
    both = np.hstack((counts.pred_to_ref, counts.ref_to_pred))
    n_within = np.count_nonzero(both <= nsd_tolerance)
    return dict(
        dice=dice,
        hd95=float(np.percentile(both, 95)),  # medpy: both directed sets pooled
        # MONAI / surface-distance: the larger of the two directed percentiles
        hd95_max=float(max(np.percentile(counts.pred_to_ref, 95), np.percentile(counts.ref_to_pred, 95))),
        hd=float(max(counts.pred_to_ref.max(), counts.ref_to_pred.max())),
        asd=float(counts.pred_to_ref.mean()),
        assd=float(both.mean()),
        nsd=n_within / both.size,
    )


def _checked_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers (one per array axis), "
                         f"got {spacing}")
    return spacing


def _as_label_volume(volume: np.ndarray, name: str) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.dtype == np.bool_:
        return volume.view(np.uint8)
    if not np.issubdtype(volume.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label volume, got dtype {volume.dtype}")
    return volume


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int] | Mapping[int, str],
    spacing: Sequence[float] | None = None,
    convention: str = "synapse",
    nsd_tolerance_mm: float = 2.0,
    threads: int | None = None,
) -> pd.DataFrame:
    """Score every label of one case; one row per label, in the order of ``labels``.

    ``pred`` and ``ref`` are integer label volumes of the same shape (2D or 3D), ``spacing``
    the voxel size in mm along each array axis (None: 1 mm). ``labels`` is a sequence of
    positive label ids or a mapping ``{id: organ name}`` (then an ``organ`` column is added).

    ``convention="synapse"`` reproduces the official Swin-Unet / TransUNet evaluation:
    distances in voxels whatever the spacing (which is only recorded), its empty-mask rules
    (``SYNAPSE_RULES``), and ``nsd_tolerance_mm`` applied in voxel units.
    ``convention="strict"`` measures distances and the NSD tolerance in mm and applies
    ``STRICT_RULES``. The ``status`` column names the empty-mask case of each row.

    Columns: label, [organ], status, dice, hd95 (95th percentile of both directed distance
    sets pooled, medpy), hd95_max (the larger of the two directed 95th percentiles, MONAI),
    hd, asd (prediction surface to reference surface, medpy's ``asd``), assd (symmetric,
    medpy's ``assd``), nsd (surface-voxel NSD: fraction of both surfaces' voxels within the
    tolerance of the other surface, MONAI's ``compute_surface_dice(use_subvoxels=False)``),
    n_pred, n_ref, n_overlap (voxel counts), convention, distance_unit, nsd_tolerance,
    spacing. Dice and NSD are fractions in [0, 1].
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")
    pred = _as_label_volume(pred, "pred")
    ref = _as_label_volume(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref shapes differ: {pred.shape} vs {ref.shape}")
    spacing = _checked_spacing(spacing, pred.ndim)
    names = dict(labels) if isinstance(labels, Mapping) else None
    ids = [int(i) for i in labels]
    if not ids or min(ids) < 1 or len(set(ids)) != len(ids):
        raise ValueError(f"labels must be distinct positive ids, got {ids}")

    # The official code ignores the spacing; its distances are in voxels.
    distance_spacing = np.asarray(spacing if convention == "strict" else (1.0,) * pred.ndim)
    worst = volume_diagonal(pred.shape, distance_spacing.tolist())

    all_counts = _count_labels(pred, ref, ids, distance_spacing, threads)
    unit = "mm" if convention == "strict" else "voxel"
    rows = []
    for counts in all_counts:
        row: dict[str, object] = {"label": counts.label}
        if names is not None:
            row["organ"] = names[counts.label]
        row["status"] = counts.status
        row.update(_reduce(counts, convention, nsd_tolerance_mm, worst))
        row.update(n_pred=counts.n_pred, n_ref=counts.n_ref, n_overlap=counts.n_overlap, convention=convention,
                   distance_unit=unit, nsd_tolerance=float(nsd_tolerance_mm), spacing=spacing)
        rows.append(row)
    return pd.DataFrame(rows)


def _count_labels(pred: np.ndarray, ref: np.ndarray, ids: list[int], distance_spacing: np.ndarray,
                  threads: int | None) -> list[LabelCounts]:
    """Each label's voxel counts and surface distances, labels in parallel threads."""
    # One pass over each volume finds every label's bounding box (None when absent).
    top = max(ids)
    pred_boxes = find_objects(pred, max_label=top)
    ref_boxes = find_objects(ref, max_label=top)

    def one(label: int) -> LabelCounts:
        return _count_label(pred, ref, label, pred_boxes[label - 1], ref_boxes[label - 1],
                            distance_spacing)

    workers = min(len(ids), threads or os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, ids))
    return [one(i) for i in ids]
