"""CT-like abdominal phantom: one synthetic scan in Hounsfield units with a Synapse label map.

Why a phantom: the harness needs a dataset that ships with the code and is cheap on a CPU, yet asks
a model what the real task asks. Organ intensities overlap each other and the background (as in
contrast CT), so a per-organ intensity window scores poorly (see `bench.data.synthetic.generate.intensity_oracle_dice`)
and position, shape and texture have to be learned.

Conventions: millimetres; radiological view, so x grows to the image right (the patient's left) and
y to the image bottom (posterior); z grows towards the feet with z = 0 at the liver dome. Anatomy is
written once for a canonical body. Each case draws its own body scale, rotation, shift and smooth
warp, per-organ jitter of position, size, orientation, extent and outline, the contrast phase, and
the noise, all from the Generator it is given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

FOV_MM = 380.0  # in-plane field of view; the canonical body is 330 mm wide
SPINE_Y = 55.0  # canonical centre of the vertebral bodies


@dataclass(frozen=True)
class Case:
    hu: np.ndarray  # float32 D x H x W, Hounsfield units before any window
    label: np.ndarray  # uint8 D x H x W, Synapse ids (bench.data.organs)
    spacing: tuple[float, float, float]  # (z, y, x) in mm


@dataclass
class _Shape:
    """A structure's level field (< 1 inside) and its normalised local coordinates."""

    level: np.ndarray
    u: np.ndarray  # along the first semi-axis, in units of it (0 outside the computed box)
    v: np.ndarray


class _Space:
    """The case's voxel grid and its mapping into canonical anatomy coordinates."""

    def __init__(self, rng: np.random.Generator, size: int, slice_mm: float):
        self.rng = rng
        dx = FOV_MM / size
        top, bottom = rng.uniform(-35.0, -15.0), rng.uniform(215.0, 250.0)
        depth = max(2, int(round((bottom - top) / slice_mm)))
        self.shape = (depth, size, size)
        self.spacing = (float(slice_mm), dx, dx)
        self.pos = (top + (np.arange(depth) + 0.5) * slice_mm, (np.arange(size) - (size - 1) / 2) * dx)
        # Pose of this patient in the scanner: anisotropic body size, a small tilt and off-centring.
        sx, sy, sz = rng.uniform(0.88, 1.1), rng.uniform(0.85, 1.1), rng.uniform(0.92, 1.08)
        ang = np.deg2rad(rng.uniform(-5.0, 5.0))
        tx, ty = rng.normal(0.0, 8.0), rng.normal(0.0, 6.0)
        yy, xx = np.meshgrid(self.pos[1] - ty, self.pos[1] - tx, indexing="ij")
        u = (xx * np.cos(ang) + yy * np.sin(ang)) / sx
        v = (-xx * np.sin(ang) + yy * np.cos(ang)) / sy
        # A smooth warp makes organ outlines and relations differ beyond an affine change.
        self.x = (u[None] + 7.0 * self.field(70.0)).astype(np.float32)
        self.y = (v[None] + 7.0 * self.field(70.0)).astype(np.float32)
        self.z = (self.pos[0] / sz).astype(np.float32)  # one canonical z per slice

    def field(self, cell_mm: float, box=(slice(None),) * 3) -> np.ndarray:
        """Smooth random field of unit variance with correlation length ~cell_mm (all axes), over
        the whole grid or only a box of it.

        Built as Gaussian bumps on a coarse lattice, summed separably with three small matrices:
        much cheaper than filtering white noise with a wide kernel.
        """
        mats = []
        for p in (self.pos[0][box[0]], self.pos[1][box[1]], self.pos[1][box[2]]):
            knots = np.arange(p[0] - 2 * cell_mm, p[-1] + 2 * cell_mm + 1e-6, cell_mm)
            w = np.exp(-0.5 * ((p[:, None] - knots[None, :]) / cell_mm) ** 2)
            mats.append((w / np.sqrt((w**2).sum(1, keepdims=True))).astype(np.float32))
        c = self.rng.standard_normal(tuple(m.shape[1] for m in mats), dtype=np.float32)
        return np.einsum("ai,bj,ck,ijk->abc", *mats, c, optimize=True)

    def texture(self, sigma_mm: float, box=(slice(None),) * 3) -> np.ndarray:
        """Fine random texture of unit variance: white noise blurred in-plane by sigma_mm, over
        the whole grid or only a box of it."""
        shape = tuple(len(range(*b.indices(n))) for b, n in zip(box, self.shape, strict=False))
        white = self.rng.standard_normal(shape, dtype=np.float32)
        sig = sigma_mm / self.spacing[1]
        t = ndimage.gaussian_filter(white, (0.0, sig, sig)) if sig > 0.3 else white
        return t / (t.std() + 1e-6)

    def box(self, sl: slice, x0, x1, y0, y1) -> tuple[slice, slice, slice] | None:
        """The slab sl cut to the image rows and columns whose canonical (x, y) can fall in the
        given ranges (arrays broadcast per slice), or None; work outside it would be wasted."""
        near = (self.x[sl] > x0) & (self.x[sl] < x1) & (self.y[sl] > y0) & (self.y[sl] < y1)
        rows, cols = np.flatnonzero(near.any(axis=(0, 2))), np.flatnonzero(near.any(axis=(0, 1)))
        if rows.size == 0:
            return None
        return sl, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)

    def zslab(self, z0: float, z1: float) -> slice:
        k = np.flatnonzero((self.z >= z0) & (self.z <= z1))
        return slice(int(k[0]), int(k[-1]) + 1) if k.size else slice(0, 0)


def _blob(sp: _Space, z: tuple[float, float], c0, c1, radii, angle: float, *, peak: float = 0.5,
          power: float = 0.5, harm: float = 0.12, jitter: float = 1.0) -> _Shape:
    """An organ-like blob: elliptic sections that grow and shrink along z (peak, power) and whose
    centre moves from c0 to c1, with a wavy outline (angular harmonics that drift along z) and
    per-case jitter of extent, position, size and orientation."""
    rng = sp.rng
    z0, z1 = z[0] + jitter * rng.normal(0, 7), z[1] + jitter * rng.normal(0, 7)
    # Python floats and float32 arrays only: a float64 scalar would upcast every slab array.
    shift = (jitter * rng.normal(0, 6, 2)).tolist()
    scale = (1 + jitter * rng.uniform(-0.15, 0.15, 2)).tolist()
    ang = float(np.deg2rad(angle + jitter * rng.normal(0, 8)))
    coef = (harm * rng.normal(0, 1, (4, 2)) / np.arange(2, 6)[:, None]).astype(np.float32)
    phase = np.exp(1j * rng.uniform(0, 2 * np.pi, 4)).astype(np.complex64)
    out = _Shape(np.full(sp.shape, np.inf, np.float32), np.zeros(sp.shape, np.float32),
                 np.zeros(sp.shape, np.float32))
    sl = sp.zslab(z0, z1)
    if sl.stop == 0:
        return out
    t = np.clip((sp.z[sl] - z0) / (z1 - z0), 1e-3, 1 - 1e-3) ** (np.log(0.5) / np.log(peak))
    t3 = t.astype(np.float32)[:, None, None]  # keep the whole slab in float32
    prof = np.maximum((4 * t3 * (1 - t3)) ** power, 1e-3)
    cx = c0[0] + (c1[0] - c0[0]) * t3 + shift[0]
    cy = c0[1] + (c1[1] - c0[1]) * t3 + shift[1]
    # Work only in the in-plane box that can hold the blob (with room for the outline harmonics).
    reach = 1.6 * max(radii) * max(scale)
    box = sp.box(sl, cx - reach, cx + reach, cy - reach, cy + reach)
    if box is None:
        return out
    dx, dy = sp.x[box] - cx, sp.y[box] - cy
    ca, sa = math.cos(ang), math.sin(ang)
    u = (dx * ca + dy * sa) / (radii[0] * scale[0] * prof)
    v = (-dx * sa + dy * ca) / (radii[1] * scale[1] * prof)
    rho = np.sqrt(u**2 + v**2)
    # Outline harmonics k = 2..5 via powers of the unit phasor: cheaper than arctan2 and cosines.
    w = (u + 1j * v) / (rho + 1e-6)
    wk, bump = w, np.zeros_like(rho)
    for i in range(4):
        wk = wk * w
        amp = (coef[i, 0] + (coef[i, 1] - coef[i, 0]) * t3) * phase[i]  # drifts from top to bottom
        bump += (amp * wk).real
    out.level[box], out.u[box], out.v[box] = rho / (1 + bump), u, v
    return out


def _tube(sp: _Space, pts, radii, jitter: float = 1.0, step_mm: float = 2.5) -> np.ndarray:
    """Level field of a tube of varying radius along a 3D polyline (x, y, z per point).

    Only valid below ~1.5 (each sample point only touches slices within 1.5 radii of it); that is
    all the callers need, and it keeps the cost proportional to the tube's volume.
    """
    pts = np.asarray(pts, float) + jitter * sp.rng.normal(0, 4, (len(pts), 3))
    radii = np.asarray(radii, float) * (1 + jitter * sp.rng.uniform(-0.12, 0.12))
    seg = np.r_[0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
    s = np.linspace(0, seg[-1], max(2, int(seg[-1] / step_mm) + 1))
    p = np.stack([np.interp(s, seg, c) for c in (*pts.T, radii)], 1)
    level = np.full(sp.shape, np.inf, np.float32)
    (x0, y0), (x1, y1), r = p[:, :2].min(0), p[:, :2].max(0), p[:, 3].max()
    box = sp.box(sp.zslab(p[:, 2].min() - 1.5 * r, p[:, 2].max() + 1.5 * r),
                 x0 - 1.5 * r, x1 + 1.5 * r, y0 - 1.5 * r, y1 + 1.5 * r)
    if box is None:
        return level
    x, y, z, lv = sp.x[box], sp.y[box], sp.z[box[0]], level[box]
    for px, py, pz, pr in p.tolist():
        k = np.flatnonzero(np.abs(z - pz) < 1.5 * pr)
        if k.size:
            ks = slice(k[0], k[-1] + 1)
            d2 = (x[ks] - px) ** 2 + (y[ks] - py) ** 2 + (z[ks, None, None] - pz) ** 2
            np.minimum(lv[ks], np.sqrt(d2) / pr, out=lv[ks])
    return level


def _column(sp: _Space, pts, radii) -> np.ndarray:
    """Level field of a tube running along z: centre and semi-axes interpolated in z between
    points (x, y, z) with radii (rx, ry); infinite outside their z range."""
    pts, radii = np.asarray(pts, float), np.asarray(radii, float).reshape(len(pts), -1)
    level = np.full(sp.shape, np.inf, np.float32)
    sl = sp.zslab(pts[0, 2], pts[-1, 2])
    if sl.stop == 0:
        return level
    cx, cy, rx, ry = (np.interp(sp.z[sl], pts[:, 2], c).astype(np.float32)[:, None, None]
                      for c in (pts[:, 0], pts[:, 1], radii[:, 0], radii[:, -1]))
    reach = 1.6 * max(rx.max(), ry.max())
    box = sp.box(sl, cx - reach, cx + reach, cy - reach, cy + reach)
    if box is not None:
        level[box] = np.sqrt(((sp.x[box] - cx) / rx) ** 2 + ((sp.y[box] - cy) / ry) ** 2)
    return level


@dataclass(frozen=True)
class _Contrast:
    """This scan's contrast: overall enhancement and how arterial (vs portal venous) the phase is."""

    enh: float
    art: float

    @property
    def venous(self) -> float:
        return self.enh * (1 - 0.4 * self.art)

    @property
    def artery(self) -> float:
        return 60 + 190 * self.enh * (0.6 + 0.4 * self.art)


class _Canvas:
    """The HU and label volumes being painted; later strokes win."""

    def __init__(self, shape: tuple[int, int, int]):
        self.hu = np.full(shape, -1000.0, np.float32)
        self.label = np.zeros(shape, np.uint8)

    def paint(self, mask: np.ndarray, value, label: int | None = None, at=...) -> None:
        """Set HU (and label) where mask; mask and value cover the box `at` (default: all)."""
        np.copyto(self.hu[at], value, where=mask)  # one pass; boolean indexing would gather twice
        if label is not None:
            np.copyto(self.label[at], label, where=mask)


def _spine_y(z: float) -> float:
    return SPINE_Y - 8 * z / 230  # the lumbar lordosis brings the lower vertebrae forward


def _vertical(x: float, dy: float, z0: float = -200.0, z1: float = 400.0) -> list:
    """Polyline of a structure that follows the spine at offset (x, dy) from z0 to z1."""
    return [(x, _spine_y(z0) + dy, z0), (x, _spine_y(z1) + dy, z1)]


def _body(sp: _Space, cv: _Canvas, con: _Contrast, fine, mid) -> np.ndarray:
    """Skin, subcutaneous fat, muscle wall, ribs, bowel, colon, lung bases and heart; returns the
    abdominal cavity mask that the organs are clipped to."""
    rng, x, y, z3 = sp.rng, sp.x, sp.y, sp.z[:, None, None]
    # A superellipse, rounder in front and flatter at the back.
    ax, ay = np.abs(x) / 165.0, np.abs(y) / np.where(y >= 0, 105.0, 120.0)
    body = np.where(y >= 0, np.cbrt(ax**3 + ay**3), np.sqrt(ax**2 + ay**2))
    fat_mm = rng.uniform(10.0, 35.0)
    wall_in, cavity_in = 1 - fat_mm / 140, 1 - (fat_mm + 10) / 140
    cavity = body < cavity_in
    cv.paint(body < 1, -105 + 12 * fine)
    cv.paint((body < wall_in) & ~cavity, 50 + 10 * fine)
    # Ribs: small bright sections in the wall that slant, so they move around the body along z.
    band = (body > wall_in - 0.05) & (body < wall_in) & (z3 < 150 - 80 * (y < -30))
    band &= ~((np.abs(x) < 45) & (y < 0))
    i = np.nonzero(band)  # a thin shell: cheaper to work on its voxels than on the volume
    ribs = np.cos(9 * np.arctan2(y[i], x[i]) + sp.z[i[0]] / 14 + rng.uniform(0, 6.3)) > 0.85
    cv.hu[tuple(a[ribs] for a in i)] = 350 + 80 * mid[i][ribs]
    # Inside the wall: fat, then small-bowel loops in front of the spine below the upper abdomen.
    cv.paint(cavity, -95 + 10 * mid)
    if b := _bbox(cavity & (y < SPINE_Y - 10) & (z3 > 30)):
        loops, f = sp.field(10.0, b), fine[b]
        gut = cavity[b] & (y[b] < SPINE_Y - 25 + 15 * sp.field(40.0, b))
        lumen = gut & (loops > 0.45)
        cv.paint(gut & (loops > 0), 45 + 45 * con.venous + 10 * f, at=b)  # bowel wall
        cv.paint(lumen, 15 + 25 * mid[b] + 8 * f, at=b)  # chyme
        cv.paint(lumen & (sp.texture(5.0, b) > 1.6), -900.0, at=b)  # gas bubbles
    for pts, r in (([(-100, 15, 150), (-105, 5, 200), (-95, 0, 260)], 22),  # ascending colon
                   ([(105, 25, 100), (110, 25, 170), (95, 10, 260)], 20)):  # descending colon
        colon = (_column(sp, np.asarray(pts) + rng.normal(0, 5, 3), [r, r, r]) < 1) & cavity
        if b := _bbox(colon):
            cv.paint(colon[b], np.where(mid[b] > 0.8, -950.0, -30 + 70 * mid[b]), at=b)
    colon = (_tube(sp, [(-95, -40, 130), (-40, -80, 118), (40, -80, 112), (95, -30, 100)], [20] * 4)
             < 1) & cavity
    if b := _bbox(colon):
        gas = (mid[b] > 0.8) | (y[b] < -75)  # the transverse colon is in front: gas collects there
        cv.paint(colon[b], np.where(gas, -950.0, -30 + 70 * mid[b]), at=b)
    # Lung bases and the heart above the domes of the diaphragm.
    for side in (-1, 1):
        lung = _blob(sp, (-90, 28), (side * 85, 20), (side * 90, 35), (62, 75), 0, peak=0.15, power=0.3)
        if b := _bbox((lung.level < 1) & cavity):
            cv.paint((lung.level[b] < 1) & cavity[b], -860 + 30 * fine[b], at=b)
    heart = _blob(sp, (-120, 5), (15, -40), (20, -30), (75, 60), -20, peak=0.2)
    if b := _bbox((heart.level < 1) & cavity):
        cv.paint((heart.level[b] < 1) & cavity[b], 40 + 90 * con.enh + 10 * fine[b], at=b)
    return cavity


def _spine(sp: _Space, cv: _Canvas, fine, mid, cavity) -> None:
    """Vertebrae with discs every ~34 mm, canal, arch and processes, back muscles, psoas and the
    iliac wings."""
    z3 = sp.z[:, None, None]
    disc = np.broadcast_to((z3 + sp.rng.uniform(0, 34)) % 34 < 8, sp.shape)
    muscle = 52 + 10 * fine
    for s in (-1, 1):
        cv.paint(_column(sp, _vertical(s * 32, 42), (26, 22)) < 1, muscle)  # erector spinae
        cv.paint(_column(sp, _vertical(s * 68, 28, 120), (16, 9)) < 1, muscle)  # quadratus lumb.
        psoas = _column(sp, _vertical(s * 36, 0, 105, 215) + _vertical(s * 36, 0, 400, 401)[:1],
                        [0.1, 20, 20])
        cv.paint((psoas < 1) & cavity, muscle)
        cv.paint((_column(sp, _vertical(s * 30, 20), (14, 5)) < 1) & ~disc, 350 + 60 * mid)
        # Iliac wings: bony plates opening forward and outward at the bottom of the scan.
        wing = _blob(sp, (185, 300), (s * 85, 40), (s * 95, 25), (50, 9), -90 + s * 45, harm=0.05)
        if b := _bbox(wing.level < 1):
            lv = wing.level[b]
            cv.paint(lv < 1, np.where(lv > 0.6, 500 + 60 * fine[b], 220 + 45 * mid[b]), at=b)
    arch = _column(sp, _vertical(0, 28), (14, 14))
    cv.paint(arch < 1, 400 + 60 * mid)
    cv.paint(arch < 8 / 14, 15 + 10 * fine)  # spinal canal
    cv.paint(_column(sp, _vertical(0, 50), (5, 13)) < 1, 400 + 60 * mid)  # spinous process
    body = _column(sp, _vertical(0, 0), (20, 17))
    cv.paint(body < 1, np.where(disc, 85 + 10 * fine, 550 + 60 * fine))
    cv.paint((body < 0.87) & ~disc, 200 + 45 * mid)  # cancellous bone inside the cortex


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Smallest box holding every True voxel of mask (None if there is none)."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    sub = mask[zs[0]:zs[-1] + 1]
    ys, xs = np.flatnonzero(sub.any(axis=(0, 2))), np.flatnonzero(sub.any(axis=(0, 1)))
    return slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)


def _organs(sp: _Space, cv: _Canvas, con: _Contrast, fine, mid, cavity) -> float:
    """The eight Synapse organs, plus the duodenum, in painting order (later ones win); returns
    the level of the aortic bifurcation, where the unlabelled iliac arteries take over.

    Each organ's texture is computed only inside the box around its mask (b), which is where
    most of the generation time would otherwise go. The random draws happen in a fixed order
    (each organ's helper draws its own, in turn), so a seed gives the same phantom as before.
    """
    # Organs take up contrast a little differently in each patient: liver, spleen, pancreas, kidney.
    liv, spl, pan, kid = sp.rng.uniform(0.85, 1.15, 4).tolist()
    _liver(sp, cv, con, fine, mid, cavity, liv)
    _spleen(sp, cv, con, fine, cavity, spl)
    _stomach(sp, cv, con, fine, mid, cavity)
    _duodenum(sp, cv, con, mid, cavity)
    _pancreas(sp, cv, con, fine, mid, cavity, pan)
    _gallbladder(sp, cv, con, fine, cavity)
    _kidneys(sp, cv, con, fine, mid, cavity, kid)
    dy = -40 + sp.rng.normal(0, 3)
    bif = 205 + sp.rng.normal(0, 10)
    cv.paint(_column(sp, _vertical(15, dy, z1=bif), (15, 15)) < 1, con.artery + 10 * fine, 1)
    return bif


def _liver(sp: _Space, cv: _Canvas, con: _Contrast, fine, mid, cavity, uptake: float) -> None:
    """Right lobe plus a left lobe reaching across the midline in front of the stomach."""
    steatosis = 45 * sp.rng.beta(1, 3)  # a fatty liver is darker; most livers are near normal
    liver = np.minimum(
        _blob(sp, (0, 165), (-70, -5), (-85, 10), (82, 92), 0, peak=0.3, power=0.45).level,
        _blob(sp, (5, 95), (0, -65), (-10, -55), (62, 32), -10, peak=0.35).level) < 1
    if b := _bbox(liver & cavity):
        vessels = (np.abs(sp.field(10.0, b)) < 0.18) & (mid[b] > -0.8)
        parenchyma = 60 + 50 * con.venous * uptake - steatosis + 8 * sp.field(25.0, b)
        cv.paint((liver & cavity)[b], np.where(vessels, 40 + 120 * con.venous, parenchyma) + 6 * fine[b], 5,
                 at=b)


def _spleen(sp: _Space, cv: _Canvas, con: _Contrast, fine, cavity, uptake: float) -> None:
    """Along the back wall; striped ("zebra") in the arterial phase."""
    sp_ = _blob(sp, (15, 115), (95, 45), (90, 30), (30, 58), 35, peak=0.45)
    if b := _bbox((sp_.level < 1) & cavity):
        stripes = 15 * con.art * np.sin(6 * sp_.u[b] + 2 * sp_.v[b])
        cv.paint((sp_.level[b] < 1) & cavity[b], 60 + 70 * con.enh * uptake + stripes + 6 * fine[b], 7, at=b)


def _stomach(sp: _Space, cv: _Canvas, con: _Contrast, fine, mid, cavity) -> None:
    """Enhancing wall; water, food or folds inside; gas in front above a fluid level."""
    y = sp.y
    st = _blob(sp, (15, 135), (60, -25), (-5, -50), (52, 42), -35, peak=0.3, power=0.4)
    content = sp.rng.choice(3)
    gas_fill = sp.rng.uniform(0.0, 0.45)
    if b := _bbox((st.level < 1) & cavity):
        lv, f, yb = st.level[b], fine[b], y[b]
        inner = (lambda: 10 + 5 * f, lambda: 35 + 30 * mid[b],
                 lambda: np.where(np.sin(9 * st.u[b] + 3 * mid[b]) > 0, 70.0, -10.0))[content]()
        m = (lv < 1) & cavity[b]
        cv.paint(m, np.where(lv > 0.87, 45 + 50 * con.venous + 8 * f, inner), 8, at=b)
        lumen = m & (lv < 0.87)
        top = np.where(lumen, yb, np.inf).min(axis=(1, 2), keepdims=True)
        bottom = np.where(lumen, yb, -np.inf).max(axis=(1, 2), keepdims=True)
        with np.errstate(invalid="ignore"):  # slices without lumen give inf - inf
            cv.paint(lumen & (yb < top + gas_fill * (bottom - top)), -900.0, at=b)


def _duodenum(sp: _Space, cv: _Canvas, con: _Contrast, mid, cavity) -> None:
    duod = _tube(sp, [(-15, -25, 100), (-48, -12, 112), (-55, 15, 128), (-35, 32, 143), (0, 28, 150)],
                 [12, 13, 13, 12, 11])
    if b := _bbox((duod < 1) & cavity):
        cv.paint((duod[b] < 1) & cavity[b],
                 np.where(duod[b] > 0.7, 50 + 40 * con.venous, 20 + 25 * mid[b]), 0, at=b)


def _pancreas(sp: _Space, cv: _Canvas, con: _Contrast, fine, mid, cavity, uptake: float) -> None:
    """A lobulated band from the splenic hilum (tail, higher) to the duodenum (head)."""
    panc = _tube(sp, [(85, 15, 92), (55, -2, 97), (22, -18, 103), (-5, -24, 110), (-28, -10, 120),
                      (-18, 8, 133)], [13, 15, 17, 17, 21, 15], jitter=0.6)
    fatty = sp.rng.uniform(1.0, 1.8)  # fat between the lobules, more in older patients
    if b := _bbox((panc < 1) & cavity):
        lobules = np.where(fine[b] > fatty, -40 + 20 * mid[b], 45 + 50 * con.venous * uptake + 8 * fine[b])
        cv.paint((panc[b] < 1) & cavity[b], lobules, 6, at=b)


def _gallbladder(sp: _Space, cv: _Canvas, con: _Contrast, fine, cavity) -> None:
    gb = _blob(sp, (95, 165), (-45, -35), (-68, -40), (19, 29), 70, peak=0.45)
    bile_hu = sp.rng.uniform(0, 25)
    if b := _bbox((gb.level < 1) & cavity):
        bile = np.where(gb.level[b] > 0.85, 40 + 30 * con.venous, bile_hu + 4 * fine[b])
        cv.paint((gb.level[b] < 1) & cavity[b], bile, 2, at=b)


def _kidneys(sp: _Space, cv: _Canvas, con: _Contrast, fine, mid, cavity, uptake: float) -> None:
    """Cortex, medullary pyramids, sinus fat and pelvis at the hilum facing forward-inward."""
    z3 = sp.z[:, None, None]
    for organ, side, zr in ((3, 1, (85, 195)), (4, -1, (100, 210))):
        k = _blob(sp, zr, (side * 70, 55), (side * 72, 60), (26, 32), 180 - side * 140, power=0.45,
                  harm=0.08)
        if not (b := _bbox((k.level < 1) & cavity)):
            continue
        u, v, lv, f = k.u[b], k.v[b], k.level[b], fine[b]
        m = (lv < 1) & cavity[b]
        cortex = 50 + 150 * con.enh * uptake
        pyramid = np.cos(7 * np.arctan2(v, u - 0.4)) > 0.1
        medulla = np.where(pyramid, 40 + (60 + 70 * (1 - con.art)) * con.enh, cortex)
        val = np.where(lv > 0.78, cortex, medulla) + 10 * f
        sinus = ((u - 0.45) ** 2 / 0.2 + v**2 / 0.1 < 1) & (np.abs(z3[b[0]] - sum(zr) / 2) < 30)
        cv.paint(m, np.where(sinus, np.where(mid[b] > 0.5, 5.0, -60 + 20 * f), val), organ, at=b)
        cv.paint(m & sinus & (u > 0.8), -80 + 15 * f, 0, at=b)  # the hilum opens to the outside


def _vessels(sp: _Space, cv: _Canvas, con: _Contrast, fine, bif: float) -> None:
    """Unlabelled vessels that cut through organs, as they do in the real labels."""
    artery, portal = con.artery + 10 * fine, 50 + 130 * con.venous + 10 * fine
    for s in (-1, 1):  # common iliac arteries below the bifurcation
        iliac = [(15, _spine_y(bif) - 40, bif), (15 + s * 120, _spine_y(400) - 30, 400)]
        cv.paint(_column(sp, iliac, (8, 8)) < 1, artery, 0)
    ivc = 50 + 110 * con.enh * (1 - 0.6 * con.art)  # unenhanced blood mixes in early
    cv.paint(_column(sp, _vertical(-24, -30), (13, 10)) < 1, ivc + 10 * fine, 0)
    cv.paint(_tube(sp, [(-40, -5, 60), (-10, 2, 108), (-10, 8, 150), (-12, 5, 230)], [7, 7, 6, 5])
             < 1, portal, 0)  # portal and superior mesenteric veins
    cv.paint(_tube(sp, [(85, 32, 92), (55, 15, 97), (22, -1, 103), (-5, -6, 110)], [4.5] * 4) < 1,
             portal, 0)  # splenic vein behind the pancreas
    cv.paint(_column(sp, _vertical(12, -70, 100), (4, 4)) < 1, artery, 0)  # superior mesenteric a.


def make_case(rng: np.random.Generator, size: int = 160, slice_mm: float = 5.0) -> Case:
    """Draw one abdominal scan: HU volume, Synapse label volume and voxel spacing."""
    sp = _Space(rng, size, slice_mm)
    con = _Contrast(enh=rng.uniform(0.85, 1.15), art=rng.uniform(0.0, 0.7))
    cv = _Canvas(sp.shape)
    fine, mid = sp.texture(1.2), sp.texture(3.0)
    cavity = _body(sp, cv, con, fine, mid)
    _spine(sp, cv, fine, mid, cavity)
    _vessels(sp, cv, con, fine, _organs(sp, cv, con, fine, mid, cavity))
    # The scanner: slight blur (partial volume), then correlated noise at this scan's dose.
    hu = ndimage.gaussian_filter(cv.hu, (0, 0.6, 0.6))
    noise = ndimage.gaussian_filter(rng.standard_normal(sp.shape, dtype=np.float32), (0, 0.7, 0.7))
    hu += noise * (rng.uniform(9.0, 18.0) / noise.std())
    return Case(hu.astype(np.float32), cv.label, sp.spacing)
