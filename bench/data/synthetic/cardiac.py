"""Built-in synthetic cardiac MR (``--dataset synthetic-cardiac``): short-axis cine phantoms with ACDC's classes.

Why: ``bench paper swin-unet-acdc`` and any multi-dataset demo need a second dataset that ships
with the code, runs on a CPU and, like the abdomen, needs context: blood (LV, RV, aorta) is as
bright as fat and CSF, and the myocardium as dark as skeletal muscle and liver, so a per-class
intensity window scores poorly (``generate.intensity_oracle_dice``) while the shapes (a bright
disk in a dark ring, a crescent against its septum) are easy to learn.

Layout: what ``bench data prepare-acdc`` writes (``bench.data.layout``: ``train_npz/``,
``test_vol_h5/``, ``lists/``, ``dataset.json`` with classes 1 RV, 2 Myo, 3 LV), with the split
stored in ``splits.json`` (train / val / test patients; val in neither list) and, beside it,
``synth.json``, the generator's manifest that ``is_current`` compares. Two cases per patient,
as in ACDC: end-diastole ``patientNNN_frame01`` and end-systole ``patientNNN_frameKK``.
Images are scaled min-max to [0, 1] per volume, as ACDC's preprocessing does.

Anatomy (mm; x to the image right, y down): the body wall (fat, muscle), lungs with vessels,
spine with CSF, paraspinal muscles, the descending aorta, the liver dome in apical slices, and the
heart: LV cavity with papillary muscles, a myocardial ring (open at the base towards the outflow
tract), the RV crescent with its thin unlabelled wall, epicardial fat. Each patient belongs to one
of ACDC's five groups (DCM, HCM, MINF, NOR, ARV), which sets cavity size, wall thickness,
contraction and RV size; systole shrinks the cavity with the myocardial area kept. Imaging: a
smooth coil bias field, slight blur and Rician noise. Every patient draws from its own Generator
seeded by (seed, patient number), so arrays depend on the seed, the options and the generator
version only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.data import layout
from bench.data.acdc import ACDC
from bench.data.splits import write_splits
from bench.data.synthetic.generate import MANIFEST, manifest_matches, staged

GENERATOR_VERSION = 1  # bump whenever the generated arrays change
GROUPS = ("DCM", "HCM", "MINF", "NOR", "ARV")  # ACDC's groups, in its order of patient numbers
RV, MYO, LV = 1, 2, 3  # ACDC's class ids (bench.data.acdc.ACDC)
DEFAULT_PATIENTS = 30


@dataclass(frozen=True)
class CardiacCase:
    image: np.ndarray  # float32 D x H x W in [0, 1]
    label: np.ndarray  # uint8 D x H x W, ACDC ids
    spacing: tuple[float, float, float]  # (z, y, x) mm


def split_of(patient: int) -> str:
    """ACDC's proportions (70 / 10 / 20 %): every fifth patient from the third tests, every tenth from the fifth
    validates; both draw from every group, since groups are blocks of consecutive patients."""
    return "test" if patient % 5 == 3 else "val" if patient % 10 == 5 else "train"


def group_of(patient: int, patients: int) -> str:
    return GROUPS[min(len(GROUPS) - 1, (patient - 1) * len(GROUPS) // patients)]


def manifest(seed: int = 0, *, size: int = 160, patients: int = DEFAULT_PATIENTS) -> dict:
    """What identifies a generated dataset (equal manifests mean identical arrays); validates the options."""
    if not 48 <= int(size) <= 512 or not 5 <= int(patients) <= 999:
        raise ValueError(f"need 48 <= size <= 512 and 5 <= patients <= 999, got {size}, {patients}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    split = {s: [p for p in range(1, int(patients) + 1) if split_of(p) == s] for s in ("train", "val", "test")}
    return {"generator": "bench.synth.cardiac", "version": GENERATOR_VERSION, "seed": int(seed),
            "options": {"size": int(size), "patients": int(patients)}, "patients": split}


def is_current(out_dir: Path, seed: int = 0, **options) -> bool:
    """True when out_dir holds a finished dataset generated with exactly these settings."""
    return manifest_matches(out_dir, manifest(seed, **options))


def generate(out_dir: Path, seed: int = 0, **options) -> Path:
    """Write the synthetic cardiac dataset to out_dir (replacing what is there) and return out_dir.

    Options: size (in-plane pixels, default 160 over a 300-380 mm field of view) and patients
    (default 30: 21 train, 3 validation, 6 test; 60 cases). Built next to out_dir and renamed
    into place, so an interrupted run never leaves a half-written dataset.
    """
    meta = manifest(seed, **options)
    n = meta["options"]["patients"]
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    train_slices, cases = [], {}
    with staged(out_dir) as tmp:
        for p in range(1, n + 1):
            which = split_of(p)
            for name, case in make_patient(patient_rng(seed, p), group_of(p, n), meta["options"]["size"], p).items():
                names = layout.write_case(tmp, name, case.image, case.label, case.spacing)
                split[which].append(name)
                train_slices += names if which == "train" else []
                cases[name] = {"depth": int(case.image.shape[0]), "spacing": list(case.spacing),
                               "group": group_of(p, n)}
        layout.write_lists(tmp, train_slices, split["test"])
        layout.write_meta(tmp, ACDC.organs, source={"kind": "synthetic-cardiac", "seed": int(seed),
                                                   "version": GENERATOR_VERSION})
        write_splits(tmp, {"seed": None, **split})
        (tmp / MANIFEST).write_text(json.dumps({**meta, "cases": cases}, indent=1) + "\n")
    return Path(out_dir)


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    """The Generator of one patient (both frames), from the dataset seed and the patient number only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 1_000_003, int(patient)]))


# --- the phantom ------------------------------------------------------------------------------

# Per group: LV cavity radius at end-diastole (mm), wall thickness (mm), systolic radius factor, RV scale.
_GROUP_SHAPE = {"NOR": ((22, 27), (7, 10), (0.60, 0.72), (1.0, 1.15)),
                "DCM": ((29, 36), (5, 8), (0.82, 0.93), (1.0, 1.15)),
                "HCM": ((18, 24), (12, 17), (0.45, 0.60), (0.9, 1.05)),
                "MINF": ((25, 32), (6, 9), (0.75, 0.88), (1.0, 1.15)),
                "ARV": ((21, 26), (7, 10), (0.62, 0.75), (1.35, 1.6))}


@dataclass(frozen=True)
class _Grid:
    """The in-plane grid (mm, image centre 0) and the slice positions along the long axis (mm from the base)."""

    x: np.ndarray  # 1 x 1 x W
    y: np.ndarray  # 1 x H x 1
    z: np.ndarray  # D x 1 x 1
    spacing: tuple[float, float, float]

    def crop(self, x0: float, x1: float, y0: float, y1: float) -> tuple[_Grid, tuple[slice, slice, slice]]:
        """The part of the grid within x0..x1, y0..y1 (mm), and where it sits in the full arrays."""
        cols, rows = np.flatnonzero((self.x >= x0) & (self.x <= x1)), np.flatnonzero((self.y >= y0) & (self.y <= y1))
        at = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return _Grid(self.x[..., at[2]], self.y[:, at[1]], self.z, self.spacing), at


def _grid(rng: np.random.Generator, size: int, length: float) -> _Grid:
    fov, slice_mm = rng.uniform(300.0, 380.0), rng.uniform(6.5, 10.0)
    depth = max(3, int(round(length * rng.uniform(0.95, 1.05) / slice_mm)) + 1)
    c = (np.arange(size) - (size - 1) / 2) * fov / size
    z = rng.uniform(-2.0, 4.0) + np.arange(depth) * slice_mm
    return _Grid(c[None, None, :].astype(np.float32), c[None, :, None].astype(np.float32),
                 z[:, None, None].astype(np.float32), (float(slice_mm), fov / size, fov / size))


def _ellipse(g: _Grid, cx, cy, a, b, angle: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (< 1 inside); centre and semi-axes may vary per slice (D x 1 x 1)."""
    f32 = np.float32
    dx, dy = g.x - np.asarray(cx, f32), g.y - np.asarray(cy, f32)  # float32 throughout: half the memory traffic
    ca, sa, a, b = f32(np.cos(angle)), f32(np.sin(angle)), np.asarray(a, f32), np.asarray(b, f32)
    return np.sqrt(((dx * ca + dy * sa) / a) ** 2 + ((-dx * sa + dy * ca) / b) ** 2)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    """Random field of unit spread, smooth in-plane over ~sigma_px pixels."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (0, sigma_px, sigma_px))
    return f / (f.std() + 1e-6)


class _Canvas:
    """Intensity (blood = 1 before imaging) and label volumes; later strokes win."""

    def __init__(self, value: np.ndarray, label: np.ndarray):
        self.value, self.label = value, label

    @staticmethod
    def empty(shape: tuple[int, ...]) -> _Canvas:
        return _Canvas(np.zeros(shape, np.float32), np.zeros(shape, np.uint8))

    def copy(self) -> _Canvas:
        return _Canvas(self.value.copy(), self.label.copy())

    def view(self, at: tuple[slice, ...]) -> _Canvas:
        """A canvas over a box of this one: painting it paints here (numpy views)."""
        return _Canvas(self.value[at], self.label[at])

    def paint(self, mask: np.ndarray, value, label: int | None = 0) -> None:
        mask = np.broadcast_to(mask, self.value.shape)
        np.copyto(self.value, np.broadcast_to(value, self.value.shape), where=mask)
        if label is not None:
            self.label[mask] = label


@dataclass(frozen=True)
class _Tissue:
    """This patient's tissue intensities relative to blood, as a bSSFP cine shows them."""

    fat: float
    muscle: float
    myo: float
    liver: float
    lung: float
    csf: float
    marrow: float
    media: float  # mediastinal soft tissue

    @staticmethod
    def draw(rng: np.random.Generator) -> _Tissue:
        muscle = rng.uniform(0.24, 0.40)
        return _Tissue(fat=rng.uniform(0.80, 1.08), muscle=muscle, myo=muscle * rng.uniform(0.92, 1.12),
                       liver=muscle * rng.uniform(0.9, 1.3), lung=rng.uniform(0.03, 0.08),
                       csf=rng.uniform(0.85, 1.1), marrow=rng.uniform(0.45, 0.65), media=rng.uniform(0.45, 0.7))


@dataclass(frozen=True)
class _Heart:
    """One cardiac phase: LV cavity radius and wall at the base, where the base sits (mm), the RV's scale."""

    radius: float
    wall: float
    base: float
    rv: float


@dataclass(frozen=True)
class _Anatomy:
    """One patient, shared by both frames: body, heart position and shape, tissue contrast."""

    tissue: _Tissue
    body: tuple[float, float, float, float, float]  # centre x, y, semi-axes, angle (rad)
    fat: float
    muscle: float
    pect: float
    heart: tuple[float, float, float, float]  # centre x, y; drift x, y over the long axis
    length: float  # base to apex, mm (end-diastole)
    ellipticity: tuple[float, float]
    rv_dir: float  # direction from the LV centre to the RV, rad (x right, y down)
    rv_shape: tuple[float, float, float, float]  # offset, semi-axis along rv_dir and across it, apical end
    infarct: tuple[float, float, float]  # centre angle, half-width (rad), thinning (0..1)
    spine: tuple[float, float]
    aorta: tuple[float, float, float]
    liver: tuple[float, float, float]  # where it starts (fraction of the long axis), centre offset x, y
    stomach: tuple[float, float, float] | None


def _anatomy(rng: np.random.Generator, group: str) -> tuple[_Anatomy, _Heart, _Heart]:
    (r0, r1), (t0, t1), (c0, c1), (v0, v1) = _GROUP_SHAPE[group]
    radius, wall, squeeze, rv = rng.uniform(r0, r1), rng.uniform(t0, t1), rng.uniform(c0, c1), rng.uniform(v0, v1)
    a_body, b_body = rng.uniform(140, 175), rng.uniform(95, 125)
    body = (rng.uniform(-10, 10), rng.uniform(0, 15), a_body, b_body, np.deg2rad(rng.uniform(-12, 12)))
    hx, hy = rng.uniform(-15, 15), rng.uniform(-20, 10)
    inner_b = b_body - 30
    spine = (body[0] + rng.uniform(-12, 12), body[1] + inner_b - rng.uniform(25, 40))
    anat = _Anatomy(
        tissue=_Tissue.draw(rng), body=body, fat=rng.uniform(6, 28), muscle=rng.uniform(6, 13),
        pect=rng.uniform(4, 16), heart=(hx, hy, rng.normal(0, 6), rng.normal(0, 6)),
        length=rng.uniform(78, 100), ellipticity=(rng.uniform(0, 0.1), rng.uniform(0, np.pi)),
        rv_dir=np.pi + rng.uniform(0.05, 0.5),
        rv_shape=(rng.uniform(0.3, 0.5), rng.uniform(0.95, 1.15), rng.uniform(1.15, 1.35), rng.uniform(0.72, 0.9)),
        infarct=(rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.7) if group == "MINF" else 0.0),
        spine=spine, aorta=(spine[0] + rng.uniform(18, 30), spine[1] - rng.uniform(24, 32), rng.uniform(9, 13)),
        liver=(rng.uniform(0.35, 0.7), rng.uniform(-75, -40), rng.uniform(45, 75)),
        stomach=(rng.uniform(45, 80), rng.uniform(50, 80), rng.uniform(0.0, 1.0)) if rng.random() < 0.6 else None)
    ed = _Heart(radius, wall, 0.0, rv)
    r_es = radius * squeeze
    wall_es = float(np.sqrt(r_es**2 + (radius + wall) ** 2 - radius**2) - r_es)  # myocardial area kept
    es = _Heart(r_es, wall_es, rng.uniform(6, 14), rv * rng.uniform(0.72, 0.88) ** (1 if group != "ARV" else 0.5))
    return anat, ed, es


def _body(g: _Grid, cv: _Canvas, a: _Anatomy, fine: np.ndarray) -> np.ndarray:
    """Skin fat, chest wall muscle (thicker in front), the chest cavity; returns the cavity mask."""
    bx, by, ab, bb, ang = a.body
    t = a.tissue
    cv.paint(_ellipse(g, bx, by, ab, bb, ang) < 1, t.fat * (1 + 0.05 * fine))
    wall = a.fat + a.muscle
    cv.paint(_ellipse(g, bx, by, ab - a.fat, bb - a.fat, ang) < 1, t.muscle * (1 + 0.06 * fine))
    cavity = _ellipse(g, bx, by + a.pect / 2, ab - wall, bb - wall - a.pect / 2, ang) < 1
    cv.paint(cavity, t.media * (1 + 0.08 * fine))
    return cavity


def _thorax(g: _Grid, cv: _Canvas, a: _Anatomy, rng: np.random.Generator, fine: np.ndarray,
            cavity: np.ndarray, s: np.ndarray) -> None:
    """Lungs with vessels, spine, CSF, paraspinal muscles, the descending aorta, liver and stomach."""
    t = a.tissue
    hx, hy = a.heart[:2]
    for side, dx, ax in ((1, 95, 62), (-1, -90, 68)):
        lung = (_ellipse(g, hx + dx, hy + 5, ax, 95, side * 0.2) < 1) & cavity
        cv.paint(lung, t.lung * (1 + 0.3 * fine))
        vessels = lung & (_smooth(rng, cv.value.shape, 1.0) > 2.4)  # vessels cut across: small bright dots
        cv.paint(vessels, rng.uniform(0.35, 0.9))
    sx, sy = a.spine
    for s_ in (-1, 1):
        cv.paint(_ellipse(g, sx + s_ * 30, sy + 28, 24, 17, s_ * 0.3) < 1, t.muscle * (1 + 0.06 * fine))
    cv.paint(_ellipse(g, sx, sy, 18, 16) < 1, t.marrow * (1 + 0.1 * fine))
    cv.paint(_ellipse(g, sx, sy + 24, 7, 6) < 1, t.csf)
    ax_, ay_, ar = a.aorta
    cv.paint(_ellipse(g, ax_, ay_, ar, ar) < 1, rng.uniform(0.8, 1.0) * (1 + 0.03 * fine))
    start, lx, ly = a.liver
    grow = np.sqrt(np.clip((s - start) / (1.25 - start), 0, 1))
    liver = (_ellipse(g, hx + lx, hy + ly, 95 * grow + 1e-3, 70 * grow + 1e-3, -0.3) < 1) & cavity
    cv.paint(liver, t.liver * (1 + 0.06 * fine))
    if a.stomach is not None and (s > start).any():
        ox, oy, content = a.stomach
        stomach = (_ellipse(g, hx + ox, hy + oy, 40 * grow + 1e-3, 30 * grow + 1e-3) < 1) & cavity
        cv.paint(stomach, (0.75 + 0.3 * content if content > 0.3 else 0.03) * (1 + 0.05 * fine))


def _angle_to(theta: np.ndarray, centre: float) -> np.ndarray:
    """Unsigned angular distance (rad, 0..pi)."""
    return np.abs((theta - np.float32(centre) + np.pi) % (2 * np.pi) - np.pi)


def _lv(g: _Grid, a: _Anatomy, h: _Heart, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Normalised radii of the LV cavity and epicardium, the in-plane angle, and the LV centre per slice."""
    hx, hy, drx, dry = a.heart
    cx, cy = hx + drx * s, hy + dry * s
    e, e_ang = a.ellipticity
    sp = np.clip(s, 0, None)
    r_cav = h.radius * np.sqrt(np.clip(1 - (sp / 0.97) ** 2.5, 0, 1))
    r_out = (h.radius + h.wall) * np.sqrt(np.clip(1 - (sp / 1.08) ** 2.5, 0, 1))
    theta = np.arctan2(g.y - cy, g.x - cx)
    ic, iw, thin = a.infarct
    r_out = r_out - thin * (r_out - r_cav) * np.clip(1 - (_angle_to(theta, ic) / iw) ** 2, 0, 1)
    rho_out = _ellipse(g, cx, cy, r_out * (1 + e) + 1e-3, r_out * (1 - e) + 1e-3, e_ang)
    rho_cav = _ellipse(g, cx, cy, r_cav * (1 + e) + 1e-3, r_cav * (1 - e) + 1e-3, e_ang)
    rho_cav = np.where(r_cav > 1.5, rho_cav, np.inf)  # the apical cap: myocardium without a cavity
    return rho_cav, np.where(r_out > 2.0, rho_out, np.inf), theta, (cx, cy, r_out)


def _heart(full: _Grid, canvas: _Canvas, a: _Anatomy, h: _Heart, rng: np.random.Generator,
           texture: np.ndarray) -> None:
    """Epicardial fat, the RV (cavity labelled, thin wall not), the LV myocardium and cavity with papillary
    muscles and trabeculae; at the base the ring opens towards the outflow tract (blood, unlabelled).

    Drawn in the box that can hold the heart only (most of the generation time would go elsewhere)."""
    t = a.tissue
    hx, hy, drx, dry = a.heart
    reach = (h.radius + h.wall) * (0.6 + 1.45 * max(h.rv, 1.0)) + 8
    g, at = full.crop(hx - reach - abs(drx), hx + reach + abs(drx), hy - reach - abs(dry), hy + reach + abs(dry))
    cv, fine = canvas.view(at), texture[at]
    s = ((g.z - h.base) / (a.length - h.base)).astype(np.float32)  # 0 at this phase's base, 1 at the apex
    in_heart = s > -0.03
    rho_cav, rho_out, theta, (cx, cy, r_out) = _lv(g, a, h, s)
    outside = rho_out >= 1
    groove = np.maximum(np.cos(theta - a.rv_dir - 1.25), np.cos(theta - a.rv_dir + 1.25)) > 0.75
    cv.paint((rho_out < 1 + 5.0 / (r_out + 1)) & outside & groove & in_heart, t.fat * (1 + 0.05 * fine))
    off, along, across, s_rv = a.rv_shape
    r0 = (h.radius + h.wall) * h.rv * np.sqrt(np.clip(1 - (np.clip(s, 0, None) / s_rv) ** 2, 0, 1)) + 1e-3
    rcx, rcy = cx + off * r_out * np.cos(a.rv_dir), cy + off * r_out * np.sin(a.rv_dir)
    has_rv = in_heart & (r0 > 3)
    cv.paint((_ellipse(g, rcx, rcy, along * r0 + 3.5, across * r0 + 3.5, a.rv_dir) < 1) & outside & has_rv,
             t.muscle * (1 + 0.06 * fine))
    rv_blood = rng.uniform(0.92, 1.02)
    cv.paint((_ellipse(g, rcx, rcy, along * r0, across * r0, a.rv_dir) < 1) & outside & has_rv,
             rv_blood * (1 + 0.04 * fine), RV)
    cv.paint((rho_out < 1) & in_heart, t.myo * (1 + 0.06 * fine), MYO)
    cavity = (rho_cav < 1) & in_heart
    cv.paint(cavity, 1 + 0.04 * fine, LV)
    pm_r = np.zeros(cv.value.shape, bool)  # papillary muscles: two small dark disks mid-ventricle, labelled LV
    for side in (-1, 1):
        ang = a.rv_dir + np.pi + side * rng.uniform(0.6, 1.1)
        dist = 0.55 * h.radius * np.sqrt(np.clip(1 - np.clip(s, 0, None) ** 2, 0, 1))
        pm = _ellipse(g, cx + dist * np.cos(ang), cy + dist * np.sin(ang), 0.16 * h.radius, 0.13 * h.radius)
        pm_r |= (pm < 1) & (s > 0.2) & (s < 0.8)
    cv.paint(pm_r & cavity, t.myo * (1 + 0.06 * fine), LV)
    cv.paint(cavity & (rho_cav > 0.8) & (_smooth(rng, cv.value.shape, 0.8) > 1.4), t.myo * 1.2, LV)
    lvot = (s < 0.1) & (_angle_to(theta, a.rv_dir + 0.75) < rng.uniform(0.4, 0.7))
    cv.paint(lvot & (rho_out < 1) & (rho_cav >= 1) & in_heart, 1 + 0.04 * fine, 0)


def _scan(g: _Grid, value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial volume (slight blur), the coil's smooth bias field, Rician noise, then min-max to [0, 1]."""
    size = value.shape[-1]
    v = ndimage.gaussian_filter(value, (0, 0.6, 0.6))
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    bias = np.exp(gx * g.x / 150 + gy * g.y / 150 + 0.2 * _smooth(rng, (1, size, size), size / 5))
    sigma = rng.uniform(0.025, 0.06)
    noisy = np.hypot(v * bias + sigma * rng.standard_normal(v.shape, dtype=np.float32),
                     sigma * rng.standard_normal(v.shape, dtype=np.float32))
    return ((noisy - noisy.min()) / (noisy.max() - noisy.min())).astype(np.float32)


def make_patient(rng: np.random.Generator, group: str, size: int = 160, patient: int = 1) -> dict[str, CardiacCase]:
    """Both frames of one patient, end-diastole then end-systole: ``patientNNN_frameKK`` -> case."""
    anat, ed, es = _anatomy(rng, group)
    g = _grid(rng, size, anat.length)
    frames = {f"patient{patient:03d}_frame01": ed, f"patient{patient:03d}_frame{int(rng.integers(8, 16)):02d}": es}
    # The slices are fixed in the scanner: all but the heart is the same in both frames.
    body = _Canvas.empty((g.z.shape[0], size, size))
    fine = _smooth(rng, body.value.shape, 1.0)
    cavity = _body(g, body, anat, fine)
    _thorax(g, body, anat, rng, fine, cavity, (g.z / anat.length).astype(np.float32))
    out = {}
    for name, heart in frames.items():
        cv = body.copy()
        _heart(g, cv, anat, heart, rng, fine)
        out[name] = CardiacCase(_scan(g, cv.value, rng), cv.label, g.spacing)
    return out
