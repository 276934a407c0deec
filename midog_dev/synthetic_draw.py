"""Drawing the generated tissue: smooth noise fields, collagen fibres, nucleus outlines, and
mitotic figures and their look-alikes drawn into concentration canvases (uint8 holding
concentration x :data:`CONC_SCALE`, cv2's anti-aliased sub-pixel drawing).

Every function draws from the ``rng`` it is given, in a fixed order: the same state gives the
same pixels (:mod:`.synthetic_render` calls them in the order its images depend on).
"""

import math
from typing import Tuple

import cv2
import numpy as np

from .synthetic_domains import TumorType

__all__ = [
    "CONC_SCALE",
    "ONE",
    "SHIFT",
    "blob_outlines",
    "draw_imposter",
    "draw_mitosis",
    "fibres",
    "pts",
    "smooth_noise",
    "soft_threshold",
    "u8",
]

# --------------------------------------------------------------------------- noise


def smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean unit-variance noise with features of about ``scale_px`` pixels."""
    h, w = shape
    if scale_px <= 2.0:
        n = rng.standard_normal((h, w), dtype=np.float32)
        n = cv2.GaussianBlur(n, (0, 0), max(scale_px / 2.0, 0.5))
    else:
        step = scale_px / 2.0
        lh, lw = int(math.ceil(h / step)) + 3, int(math.ceil(w / step)) + 3
        low = rng.standard_normal((lh, lw), dtype=np.float32)
        low = cv2.GaussianBlur(low, (0, 0), 0.8)
        n = cv2.resize(low, (int(lw * step), int(lh * step)), interpolation=cv2.INTER_CUBIC)
        n = n[int(step) : int(step) + h, int(step) : int(step) + w]
    n -= n.mean()
    n /= n.std() + 1e-6
    return np.ascontiguousarray(n)


def soft_threshold(field_: np.ndarray, fraction: float, softness: float = 0.35) -> np.ndarray:
    """Soft mask in [0, 1] covering about ``fraction`` of a unit-variance field."""
    if fraction <= 0:
        return np.zeros_like(field_)
    if fraction >= 1:
        return np.ones_like(field_)
    thr = float(np.quantile(field_[::4, ::4], 1.0 - fraction))
    return 0.5 + 0.5 * np.tanh((field_ - thr) / (2 * softness))  # a logistic that cannot overflow


def fibres(
    rng: np.random.Generator, shape: Tuple[int, int], mpp: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Wavy collagen-like bundles in about [-1, 1] and their local orientation (radians)."""
    h, w = shape
    # Half resolution: fibres are 1-3 µm wide, well above a 0.5 µm/px grid.
    hh, hw = (h + 1) // 2, (w + 1) // 2
    px = 1.0 / (2 * mpp)
    theta0 = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:hh, 0:hw].astype(np.float32)
    # parallel bands across one direction, warped at two scales so that they wave
    # and turn; the local direction is read back from the warped phase
    across = (
        -xx * math.sin(theta0)
        + yy * math.cos(theta0)
        + smooth_noise(rng, (hh, hw), 60.0 * px) * (18.0 * px)
        + smooth_noise(rng, (hh, hw), 12.0 * px) * (2.5 * px)
    )
    gy_, gx_ = np.gradient(cv2.GaussianBlur(across, (0, 0), 4.0 * px))
    theta = np.arctan2(gy_, gx_) + np.pi / 2
    warp = smooth_noise(rng, (hh, hw), 4.0 * px) * (0.6 * px)
    period = 4.5 * px
    phase = (across + warp) * (2 * np.pi / period)
    bands = np.sin(phase)
    # thin pale clefts between bundles, which break off here and there
    clefts = np.exp(-(bands + 1.0) / 0.08) * (np.sin(phase * 0.37 + 1.0) > -0.3)
    strength = np.clip(0.6 + 0.5 * smooth_noise(rng, (hh, hw), 10.0 * px), 0, 1)
    # streaks along the bundles: anisotropic noise looked up in (along, across) coordinates
    along = xx * math.cos(theta0) + yy * math.sin(theta0)
    streak = rng.standard_normal((int(hh + hw) // 2 + 8, int(hh + hw) // 8 + 8), dtype=np.float32)
    streak = cv2.GaussianBlur(streak, (0, 0), sigmaX=1.5, sigmaY=0.6)
    streak /= streak.std() + 1e-6
    sy = (across - across.min()) / 2.0
    sx = (along - along.min()) / 8.0
    streak = cv2.remap(
        streak,
        sx.astype(np.float32),
        sy.astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    out = 0.2 * bands - clefts * strength + 0.3 * streak
    out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    theta = cv2.resize(theta, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, -1.2, 1.2), theta


# --------------------------------------------------------------------------- drawing

SHIFT = 4  # sub-pixel bits for cv2 drawing
ONE = 1 << SHIFT


def pts(xy: np.ndarray) -> np.ndarray:
    """Points (..., 2) in pixels as cv2's (N, 1, 2) int32 sub-pixel coordinates (``SHIFT`` bits)."""
    return np.round(xy * ONE).astype(np.int32).reshape(-1, 1, 2)


def blob_outlines(
    rng: np.random.Generator, cx, cy, a, b, angle, irregularity: float, n_vertices: int = 18
) -> np.ndarray:
    """Polygons (N, K, 2) of perturbed ellipses; all inputs are (N,) arrays."""
    n = len(cx)
    t = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)[None, :]
    r = np.ones((n, n_vertices), np.float64)
    for m in (2, 3, 4, 5):
        amp = rng.normal(0, irregularity / math.sqrt(m - 1), (n, 1))
        r += amp * np.cos(m * t + rng.uniform(0, 2 * np.pi, (n, 1)))
    r = np.clip(r, 0.55, 1.6)
    ex = a[:, None] * r * np.cos(t)
    ey = b[:, None] * r * np.sin(t)
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([cx[:, None] + ex * ca - ey * sa, cy[:, None] + ex * sa + ey * ca], axis=-1)


# Concentration canvases are uint8 (cv2 anti-aliases 8-bit canvases only) holding
# concentration x 100.
CONC_SCALE = 100.0


def u8(v: float) -> int:
    """Concentration ``v`` as a canvas value (x ``CONC_SCALE``, clipped to 0..255)."""
    return int(min(max(round(v * CONC_SCALE), 0), 255))


def draw_mitosis(
    canvas_h: np.ndarray,
    canvas_clear: np.ndarray,
    rng: np.random.Generator,
    x: float,
    y: float,
    kind: str,
    scale: float,
    mpp: float,
    stain: float,
) -> None:
    """Chromosome clumps with hairy outlines in a pale halo; lengths in µm x scale.

    Long (one branch per mitotic phase, after the halo every phase shares): the branches
    are the phases, drawn in the order the images' random draws depend on."""
    px = scale / mpp
    ang = rng.uniform(0, np.pi)
    ca, sa = math.cos(ang), math.sin(ang)
    halo_a = rng.uniform(5.0, 6.5) * px
    halo_b = halo_a * rng.uniform(0.8, 1.0)
    if kind in ("anaphase", "telophase"):
        halo_a *= 1.25 if kind == "anaphase" else 1.55
    # how clear the rounded-up cytoplasm looks varies: a halo alone must not give it away
    clear = int(rng.integers(110, 256))
    cv2.ellipse(
        canvas_clear,
        pts(np.array([x, y]))[0, 0],
        (int(halo_a * ONE), int(halo_b * ONE)),
        math.degrees(ang + np.pi / 2),
        0,
        360,
        clear,
        -1,
        cv2.LINE_AA,
        SHIFT,
    )
    if kind == "telophase":  # cleavage furrow: two rounded daughter cells
        for s in (-1, 1):
            c = np.array([x + s * 0.45 * halo_a * -sa, y + s * 0.45 * halo_a * ca])
            cv2.circle(
                canvas_clear,
                pts(c)[0, 0],
                int(halo_b * 0.75 * ONE),
                clear,
                -1,
                cv2.LINE_AA,
                SHIFT,
            )

    def bar(cx, cy, length, width, n_clumps, curve):
        # chromosomes: many small overlapping blobs along a (slightly curved) plate
        u = rng.uniform(-0.5, 0.5, n_clumps)
        off = rng.normal(0, width * 0.22, n_clumps) + curve * (u**2 - 0.08) * length
        bx = cx + u * length * ca - off * sa
        by = cy + u * length * sa + off * ca
        rad = rng.uniform(0.35, 0.62, n_clumps) * width
        v = stain * rng.uniform(0.85, 1.15, n_clumps)
        for i in range(n_clumps):
            cv2.circle(
                canvas_h,
                pts(np.array([bx[i], by[i]]))[0, 0],
                max(int(rad[i] * ONE), ONE),
                u8(v[i]),
                -1,
                cv2.LINE_AA,
                SHIFT,
            )
        _spikes(canvas_h, rng, bx, by, width * 0.55, stain, px)

    if kind == "metaphase":
        length = rng.uniform(6.0, 9.0) * px
        width = rng.uniform(1.6, 2.4) * px
        bar(x, y, length, width, int(length / width * 5), rng.normal(0, 0.25))
    elif kind == "anaphase":
        sep = rng.uniform(3.0, 5.0) * px
        length = rng.uniform(5.5, 8.0) * px
        width = rng.uniform(1.3, 2.0) * px
        for s in (-1, 1):
            # the two plates move apart perpendicular to their length
            bar(
                x - s * sep / 2 * sa,
                y + s * sep / 2 * ca,
                length,
                width,
                int(length / width * 4),
                s * 0.35,
            )
    elif kind == "telophase":
        sep = rng.uniform(6.5, 9.0) * px
        for s in (-1, 1):
            _clump(
                canvas_h,
                rng,
                x - s * sep / 2 * sa,
                y + s * sep / 2 * ca,
                rng.uniform(1.8, 2.5) * px,
                stain,
                px,
                ring=False,
            )
    else:  # prometaphase: ring or irregular clump
        _clump(canvas_h, rng, x, y, rng.uniform(2.6, 3.6) * px, stain, px, ring=rng.random() < 0.5)


def _clump(canvas_h, rng, x, y, radius, stain, px, ring: bool):
    n = int(rng.integers(12, 22))
    if ring:
        t = rng.uniform(0, 2 * np.pi, n)
        rr = radius * rng.uniform(0.7, 1.05, n)
    else:
        t = rng.uniform(0, 2 * np.pi, n)
        rr = radius * np.sqrt(rng.uniform(0, 1, n)) * 0.9
    bx, by = x + rr * np.cos(t), y + rr * np.sin(t)
    rad = rng.uniform(0.5, 0.9, n) * px
    for i in range(n):
        cv2.circle(
            canvas_h,
            pts(np.array([bx[i], by[i]]))[0, 0],
            max(int(rad[i] * ONE), ONE),
            u8(stain * rng.uniform(0.85, 1.15)),
            -1,
            cv2.LINE_AA,
            SHIFT,
        )
    _spikes(canvas_h, rng, bx, by, 0.6 * px, stain, px, centre=(x, y))


def _spikes(canvas_h, rng, bx, by, base, stain, px, centre=None):
    """Short hair-like chromosome arms sticking out of the clumps."""
    n = len(bx)
    m = n * 2
    idx = rng.integers(0, n, m)
    if centre is None:
        t = rng.uniform(0, 2 * np.pi, m)
    else:
        t = np.arctan2(by[idx] - centre[1], bx[idx] - centre[0]) + rng.normal(0, 0.6, m)
    ln = base + rng.uniform(0.6, 1.8, m) * px
    x0, y0 = bx[idx], by[idx]
    x1, y1 = x0 + ln * np.cos(t), y0 + ln * np.sin(t)
    for i in range(m):
        cv2.line(
            canvas_h,
            pts(np.array([x0[i], y0[i]]))[0, 0],
            pts(np.array([x1[i], y1[i]]))[0, 0],
            u8(stain * rng.uniform(0.7, 1.0)),
            1,
            cv2.LINE_AA,
            SHIFT,
        )


def draw_imposter(
    canvas_h: np.ndarray,
    canvas_clear: np.ndarray,
    canvas_eo: np.ndarray,
    rng: np.random.Generator,
    x: float,
    y: float,
    kind: str,
    scale: float,
    mpp: float,
    stain: float,
    tumor: TumorType,
) -> None:
    """Dark look-alikes with smooth outlines.

    Long (one branch per kind of look-alike): the branches are the kinds, and splitting
    them would only move the draws of one kind away from each other."""
    px = 1.0 / mpp
    c = pts(np.array([x, y]))[0, 0]
    if kind == "pyknotic":
        # shrunken, condensed nucleus (or a few smooth fragments) in bright eosinophilic
        # cytoplasm, separated from its neighbours by a retraction halo
        halo = rng.uniform(4.5, 6.0) * px * scale
        cv2.circle(
            canvas_clear, c, int(halo * ONE), int(rng.integers(110, 256)), -1, cv2.LINE_AA, SHIFT
        )
        if rng.random() < 0.6:
            cv2.circle(
                canvas_eo,
                c,
                int(halo * 0.72 * ONE),
                int(rng.integers(120, 256)),
                -1,
                cv2.LINE_AA,
                SHIFT,
            )
        if rng.random() < 0.4:  # karyorrhexis
            k = int(rng.integers(2, 5))
            t = rng.uniform(0, 2 * np.pi, k)
            rr = rng.uniform(1.0, 2.2, k) * px * scale
            for i in range(k):
                cc = pts(np.array([x + rr[i] * math.cos(t[i]), y + rr[i] * math.sin(t[i])]))[0, 0]
                cv2.circle(
                    canvas_h,
                    cc,
                    int(rng.uniform(0.9, 1.5) * px * scale * ONE),
                    u8(stain),
                    -1,
                    cv2.LINE_AA,
                    SHIFT,
                )
        else:
            r = rng.uniform(1.8, 2.8) * px * scale
            poly = blob_outlines(
                rng,
                np.array([x]),
                np.array([y]),
                np.array([r]),
                np.array([r * rng.uniform(0.8, 1.0)]),
                np.array([rng.uniform(0, np.pi)]),
                0.03,
                24,
            )
            cv2.fillPoly(canvas_h, [pts(poly[0])], u8(stain), cv2.LINE_AA, SHIFT)
    elif kind == "hyperchromatic":
        a = tumor.nucleus_radius * rng.uniform(0.9, 1.25) * px
        b = a / rng.uniform(1.0, 1.5)
        cv2.ellipse(
            canvas_clear,
            c,
            (int(a * 1.6 * ONE), int(b * 1.6 * ONE)),
            0,
            0,
            360,
            110,
            -1,
            cv2.LINE_AA,
            SHIFT,
        )
        poly = blob_outlines(
            rng,
            np.array([x]),
            np.array([y]),
            np.array([a]),
            np.array([b]),
            np.array([rng.uniform(0, np.pi)]),
            0.04,
            24,
        )
        cv2.fillPoly(canvas_h, [pts(poly[0])], u8(stain * 0.9), cv2.LINE_AA, SHIFT)
    else:  # lymphocyte: small, round, dark, a thin rim of cytoplasm
        r = rng.uniform(2.2, 2.9) * px
        cv2.circle(canvas_clear, c, int(r * 1.35 * ONE), 90, -1, cv2.LINE_AA, SHIFT)
        cv2.circle(canvas_h, c, int(r * ONE), u8(stain * 0.95), -1, cv2.LINE_AA, SHIFT)
