"""Label maps: raw label ids of a source dataset -> the benchmark's class ids.

A map knows every id its source may contain (``source_ids``). Known ids it does not map become
background; an id outside ``source_ids`` is an error, because it means the wrong map (or a
corrupt label file), not an organ to drop silently.

Shipped maps: ``btcv`` (raw BTCV / Synapse ids 0..13 -> the eight Synapse organs) and
``totalsegmentator`` (the "total" task, ids 0..117). A YAML file may define others::

    # my-map.yaml
    organs: {1: liver, 2: spleen}      # target id -> class name (default: the Synapse organs)
    map: {5: 1, 1: 2}                  # source id -> target id
    source_ids: 0-117                  # optional, "lo-hi" or a list; default: 0 and the map's keys

Source ids are label values of at most 16 bits (0..65535): a range beyond that is refused where the
file is read, before a set or lookup table of every id is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from bench.data.organs import SYNAPSE_ORGANS
from bench.errors import BenchError

MAX_SOURCE_ID = 65535  # 16-bit label values; every id is held in a set and a lookup table

@dataclass(frozen=True)
class LabelMap:
    name: str
    mapping: dict[int, int]  # source id -> target id (unlisted known ids -> 0)
    source_ids: frozenset[int]
    organs: dict[int, str]  # target id -> class name

    def apply(self, label: np.ndarray, where: str) -> np.ndarray:
        """Remap a raw label array (uint8 out); unknown or non-integer values raise BenchError."""
        if label.dtype.kind == "f":
            if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
                raise BenchError(f"{where}: label values are not integers (is this an image, not a label?)")
        values = label_values(label)
        bad = sorted(set(values) - self.source_ids)
        if bad:
            shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
            raise BenchError(f"{where}: label values {shown} are outside label map '{self.name}' "
                             f"(which knows {_describe(self.source_ids)})")
        lut = np.zeros(max(values) + 1, np.uint8)
        for src, dst in self.mapping.items():
            if src < len(lut):
                lut[src] = dst
        return lut[label if label.dtype.kind in "iu" else label.astype(np.int32)]


def label_values(label: np.ndarray) -> list[int]:
    """The distinct values of an integer-valued array (bincount: much faster than np.unique)."""
    flat = label.ravel() if label.dtype.kind in "iu" else label.ravel().astype(np.int64)
    lo = int(flat.min()) if flat.size else 0
    if lo < 0 or int(flat.max()) > 1 << 20 or flat.dtype == np.uint64:
        return [int(v) for v in np.unique(flat)]
    return np.flatnonzero(np.bincount(flat)).tolist()


# Raw BTCV ids: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver,
# 7 stomach, 8 aorta, 9 IVC, 10 portal/splenic vein, 11 pancreas, 12/13 adrenal glands.
BTCV = LabelMap("btcv", {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}, frozenset(range(14)),
                dict(SYNAPSE_ORGANS))
# TotalSegmentator v2 "total" task (117 classes); see ../shared/data/totalseg-example/README.md.
TOTALSEGMENTATOR = LabelMap("totalsegmentator", {52: 1, 4: 2, 3: 3, 2: 4, 5: 5, 7: 6, 1: 7, 6: 8},
                            frozenset(range(118)), dict(SYNAPSE_ORGANS))
BUILTIN = {m.name: m for m in (BTCV, TOTALSEGMENTATOR)}


def load_label_map(spec: str) -> LabelMap:
    """A shipped map by name, or a YAML file."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        raise BenchError(f"unknown label map '{spec}': use {', '.join(BUILTIN)} or a YAML file")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise BenchError(f"{path}: invalid YAML label map ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise BenchError(f"{path}: a label map is a mapping with keys organs, map, source_ids")
    unknown = set(doc) - {"organs", "map", "source_ids"}
    if unknown:
        raise BenchError(f"{path}: unknown key '{sorted(unknown)[0]}' (allowed: organs, map, source_ids)")
    organs = _int_dict(doc.get("organs", SYNAPSE_ORGANS), path, "organs", str)
    mapping = _int_dict(doc.get("map"), path, "map", int)
    if not organs or min(organs) < 1 or max(organs) > 255:
        raise BenchError(f"{path}: organs ids must be 1..255")
    stray = sorted(set(mapping.values()) - set(organs) - {0})
    if stray:
        raise BenchError(f"{path}: map targets {stray} are not in organs")
    source = _source_ids(doc.get("source_ids"), path) if "source_ids" in doc else {0, *mapping}
    missing = sorted(set(mapping) - source)
    if missing:
        raise BenchError(f"{path}: map keys {missing} are not in source_ids")
    return LabelMap(path.stem, mapping, frozenset(source), organs)


def _int_dict(value, path: Path, key: str, kind) -> dict:
    if not isinstance(value, dict) or not value:
        raise BenchError(f"{path}: '{key}' must be a non-empty mapping")
    try:
        out = {int(k): kind(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise BenchError(f"{path}: '{key}' must map integer ids to {kind.__name__} values") from None
    if min(out) < 0 or (kind is int and (min(out.values()) < 0 or max(out.values()) > 255)):
        raise BenchError(f"{path}: '{key}' ids must be >= 0 (and targets at most 255)")
    if key == "map" and max(out) > MAX_SOURCE_ID:
        raise BenchError(f"{path}: 'map' source id {max(out)} is beyond 16-bit label values (0..{MAX_SOURCE_ID})")
    return out


def _source_ids(value, path: Path) -> set[int]:
    """The ids of 'lo-hi' or a list, each within 0..MAX_SOURCE_ID (checked before a range is expanded)."""
    rule = f"'source_ids' must be 'lo-hi' (lo <= hi) or a list of integers, within 0..{MAX_SOURCE_ID}"
    try:
        span = isinstance(value, str) and "-" in value
        if span:
            lo, hi = (int(v) for v in value.split("-", 1))
            bounds = [lo, hi] if lo <= hi else []
        else:
            bounds = [int(value)] if isinstance(value, str | int) else [int(v) for v in value]
    except (TypeError, ValueError):
        bounds = []
    if not bounds or min(bounds) < 0 or max(bounds) > MAX_SOURCE_ID:
        raise BenchError(f"{path}: {rule}" + (f", got {value}" if isinstance(value, str | int) else ""))
    return set(range(bounds[0], bounds[1] + 1)) if span else set(bounds)


def _describe(ids: frozenset[int]) -> str:
    lo, hi = min(ids), max(ids)
    return f"{lo}..{hi}" if len(ids) == hi - lo + 1 else ", ".join(map(str, sorted(ids)))
