"""Post-processing of predicted label volumes (``evaluation.postprocess``), applied after inference.

- ``lcc``: each foreground class keeps only its largest connected component in 3D (full, 26-neighbour
  connectivity; 8-neighbour on a 2D image); the other components become background. This is what
  nnU-Net's "remove all but the largest component" does, here for every class unconditionally
  (nnU-Net keeps it only where it improved the validation Dice).
- ``lcc+fill``: ``lcc``, then each class's holes are filled slice by slice: background pixels that
  a class encloses in a slice become that class. Only background is filled, so an organ that
  surrounds another keeps it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

POSTPROCESSING = ("none", "lcc", "lcc+fill")


def largest_components(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every foreground class reduced to its largest connected component."""
    out = labels.copy()
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for cls in np.unique(labels):
        if cls == 0:
            continue
        components, n = ndimage.label(labels == cls, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0  # the background of this class's mask
        out[(components != 0) & (components != sizes.argmax())] = 0
    return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """``labels`` with each class's enclosed background filled, slice by slice (D x H x W, or H x W)."""
    vol = labels[None] if labels.ndim == 2 else labels
    out = vol.copy()
    for z, plane in enumerate(vol):
        for cls in np.unique(plane):
            if cls == 0:
                continue
            filled = ndimage.binary_fill_holes(plane == cls)
            out[z][filled & (out[z] == 0)] = cls
    return out[0] if labels.ndim == 2 else out


def postprocess(labels: np.ndarray, mode: str) -> np.ndarray:
    """``labels`` post-processed as ``mode`` (one of ``POSTPROCESSING``) says; ``none`` returns it as it is."""
    if mode not in POSTPROCESSING:
        raise ValueError(f"unknown post-processing {mode!r}; one of {', '.join(POSTPROCESSING)}")
    if mode == "none":
        return labels
    out = largest_components(labels)
    return fill_holes(out) if mode == "lcc+fill" else out
