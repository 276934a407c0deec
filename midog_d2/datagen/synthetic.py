"""Generated MIDOG-like data: H&E-looking tiled TIFFs, MIDOG++ JSON and CSV.

The real MIDOG images cannot reach every machine, so tests and the demo use
images rendered here. They keep the real dataset's *form* (single-level tiled
TIFF regions of interest with µm/px tags, a MIDOG++ annotation JSON with 50-px
XYXY boxes, the ``;``-separated MIDOG++ CSV) and its hardest property, domain
shift: tumor types differ in architecture, cell density, nuclear size and
chromatin, scanners differ in stain colour, intensity, blur, noise and JPEG
artefacts. Mitotic figures (category 1) are drawn as dark clumped chromatin
with hairy outlines (metaphase plates, prometaphase rings/clumps, anaphase and
telophase pairs) in a pale cytoplasm; hard negatives (category 2) as
look-alikes with smooth outlines (pyknotic/apoptotic bodies, hyperchromatic
nuclei, lymphocytes).

Pictures are rendered as stain concentrations (haematoxylin, eosin, pigment)
and turned into RGB by Beer-Lambert with the scanner's stain matrix, so that a
scanner shift is a shift of the stain vectors, as in real slides.
See docs/synthetic_data.md for the domains and presets.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

if TYPE_CHECKING:
    from .realistic import RealSources

__all__ = [
    "TumorType",
    "Scanner",
    "Domain",
    "SyntheticSpec",
    "Cell",
    "TUMOR_TYPES",
    "SCANNERS",
    "PRESETS",
    "CATEGORIES",
    "BOX_SIZE",
    "render_image",
    "write_tiff",
    "generate_dataset",
    "load_positions",
    "render_preview",
]

# MIDOG++ categories and box size (every real box is 50 x 50 px).
CATEGORIES = [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}]
BOX_SIZE = 50
MITOSIS_KINDS = ("metaphase", "prometaphase", "anaphase", "telophase")
IMPOSTER_KINDS = ("pyknotic", "hyperchromatic", "lymphocyte")


@dataclass(frozen=True)
class TumorType:
    """Tissue parameters of one tumor type; lengths in µm."""

    name: str
    species: str
    origin: str  # lab written to the CSV's Origin column
    nucleus_radius: float  # mean semi-major axis of a tumor-cell nucleus
    nucleus_radius_sd: float
    aspect: Tuple[float, float]  # range of major/minor axis ratio
    irregularity: float  # amplitude of the outline harmonics
    cell_spacing: float  # centre-to-centre distance in cell-rich areas
    cellularity: float  # fraction of the area covered by tumor-cell sheets/nests
    nest_scale: float  # size of nests/sheets (scale of the layout noise)
    lumen: float  # fraction of the area that is lumen / empty space
    fat: float  # fraction of the area that is adipose tissue
    fibre: float  # strength of the collagen fibre texture in stroma
    chromatin: str  # "vesicular", "coarse", "dense" or "salt_pepper"
    nucleus_stain: float  # mean haematoxylin concentration of a nucleus
    cytoplasm_eosin: float
    cytoplasm_haem: float  # amphophilic / granular cytoplasm
    cell_borders: float  # strength of the pale gaps between cells
    spindle: bool = False  # nuclei follow the fibre direction (sarcoma)
    granules: float = 0.0  # purple cytoplasmic granules (mast cells)
    pigment: float = 0.0  # brown melanin (melanoma)
    nucleoli: float = 0.0  # probability of a visible nucleolus
    mitosis_factor: float = 1.0  # multiplies SyntheticSpec.mitoses_per_mm2
    imposter_factor: float = 1.0  # multiplies SyntheticSpec.imposters_per_mm2
    imposter_mix: Tuple[float, float, float] = (
        0.4,
        0.35,
        0.25,
    )  # pyknotic, hyperchromatic, lymphocyte


@dataclass(frozen=True)
class Scanner:
    """Scanner/lab look: stain matrix and acquisition artefacts."""

    name: str  # as spelled in the CSV's Scanner column
    mpp: float  # native µm/px (used when SyntheticSpec.mpp is None)
    haematoxylin: Tuple[float, float, float]  # optical density (R, G, B) per unit concentration
    eosin: Tuple[float, float, float]
    stain_scale: Tuple[float, float]  # haematoxylin, eosin staining intensity of the lab
    background: Tuple[float, float, float]  # white level (R, G, B)
    blur: float  # Gaussian focus blur, sigma in µm
    sharpen: float  # unsharp-mask amount applied by the scanner software
    noise: float  # sensor noise, sd in 8-bit units
    jpeg_quality: int  # 0: none; else the JPEG quality the scanner stores with


# One table each; order fixes the rng streams, so append, never reorder.
TUMOR_TYPES: Dict[str, TumorType] = {
    t.name: t
    for t in (
        TumorType(
            "human breast cancer",
            "Human",
            "UMC Utrecht",
            nucleus_radius=4.2,
            nucleus_radius_sd=0.9,
            aspect=(1.0, 1.6),
            irregularity=0.07,
            cell_spacing=11.0,
            cellularity=0.55,
            nest_scale=45.0,
            lumen=0.06,
            fat=0.08,
            fibre=1.0,
            chromatin="vesicular",
            nucleus_stain=0.85,
            cytoplasm_eosin=0.45,
            cytoplasm_haem=0.10,
            cell_borders=0.15,
            nucleoli=0.6,
        ),
        TumorType(
            "canine lung cancer",
            "Canine",
            "FU Berlin",
            nucleus_radius=3.6,
            nucleus_radius_sd=0.6,
            aspect=(1.1, 1.8),
            irregularity=0.05,
            cell_spacing=9.5,
            cellularity=0.6,
            nest_scale=30.0,
            lumen=0.13,
            fat=0.0,
            fibre=0.7,
            chromatin="coarse",
            nucleus_stain=1.0,
            cytoplasm_eosin=0.55,
            cytoplasm_haem=0.05,
            cell_borders=0.25,
            nucleoli=0.3,
            imposter_mix=(0.5, 0.3, 0.2),
        ),
        TumorType(
            "canine lymphoma",
            "Canine",
            "FU Berlin",
            nucleus_radius=3.1,
            nucleus_radius_sd=0.45,
            aspect=(1.0, 1.25),
            irregularity=0.06,
            cell_spacing=7.2,
            cellularity=1.0,
            nest_scale=80.0,
            lumen=0.0,
            fat=0.0,
            fibre=0.3,
            chromatin="dense",
            nucleus_stain=1.15,
            cytoplasm_eosin=0.35,
            cytoplasm_haem=0.12,
            cell_borders=0.55,
            nucleoli=0.2,
            mitosis_factor=1.6,
            imposter_factor=1.3,
            imposter_mix=(0.5, 0.2, 0.3),
        ),
        TumorType(
            "canine cutaneous mast cell tumor",
            "Canine",
            "VMU Vienna",
            nucleus_radius=3.3,
            nucleus_radius_sd=0.4,
            aspect=(1.0, 1.3),
            irregularity=0.04,
            cell_spacing=10.0,
            cellularity=0.8,
            nest_scale=60.0,
            lumen=0.02,
            fat=0.03,
            fibre=0.8,
            chromatin="coarse",
            nucleus_stain=0.95,
            cytoplasm_eosin=0.35,
            cytoplasm_haem=0.25,
            cell_borders=0.45,
            granules=0.6,
            nucleoli=0.1,
            mitosis_factor=0.7,
            imposter_mix=(0.3, 0.4, 0.3),
        ),
        TumorType(
            "human neuroendocrine tumor",
            "Human",
            "UMC Utrecht",
            nucleus_radius=3.3,
            nucleus_radius_sd=0.35,
            aspect=(1.0, 1.3),
            irregularity=0.03,
            cell_spacing=8.5,
            cellularity=0.65,
            nest_scale=22.0,
            lumen=0.03,
            fat=0.0,
            fibre=0.9,
            chromatin="salt_pepper",
            nucleus_stain=0.9,
            cytoplasm_eosin=0.5,
            cytoplasm_haem=0.08,
            cell_borders=0.1,
            nucleoli=0.05,
            mitosis_factor=0.6,
            imposter_mix=(0.35, 0.45, 0.2),
        ),
        TumorType(
            "canine soft tissue sarcoma",
            "Canine",
            "FU Berlin",
            nucleus_radius=4.4,
            nucleus_radius_sd=0.8,
            aspect=(2.2, 3.8),
            irregularity=0.05,
            cell_spacing=9.0,
            cellularity=0.85,
            nest_scale=70.0,
            lumen=0.02,
            fat=0.0,
            fibre=1.2,
            chromatin="coarse",
            nucleus_stain=0.95,
            cytoplasm_eosin=0.55,
            cytoplasm_haem=0.05,
            cell_borders=0.0,
            spindle=True,
            nucleoli=0.2,
            imposter_mix=(0.35, 0.45, 0.2),
        ),
        TumorType(
            "human melanoma",
            "Human",
            "UMC Utrecht",
            nucleus_radius=4.6,
            nucleus_radius_sd=1.0,
            aspect=(1.0, 1.5),
            irregularity=0.08,
            cell_spacing=12.0,
            cellularity=0.75,
            nest_scale=40.0,
            lumen=0.02,
            fat=0.0,
            fibre=0.8,
            chromatin="vesicular",
            nucleus_stain=0.8,
            cytoplasm_eosin=0.5,
            cytoplasm_haem=0.08,
            cell_borders=0.1,
            pigment=0.7,
            nucleoli=0.85,
        ),
    )
}

SCANNERS: Dict[str, Scanner] = {
    s.name: s
    for s in (
        # Bluish-purple haematoxylin, magenta eosin, sharp, lossless.
        Scanner(
            "Hamamatsu XR",
            0.23,
            (0.60, 0.76, 0.26),
            (0.08, 0.95, 0.32),
            (1.0, 0.95),
            (240, 236, 244),
            blur=0.18,
            sharpen=0.35,
            noise=1.5,
            jpeg_quality=0,
        ),
        # Lighter and pinker; mild JPEG.
        Scanner(
            "Hamamatsu S360",
            0.23,
            (0.52, 0.78, 0.28),
            (0.04, 0.88, 0.46),
            (0.8, 0.85),
            (246, 240, 246),
            blur=0.25,
            sharpen=0.2,
            noise=2.0,
            jpeg_quality=88,
        ),
        # Saturated, red-orange eosin, warm background, softer focus, Aperio's JPEG q70.
        Scanner(
            "Aperio CS2",
            0.25,
            (0.50, 0.80, 0.30),
            (0.02, 0.86, 0.62),
            (1.15, 1.25),
            (242, 230, 232),
            blur=0.35,
            sharpen=0.0,
            noise=2.5,
            jpeg_quality=70,
        ),
        # Pale, blue haematoxylin, grey-pink eosin, out-of-focus with strong sharpening,
        # noise and heavy JPEG: the blur softens the ragged outline that tells a mitosis
        # from a dark imposter on the training scanners (all sharper than 0.4 µm).
        Scanner(
            "Leica GT450",
            0.26,
            (0.72, 0.66, 0.20),
            (0.20, 0.95, 0.24),
            (0.75, 0.65),
            (248, 248, 250),
            blur=0.7,
            sharpen=0.8,
            noise=3.5,
            jpeg_quality=60,
        ),
        # Dark, dull, greyish; soft focus.
        Scanner(
            "3D Histech",
            0.25,
            (0.64, 0.70, 0.32),
            (0.14, 0.92, 0.36),
            (1.3, 1.05),
            (232, 232, 234),
            blur=0.4,
            sharpen=0.0,
            noise=2.0,
            jpeg_quality=85,
        ),
    )
}


@dataclass(frozen=True)
class Domain:
    """Images of one tumor type from one scanner, all in one split."""

    tumor: str
    scanner: str
    num_images: int
    split: str = "train"  # the CSV's Dataset column: "train" or "test"

    def __post_init__(self):
        if self.tumor not in TUMOR_TYPES:
            raise ValueError(f"unknown tumor type {self.tumor!r}; known: {sorted(TUMOR_TYPES)}")
        if self.scanner not in SCANNERS:
            raise ValueError(f"unknown scanner {self.scanner!r}; known: {sorted(SCANNERS)}")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {self.split!r}")
        if self.num_images < 0:
            raise ValueError(f"num_images must be >= 0, not {self.num_images}")


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`generate_dataset` writes."""

    domains: Tuple[Domain, ...]
    image_size: Tuple[int, int] = (2048, 2048)  # width, height in pixels
    mpp: Optional[float] = 0.25  # µm/px of every image; None: each scanner's native µm/px
    mitoses_per_mm2: float = 60.0  # before the tumor type's mitosis_factor
    imposters_per_mm2: float = 90.0  # before the tumor type's imposter_factor
    compression: str = "deflate"  # TIFF compression: "deflate", "none" (or "jpeg" with imagecodecs)


def _split_domains(
    train: Sequence[Tuple[str, str]], test: Sequence[Tuple[str, str]], n_train: int, n_test: int
) -> Tuple[Domain, ...]:
    return tuple(Domain(t, s, n_train, "train") for t, s in train) + tuple(
        Domain(t, s, n_test, "test") for t, s in test
    )


# Four training domains (three tumor types, three scanners); the test split holds
# out one tumor type (on a training scanner) and one scanner (on a training tumor).
_TRAIN_DOMAINS = (
    ("human breast cancer", "Hamamatsu XR"),
    ("human breast cancer", "Aperio CS2"),
    ("canine lung cancer", "Hamamatsu S360"),
    ("canine cutaneous mast cell tumor", "Aperio CS2"),
)
_TEST_DOMAINS = (
    ("human neuroendocrine tumor", "Hamamatsu XR"),  # unseen tumor type
    ("human breast cancer", "Leica GT450"),  # unseen scanner
)

PRESETS: Dict[str, SyntheticSpec] = {
    # For unit tests: seconds.
    "tiny": SyntheticSpec(
        _split_domains(_TRAIN_DOMAINS[:2], _TEST_DOMAINS[:1], 1, 1),
        (384, 320),
        mitoses_per_mm2=400.0,
        imposters_per_mm2=400.0,
    ),
    # For the CPU demo: 20 training + 8 held-out images of 1280 px (~15 s to generate).
    "demo": SyntheticSpec(
        _split_domains(_TRAIN_DOMAINS, _TEST_DOMAINS, 5, 4),
        (1280, 1280),
        mitoses_per_mm2=70.0,
        imposters_per_mm2=90.0,
    ),
    # Every tumor type on its MIDOG++ scanner, plus the scanner hold-outs.
    "full": SyntheticSpec(
        _split_domains(
            (
                ("human breast cancer", "Hamamatsu XR"),
                ("human breast cancer", "Hamamatsu S360"),
                ("human breast cancer", "Aperio CS2"),
                ("canine lung cancer", "3D Histech"),
                ("canine lymphoma", "3D Histech"),
                ("canine cutaneous mast cell tumor", "Aperio CS2"),
                ("canine soft tissue sarcoma", "3D Histech"),
                ("human melanoma", "Hamamatsu XR"),
            ),
            (
                ("human neuroendocrine tumor", "Hamamatsu XR"),
                ("human breast cancer", "Leica GT450"),
                ("canine lymphoma", "Leica GT450"),
            ),
            10,
            6,
        ),
        (2048, 2048),
    ),
}


@dataclass
class Cell:
    """One annotated cell of a rendered image (pixel centre)."""

    x: float
    y: float
    category_id: int  # 1 mitotic figure, 2 not mitotic figure
    kind: str  # one of MITOSIS_KINDS or IMPOSTER_KINDS; for real pixels, the source crop file


# --------------------------------------------------------------------------- noise


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], scale_px: float) -> np.ndarray:
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


def _soft_threshold(field_: np.ndarray, fraction: float, softness: float = 0.35) -> np.ndarray:
    """Soft mask in [0, 1] covering about ``fraction`` of a unit-variance field."""
    if fraction <= 0:
        return np.zeros_like(field_)
    if fraction >= 1:
        return np.ones_like(field_)
    thr = float(np.quantile(field_[::4, ::4], 1.0 - fraction))
    return 0.5 + 0.5 * np.tanh((field_ - thr) / (2 * softness))  # a logistic that cannot overflow


def _fibres(
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
        + _smooth_noise(rng, (hh, hw), 60.0 * px) * (18.0 * px)
        + _smooth_noise(rng, (hh, hw), 12.0 * px) * (2.5 * px)
    )
    gy_, gx_ = np.gradient(cv2.GaussianBlur(across, (0, 0), 4.0 * px))
    theta = np.arctan2(gy_, gx_) + np.pi / 2
    warp = _smooth_noise(rng, (hh, hw), 4.0 * px) * (0.6 * px)
    period = 4.5 * px
    phase = (across + warp) * (2 * np.pi / period)
    bands = np.sin(phase)
    # thin pale clefts between bundles, which break off here and there
    clefts = np.exp(-(bands + 1.0) / 0.08) * (np.sin(phase * 0.37 + 1.0) > -0.3)
    strength = np.clip(0.6 + 0.5 * _smooth_noise(rng, (hh, hw), 10.0 * px), 0, 1)
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

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(xy * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _blob_outlines(
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
_C = 100.0


def _u8(v: float) -> int:
    return int(min(max(round(v * _C), 0), 255))


def _draw_mitosis(canvas_h, canvas_clear, rng, x, y, kind, scale, mpp, stain):
    """Chromosome clumps with hairy outlines in a pale halo; lengths in µm x scale."""
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
        _pts(np.array([x, y]))[0, 0],
        (int(halo_a * _ONE), int(halo_b * _ONE)),
        math.degrees(ang + np.pi / 2),
        0,
        360,
        clear,
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )
    if kind == "telophase":  # cleavage furrow: two rounded daughter cells
        for s in (-1, 1):
            c = np.array([x + s * 0.45 * halo_a * -sa, y + s * 0.45 * halo_a * ca])
            cv2.circle(
                canvas_clear,
                _pts(c)[0, 0],
                int(halo_b * 0.75 * _ONE),
                clear,
                -1,
                cv2.LINE_AA,
                _SHIFT,
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
                _pts(np.array([bx[i], by[i]]))[0, 0],
                max(int(rad[i] * _ONE), _ONE),
                _u8(v[i]),
                -1,
                cv2.LINE_AA,
                _SHIFT,
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
            _pts(np.array([bx[i], by[i]]))[0, 0],
            max(int(rad[i] * _ONE), _ONE),
            _u8(stain * rng.uniform(0.85, 1.15)),
            -1,
            cv2.LINE_AA,
            _SHIFT,
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
            _pts(np.array([x0[i], y0[i]]))[0, 0],
            _pts(np.array([x1[i], y1[i]]))[0, 0],
            _u8(stain * rng.uniform(0.7, 1.0)),
            1,
            cv2.LINE_AA,
            _SHIFT,
        )


def _draw_imposter(
    canvas_h, canvas_clear, canvas_eo, rng, x, y, kind, scale, mpp, stain, tumor: TumorType
):
    """Dark look-alikes with smooth outlines."""
    px = 1.0 / mpp
    c = _pts(np.array([x, y]))[0, 0]
    if kind == "pyknotic":
        # shrunken, condensed nucleus (or a few smooth fragments) in bright eosinophilic
        # cytoplasm, separated from its neighbours by a retraction halo
        halo = rng.uniform(4.5, 6.0) * px * scale
        cv2.circle(
            canvas_clear, c, int(halo * _ONE), int(rng.integers(110, 256)), -1, cv2.LINE_AA, _SHIFT
        )
        if rng.random() < 0.6:
            cv2.circle(
                canvas_eo,
                c,
                int(halo * 0.72 * _ONE),
                int(rng.integers(120, 256)),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
        if rng.random() < 0.4:  # karyorrhexis
            k = int(rng.integers(2, 5))
            t = rng.uniform(0, 2 * np.pi, k)
            rr = rng.uniform(1.0, 2.2, k) * px * scale
            for i in range(k):
                cc = _pts(np.array([x + rr[i] * math.cos(t[i]), y + rr[i] * math.sin(t[i])]))[0, 0]
                cv2.circle(
                    canvas_h,
                    cc,
                    int(rng.uniform(0.9, 1.5) * px * scale * _ONE),
                    _u8(stain),
                    -1,
                    cv2.LINE_AA,
                    _SHIFT,
                )
        else:
            r = rng.uniform(1.8, 2.8) * px * scale
            poly = _blob_outlines(
                rng,
                np.array([x]),
                np.array([y]),
                np.array([r]),
                np.array([r * rng.uniform(0.8, 1.0)]),
                np.array([rng.uniform(0, np.pi)]),
                0.03,
                24,
            )
            cv2.fillPoly(canvas_h, [_pts(poly[0])], _u8(stain), cv2.LINE_AA, _SHIFT)
    elif kind == "hyperchromatic":
        a = tumor.nucleus_radius * rng.uniform(0.9, 1.25) * px
        b = a / rng.uniform(1.0, 1.5)
        cv2.ellipse(
            canvas_clear,
            c,
            (int(a * 1.6 * _ONE), int(b * 1.6 * _ONE)),
            0,
            0,
            360,
            110,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        poly = _blob_outlines(
            rng,
            np.array([x]),
            np.array([y]),
            np.array([a]),
            np.array([b]),
            np.array([rng.uniform(0, np.pi)]),
            0.04,
            24,
        )
        cv2.fillPoly(canvas_h, [_pts(poly[0])], _u8(stain * 0.9), cv2.LINE_AA, _SHIFT)
    else:  # lymphocyte: small, round, dark, a thin rim of cytoplasm
        r = rng.uniform(2.2, 2.9) * px
        cv2.circle(canvas_clear, c, int(r * 1.35 * _ONE), 90, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(canvas_h, c, int(r * _ONE), _u8(stain * 0.95), -1, cv2.LINE_AA, _SHIFT)


# --------------------------------------------------------------------------- image


def _place_special(
    rng, n, weight: np.ndarray, size, min_dist_px, margin
) -> List[Tuple[float, float]]:
    """Up to ``n`` positions drawn from ``weight`` (a coarse map), at least min_dist apart."""
    w, h = size
    out: List[Tuple[float, float]] = []
    if n <= 0:
        return out
    cand = 40 * n + 50
    xs = rng.uniform(margin, w - margin, cand)
    ys = rng.uniform(margin, h - margin, cand)
    gh, gw = weight.shape
    p = weight[
        np.clip((ys / h * gh).astype(int), 0, gh - 1), np.clip((xs / w * gw).astype(int), 0, gw - 1)
    ]
    keep = rng.random(cand) < p
    pts: List[Tuple[float, float]] = []
    for x, y in zip(xs[keep], ys[keep]):
        if all((x - px_) ** 2 + (y - py_) ** 2 >= min_dist_px**2 for px_, py_ in pts):
            out.append((float(x), float(y)))
            pts.append((float(x), float(y)))
            if len(out) == n:
                break
    return out


def render_image(
    tumor: TumorType,
    scanner: Scanner,
    size: Tuple[int, int],
    mpp: float,
    rng: np.random.Generator,
    num_mitoses: int = 0,
    num_imposters: int = 0,
    positions: Optional[Sequence[Tuple[float, float, int]]] = None,
) -> Tuple[np.ndarray, List[Cell]]:
    """
    Render one H&E-like region of interest.

    Args:
        tumor, scanner: the domain.
        size: (width, height) in pixels.
        mpp: µm per pixel the image is drawn at (sizes are physical).
        rng: the only source of randomness (same state -> same pixels).
        num_mitoses, num_imposters: how many cells of each category to place,
            where the tissue has cells, ``BOX_SIZE / 2`` px from the edges and
            11 µm apart (fewer when they do not fit).
        positions: (x, y, category_id) to place cells at instead; each must lie
            ``BOX_SIZE / 2`` px inside the image.

    Returns:
        An (H, W, 3) uint8 RGB image and its annotated cells.
    """
    w, h = int(size[0]), int(size[1])
    if w < BOX_SIZE or h < BOX_SIZE:
        raise ValueError(f"image size {size} is smaller than one {BOX_SIZE}-px box")
    px = 1.0 / mpp
    shape = (h, w)

    # ---- layout: cell-rich nests vs stroma, lumina, fat
    cell_field = _smooth_noise(rng, shape, tumor.nest_scale * px)
    cellular = _soft_threshold(cell_field, tumor.cellularity)
    lumen_field = _smooth_noise(rng, shape, 0.4 * tumor.nest_scale * px)
    lumen = _soft_threshold(lumen_field, tumor.lumen, 0.04)
    fat = _soft_threshold(-cell_field + 0.5 * lumen_field, tumor.fat, 0.1) * (1 - cellular)
    fibre, theta = _fibres(rng, shape, mpp)

    # ---- cells on a jittered grid, kept where the tissue is cellular
    sp = tumor.cell_spacing * px
    gx, gy = np.meshgrid(np.arange(sp / 2, w, sp), np.arange(sp / 2, h, sp))
    gx = gx.ravel() + rng.uniform(-0.38, 0.38, gx.size) * sp
    gy = gy.ravel() + rng.uniform(-0.38, 0.38, gy.size) * sp
    ix = np.clip(gx.astype(int), 0, w - 1)
    iy = np.clip(gy.astype(int), 0, h - 1)
    c_at, l_at, f_at = cellular[iy, ix], lumen[iy, ix], fat[iy, ix]
    u = rng.random(gx.size)
    is_tumor = u < c_at * (1 - l_at) * 0.97
    is_stromal = (~is_tumor) & (u < 0.97 * c_at + 0.25 * (1 - c_at) * (1 - l_at) * (1 - f_at))

    # ---- special cells
    mit_kinds = list(MITOSIS_KINDS)
    specials: List[Cell] = []
    if positions is not None:
        for x, y, cat in positions:
            m = BOX_SIZE / 2
            if not (m <= x <= w - m and m <= y <= h - m) or cat not in (1, 2):
                raise ValueError(
                    f"cell ({x}, {y}, category {cat}) is not a category 1/2 cell whose "
                    f"{BOX_SIZE}-px box lies inside a {w} x {h} image"
                )
            kind = (
                mit_kinds[int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))]
                if cat == 1
                else IMPOSTER_KINDS[int(rng.choice(3, p=tumor.imposter_mix))]
            )
            specials.append(Cell(float(x), float(y), int(cat), kind))
    else:
        # mostly in cell-rich tissue, rarely in stroma, never in a lumen
        weight = np.clip(cellular * 1.2, 0.05, 1.0) * (1 - lumen) ** 4
        weight = cv2.resize(
            weight.astype(np.float32),
            (max(w // 16, 1), max(h // 16, 1)),
            interpolation=cv2.INTER_AREA,
        )
        xy = _place_special(
            rng, num_mitoses + num_imposters, weight, (w, h), 11.0 * px, BOX_SIZE / 2
        )
        order = rng.permutation(len(xy))
        for j, k in enumerate(order):
            x, y = xy[k]
            if j < min(num_mitoses, len(xy)):
                kind = mit_kinds[int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))]
                specials.append(Cell(x, y, 1, kind))
            else:
                kind = IMPOSTER_KINDS[int(rng.choice(3, p=tumor.imposter_mix))]
                specials.append(Cell(x, y, 2, kind))
    # no ordinary nucleus under a special cell
    if specials:
        sx = np.array([c.x for c in specials])
        sy = np.array([c.y for c in specials])
        d2 = (gx[:, None] - sx[None]) ** 2 + (gy[:, None] - sy[None]) ** 2
        free = d2.min(axis=1) > (6.0 * px) ** 2
        is_tumor &= free
        is_stromal &= free

    canvas_h = np.zeros(shape, np.uint8)  # nuclear haematoxylin x 100
    canvas_clear = np.zeros(shape, np.uint8)  # 255: pale halo / retraction around special cells
    canvas_eo = np.zeros(shape, np.uint8)  # 255: eosinophilic apoptotic cytoplasm

    # ---- ordinary nuclei: tumor cells, then stromal (fibroblast-like) cells
    nt = int(is_tumor.sum())
    tx, ty = gx[is_tumor], gy[is_tumor]
    a = (
        np.clip(
            rng.normal(tumor.nucleus_radius, tumor.nucleus_radius_sd, nt),
            0.55 * tumor.nucleus_radius,
            None,
        )
        * px
    )
    asp = rng.uniform(*tumor.aspect, nt)
    if tumor.spindle:
        ang = theta[ty.astype(int).clip(0, h - 1), tx.astype(int).clip(0, w - 1)] + rng.normal(
            0, 0.15, nt
        )
        a = a * np.sqrt(asp) / 1.3
    else:
        ang = rng.uniform(0, np.pi, nt)
        a = a * asp**0.25
    b = a / asp
    polys = _blob_outlines(rng, tx, ty, a, b, ang, tumor.irregularity)
    stain = np.clip(rng.normal(tumor.nucleus_stain, 0.12, nt), 0.45, 1.4)
    vesicular = tumor.chromatin == "vesicular"
    nucleoli = rng.random(nt) < tumor.nucleoli
    for i in range(nt):
        p = _pts(polys[i])
        cv2.fillPoly(
            canvas_h, [p], _u8(stain[i] * (0.55 if vesicular else 1.0)), cv2.LINE_AA, _SHIFT
        )
        # condensed chromatin along the nuclear membrane
        cv2.polylines(
            canvas_h,
            [p],
            True,
            _u8(stain[i] * 1.25),
            max(int(round(0.35 * px)), 1),
            cv2.LINE_AA,
            _SHIFT,
        )
        if nucleoli[i]:
            off = rng.normal(0, 0.25, 2) * b[i]
            cv2.circle(
                canvas_h,
                _pts(np.array([tx[i] + off[0], ty[i] + off[1]]))[0, 0],
                int(rng.uniform(0.45, 0.8) * px * _ONE),
                _u8(stain[i] * 1.5),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
    ns = int(is_stromal.sum())
    if ns:
        sx_, sy_ = gx[is_stromal], gy[is_stromal]
        sang = theta[sy_.astype(int).clip(0, h - 1), sx_.astype(int).clip(0, w - 1)] + rng.normal(
            0, 0.2, ns
        )
        sa_ = rng.uniform(3.5, 6.0, ns) * px
        sb_ = sa_ / rng.uniform(3.0, 5.5, ns)
        spolys = _blob_outlines(rng, sx_, sy_, sa_, sb_, sang, 0.04, 14)
        sst = np.clip(rng.normal(1.0, 0.15, ns), 0.6, 1.3)
        for i in range(ns):
            cv2.fillPoly(canvas_h, [_pts(spolys[i])], _u8(sst[i]), cv2.LINE_AA, _SHIFT)

    # ---- special cells, drawn over everything
    mit_stain = 2.1 * (0.55 + 0.45 * tumor.nucleus_stain)
    for c in specials:
        st = float(rng.uniform(0.9, 1.1)) * mit_stain
        if c.category_id == 1:
            _draw_mitosis(
                canvas_h,
                canvas_clear,
                rng,
                c.x,
                c.y,
                c.kind,
                float(np.clip(tumor.nucleus_radius / 3.8, 0.8, 1.15)),
                mpp,
                st,
            )
        else:
            _draw_imposter(
                canvas_h, canvas_clear, canvas_eo, rng, c.x, c.y, c.kind, 1.0, mpp, st * 0.92, tumor
            )

    # ---- nuclear texture
    nuc = canvas_h.astype(np.float32) * (1.0 / _C)
    fine = _smooth_noise(rng, shape, 1.2)
    if tumor.chromatin == "salt_pepper":
        tex = 0.8 + 0.45 * np.maximum(fine - 0.6, 0) - 0.1 * np.minimum(fine, 0)
    elif tumor.chromatin == "dense":
        tex = 1.0 + 0.18 * fine
    elif tumor.chromatin == "vesicular":
        tex = 1.0 + 0.32 * fine
    else:  # coarse
        tex = 1.0 + 0.28 * np.tanh(_smooth_noise(rng, shape, 2.5 * px / 4) * 1.5)
    nuc *= tex
    nuc = cv2.GaussianBlur(nuc, (0, 0), 0.25 * px)

    # ---- cytoplasm and cell borders (Voronoi of the cell centres)
    seeds = np.full(shape, 255, np.uint8)
    cx_all = np.concatenate([tx, np.array([c.x for c in specials])]).astype(int).clip(0, w - 1)
    cy_all = np.concatenate([ty, np.array([c.y for c in specials])]).astype(int).clip(0, h - 1)
    if cx_all.size:
        seeds[cy_all, cx_all] = 0
        dist, labels = cv2.distanceTransformWithLabels(
            seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
        )
    else:
        dist = np.full(shape, 1e6, np.float32)
        labels = np.zeros(shape, np.int32)
    # in nests cytoplasm fills the space between nuclei; elsewhere it hugs them
    cyto = np.maximum(np.clip((0.62 * sp - dist) / (0.15 * sp), 0, 1), 0.9 * cellular).astype(
        np.float32
    )
    border = np.zeros(shape, np.float32)
    border[:, 1:] += labels[:, 1:] != labels[:, :-1]
    border[1:, :] += labels[1:, :] != labels[:-1, :]
    border = cv2.GaussianBlur(np.minimum(border, 1), (0, 0), 0.35 * px) * cyto
    border = np.minimum(border * 2.5, 1.0)

    # ---- eosin: stroma fibres, cytoplasm, apoptotic eosinophilia
    stroma_e = 0.5 * (1 + 0.6 * tumor.fibre * fibre)
    eo = (1 - cyto) * stroma_e + cyto * tumor.cytoplasm_eosin * (
        1 + 0.15 * _smooth_noise(rng, shape, 3 * px)
    )
    eo = eo * (1 - tumor.cell_borders * border)
    ha = cyto * tumor.cytoplasm_haem
    if tumor.granules:
        gran = 0.6 * np.maximum(_smooth_noise(rng, shape, 0.35 * px) - 0.3, 0)
        ha = ha + cyto * tumor.granules * gran * (1 - border)
    clear = cv2.GaussianBlur(canvas_clear.astype(np.float32) * (1 / 255.0), (0, 0), 0.6 * px)
    eo_boost = cv2.GaussianBlur(canvas_eo.astype(np.float32) * (1 / 255.0), (0, 0), 0.5 * px)
    eo = eo * (1 - 0.5 * clear) + 0.4 * eo_boost
    ha = (ha + 0.1) * (1 - 0.5 * clear)  # a little haematoxylin everywhere: H&E is never pure pink
    pig = None
    if tumor.pigment:
        blobs = _soft_threshold(_smooth_noise(rng, shape, 12 * px), 0.12, 0.2)
        pig = (
            tumor.pigment * blobs * np.maximum(_smooth_noise(rng, shape, 0.8 * px) - 0.3, 0) * cyto
        )

    # ---- holes: lumina and fat (adipocytes = empty polygons with thin pink membranes)
    hole = lumen.copy()
    if tumor.fat > 0 and float(fat.max()) > 0.05:
        fat_seeds = np.full(shape, 255, np.uint8)
        fs = 22.0 * px
        fx, fy = np.meshgrid(np.arange(fs / 2, w, fs), np.arange(fs / 2, h, fs))
        fx = (fx.ravel() + rng.uniform(-0.3, 0.3, fx.size) * fs).astype(int).clip(0, w - 1)
        fy = (fy.ravel() + rng.uniform(-0.3, 0.3, fy.size) * fs).astype(int).clip(0, h - 1)
        fat_seeds[fy, fx] = 0
        _, flab = cv2.distanceTransformWithLabels(
            fat_seeds, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
        )
        membrane = np.zeros(shape, np.float32)
        membrane[:, 1:] += flab[:, 1:] != flab[:, :-1]
        membrane[1:, :] += flab[1:, :] != flab[:-1, :]
        membrane = np.minimum(cv2.GaussianBlur(np.minimum(membrane, 1), (0, 0), 0.7), 1) * 1.6
        fat_hole = np.clip(fat * 1.6 - 0.3, 0, 1)
        hole = np.maximum(hole, fat_hole * (1 - np.minimum(membrane, 1)))
    # an annotated cell is never erased by a lumen or fat vacuole it happens to touch
    hole *= 1.0 - np.minimum(clear * 4.0, 1.0)
    keep = 1.0 - 0.96 * hole
    h_conc = (nuc + ha) * keep
    e_conc = eo * keep + 0.06 * hole  # faint proteinaceous secretion in lumina

    return _acquire(scanner, h_conc, e_conc, pig, mpp, rng), specials


def _acquire(scanner: Scanner, h_conc, e_conc, pigment, mpp, rng) -> np.ndarray:
    """Beer-Lambert with the scanner's stain matrix, then focus blur, sharpening, noise, JPEG."""
    jit = rng.normal(1.0, 0.06, 2)  # slide-to-slide staining variation inside one lab
    hv = np.asarray(scanner.haematoxylin, np.float32) * scanner.stain_scale[0] * jit[0]
    ev = np.asarray(scanner.eosin, np.float32) * scanner.stain_scale[1] * jit[1]
    bg = np.asarray(scanner.background, np.float32) * rng.uniform(0.985, 1.0)
    melanin = np.asarray((0.35, 0.55, 0.85), np.float32) * 1.6  # brown
    sigma = scanner.blur / mpp
    channels = []
    for c in range(3):  # one 2-D plane at a time: no (H, W, 3) temporaries
        od = cv2.addWeighted(h_conc, -float(hv[c]), e_conc, -float(ev[c]), 0.0)
        if pigment is not None:
            od -= pigment * float(melanin[c])
        np.exp(od, out=od)
        od *= float(bg[c])
        if sigma > 0.3:
            od = cv2.GaussianBlur(od, (0, 0), sigma)
        if scanner.sharpen > 0:
            soft = cv2.GaussianBlur(od, (0, 0), 1.5)
            od = cv2.addWeighted(od, 1 + scanner.sharpen, soft, -scanner.sharpen, 0.5)
        else:
            od += 0.5  # rounds on the cast below
        channels.append(od)
    img = cv2.merge(channels)
    if scanner.noise > 0:
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise *= scanner.noise
        img += noise
    np.clip(img, 0, 255, out=img)
    img = img.astype(np.uint8)
    if scanner.jpeg_quality:
        ok, buf = cv2.imencode(
            ".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(scanner.jpeg_quality)]
        )
        img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return img


# --------------------------------------------------------------------------- files

_COMPRESSION = {"deflate": "zlib", "none": None, "jpeg": "jpeg"}


def write_tiff(path: Path, rgb: np.ndarray, mpp: float, compression: str = "deflate") -> None:
    """Write a single-level tiled (256 x 256) RGB TIFF with µm/px resolution tags."""
    import tifffile

    if compression not in _COMPRESSION:
        raise ValueError(
            f"{path}: compression must be one of {sorted(_COMPRESSION)}, not {compression!r}"
        )
    kwargs = {}
    if compression == "jpeg":
        try:
            import imagecodecs  # noqa: F401
        except ImportError as e:
            raise ValueError(f"{path}: TIFF JPEG compression needs the imagecodecs package") from e
        kwargs["compressionargs"] = {"level": 90}
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        compression=_COMPRESSION[compression],
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
        metadata=None,
        maxworkers=1,
        **kwargs,
    )


def load_positions(json_file: Path) -> Dict[str, List[List[Tuple[float, float, int]]]]:
    """
    Cell centres of every annotated image of a MIDOG/MIDOG++ JSON, by canonical tumor type.

    Returns ``{tumor type: [[(x, y, category_id 1 or 2), ...] per image]}``.
    """
    from ..data.midog import (
        load_midog_json,  # the project's reader: validation, aliases, XYXY boxes
    )

    out: Dict[str, List[List[Tuple[float, float, int]]]] = {}
    for d in load_midog_json(str(json_file), default_tumor_type="human breast cancer"):
        cells = [
            (
                (a["bbox"][0] + a["bbox"][2]) / 2,
                (a["bbox"][1] + a["bbox"][3]) / 2,
                a["category_id"] + 1,
            )
            for a in d["annotations"]
        ]
        if cells:
            out.setdefault(d["tumor_type"], []).append(cells)
    return out


def _crop_positions(
    rng: np.random.Generator, cells: List[Tuple[float, float, int]], size, mpp, source_mpp=0.25
) -> List[Tuple[float, float, int]]:
    """The cells of the densest window (of the generated image's physical size) of one real ROI."""
    w, h = size
    pts = np.array(
        [(x * source_mpp / mpp, y * source_mpp / mpp, c) for x, y, c in cells], np.float64
    )
    m = BOX_SIZE / 2
    # The densest window can be slid until one cell touches its left margin and one its
    # top margin, so those origins are the only candidates (at most 150 each way).
    ox_c = np.unique(pts[:, 0] - m)
    oy_c = np.unique(pts[:, 1] - m)
    if len(ox_c) > 150:
        ox_c = np.sort(rng.choice(ox_c, 150, replace=False))
    if len(oy_c) > 150:
        oy_c = np.sort(rng.choice(oy_c, 150, replace=False))
    in_x = (pts[None, :, 0] - ox_c[:, None] >= m) & (
        pts[None, :, 0] - ox_c[:, None] <= w - m
    )  # (X, N)
    in_y = (pts[None, :, 1] - oy_c[:, None] >= m) & (
        pts[None, :, 1] - oy_c[:, None] <= h - m
    )  # (Y, N)
    count = in_x.astype(np.int32) @ in_y.T.astype(np.int32)  # (X, Y)
    bx, by = np.nonzero(count == count.max())
    k = int(rng.integers(len(bx)))
    ox, oy = ox_c[bx[k]], oy_c[by[k]]
    sel = pts[in_x[bx[k]] & in_y[by[k]]]
    out = []
    min_d2 = (6.0 / mpp) ** 2  # cells closer than this would be drawn on top of each other
    for x, y, c in sel:
        x, y = x - ox, y - oy
        if all((x - a) ** 2 + (y - b) ** 2 >= min_d2 for a, b, _ in out):
            out.append((float(x), float(y), int(c)))
    return out


def generate_dataset(
    out_dir: Path,
    spec: SyntheticSpec,
    seed: int = 0,
    positions_from: Optional[Path] = None,
    json_name: str = "synthetic_midog.json",
    csv_name: str = "synthetic_midog.csv",
    real_sources: Optional["RealSources"] = None,
) -> Dict[str, object]:
    """
    Render every image of ``spec`` into ``out_dir`` with its annotations.

    Writes ``001.tiff`` ... (tiled, µm/px tags), a MIDOG++-style JSON (XYXY 50-px
    boxes, ``tumor_type`` per image) and a ``;``-separated MIDOG++ CSV
    (``Slide;Dataset;Tumor;Scanner;Origin;Species``). The same ``seed`` gives
    byte-identical files.

    Args:
        positions_from: a MIDOG++ JSON; cells are placed at its real annotation
            positions (the densest window of an annotated image of the same tumor
            type, assumed at 0.25 µm/px) instead of at random.
        real_sources: build every image from real tissue and real mitotic figures
            (:mod:`midog_d2.datagen.realistic`) instead of drawing it; the domains'
            scanners still render the stains. Annotations then name their
            ``source_crop``.

    Returns:
        ``{"json_file", "csv_file", "image_root", "images": [{id, file_name, tumor, scanner,
        split, mpp, cells}]}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if real_sources is not None and positions_from is not None:
        raise ValueError(
            "generate_dataset: positions_from places drawn cells; it cannot be used with real_sources"
        )
    positions = load_positions(positions_from) if positions_from is not None else None
    # Tumor types met in training, in a fixed order: each gets its own share of real tissue.
    train_tumors = list(dict.fromkeys(d.tumor for d in spec.domains if d.split == "train"))
    w, h = spec.image_size
    images, annotations, records = [], [], []
    slide = 0
    ann_id = 0
    tumor_idx = {name: i for i, name in enumerate(TUMOR_TYPES)}
    scanner_idx = {name: i for i, name in enumerate(SCANNERS)}
    for domain in spec.domains:
        tumor, scanner = TUMOR_TYPES[domain.tumor], SCANNERS[domain.scanner]
        mpp = spec.mpp if spec.mpp is not None else scanner.mpp
        area_mm2 = w * h * (mpp * 1e-3) ** 2
        for k in range(domain.num_images):
            slide += 1
            # one stream per (seed, domain, k): an image does not change when other domains are added
            rng = np.random.default_rng(
                [seed, tumor_idx[domain.tumor], scanner_idx[domain.scanner], k]
            )
            pos = None
            if positions is not None:
                pool = positions.get(domain.tumor)
                if not pool:
                    raise ValueError(
                        f"{positions_from}: no annotated image of tumor type {domain.tumor!r}"
                    )
                pos = _crop_positions(rng, pool[int(rng.integers(len(pool)))], (w, h), mpp)
            n_mit = int(rng.poisson(spec.mitoses_per_mm2 * tumor.mitosis_factor * area_mm2))
            n_imp = int(rng.poisson(spec.imposters_per_mm2 * tumor.imposter_factor * area_mm2))
            if real_sources is None:
                rgb, cells = render_image(tumor, scanner, (w, h), mpp, rng, n_mit, n_imp, pos)
            else:
                from .realistic import render_realistic_image  # it builds on this module

                rgb, cells = render_realistic_image(
                    scanner,
                    (w, h),
                    mpp,
                    rng,
                    real_sources,
                    real_sources.tissue_for(domain.tumor, train_tumors),
                    n_mit,
                    n_imp,
                    heldout=domain.split == "test",
                )
            file_name = f"{slide:03d}.tiff"
            write_tiff(out_dir / file_name, rgb, mpp, spec.compression)
            images.append(
                {
                    "license": 1,
                    "file_name": file_name,
                    "id": slide,
                    "width": w,
                    "height": h,
                    "tumor_type": domain.tumor,
                }
            )
            for c in cells:
                ann_id += 1
                x1 = int(round(c.x)) - BOX_SIZE // 2
                y1 = int(round(c.y)) - BOX_SIZE // 2
                # experts' votes: the majority is the category, sometimes one dissents
                other = 3 - c.category_id
                votes = [c.category_id, c.category_id] + (
                    [other] if rng.random() < 0.15 else [c.category_id] * int(rng.random() < 0.5)
                )
                ann = {
                    "bbox": [x1, y1, x1 + BOX_SIZE, y1 + BOX_SIZE],
                    "category_id": c.category_id,
                    "image_id": slide,
                    "labels": votes,
                    "id": ann_id,
                }
                if real_sources is not None:
                    ann["source_crop"] = c.kind
                annotations.append(ann)
            records.append(
                {
                    "id": slide,
                    "file_name": file_name,
                    "tumor": domain.tumor,
                    "scanner": domain.scanner,
                    "split": domain.split,
                    "mpp": mpp,
                    "cells": cells,
                }
            )
    data = {
        "info": {
            "description": "Synthetic MIDOG++-like dataset (midog_d2.datagen.synthetic)",
            "seed": seed,
            "spec": json.loads(json.dumps(dataclasses.asdict(spec))),
            "positions_from": Path(positions_from).name if positions_from is not None else None,
            "real_appearance": (
                None
                if real_sources is None
                else {
                    "train_tiles": [t.name for t in real_sources.train_tiles],
                    "heldout_tiles": [t.name for t in real_sources.heldout_tiles],
                    "tissue": {
                        d.tumor: [t.name for t in real_sources.tissue_for(d.tumor, train_tumors)]
                        for d in spec.domains
                    },
                    "train_crops_used": len(real_sources.train_figures.used),
                    "heldout_crops_used": len(real_sources.heldout_figures.used),
                    "reshuffles": real_sources.train_figures.reshuffles
                    + real_sources.heldout_figures.reshuffles,
                }
            ),
        },
        "licenses": [
            {
                "id": 1,
                "name": "CC0 1.0",
                "url": "https://creativecommons.org/publicdomain/zero/1.0/",
            }
        ],
        "images": images,
        "categories": CATEGORIES,
        "annotations": annotations,
    }
    json_file = out_dir / json_name
    json_file.write_text(json.dumps(data, indent=1))
    csv_file = out_dir / csv_name
    with open(csv_file, "w", newline="") as f:
        wr = csv.writer(f, delimiter=";", lineterminator="\n")
        wr.writerow(["Slide", "Dataset", "Tumor", "Scanner", "Origin", "Species"])
        for r in records:
            t = TUMOR_TYPES[r["tumor"]]
            wr.writerow([r["id"], r["split"], r["tumor"], r["scanner"], t.origin, t.species])
    return {"json_file": json_file, "csv_file": csv_file, "image_root": out_dir, "images": records}


# --------------------------------------------------------------------------- preview


def render_preview(
    json_file: Path,
    csv_file: Path,
    out_png: Path,
    image_root: Optional[Path] = None,
    crops_per_domain: int = 3,
    crop: int = 256,
) -> Path:
    """
    A PNG of ``crop``-px crops from each (tumor, scanner) domain, read back from
    the written files, boxes drawn (green: mitotic figure, blue: not mitotic figure),
    stored with a 256-colour palette.
    """
    import tifffile

    json_file, csv_file = Path(json_file), Path(csv_file)
    image_root = Path(image_root) if image_root is not None else json_file.parent
    data = json.loads(json_file.read_text())
    with open(csv_file, newline="") as f:
        rows = {int(r["Slide"]): r for r in csv.DictReader(f, delimiter=";")}
    anns: Dict[int, list] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    by_domain: Dict[Tuple[str, str, str], list] = {}
    for im in data["images"]:
        r = rows[im["id"]]
        by_domain.setdefault((r["Tumor"], r["Scanner"], r["Dataset"]), []).append(im)
    label_h = 22
    strips = []
    for (tumor, scanner, split), ims in by_domain.items():
        tiles = []
        # centre crops on mitoses and imposters alternately, over the domain's images
        wanted = [1, 2, 1, 2, 1, 2][:crops_per_domain]
        pool = [(im, a) for im in ims for a in anns.get(im["id"], [])]
        for cat in wanted:
            cands = [(im, a) for im, a in pool if a["category_id"] == cat] or pool
            if not cands:
                break
            im, a = cands[len(tiles) % len(cands)]
            pool = [p for p in pool if p[1] is not a]
            img = tifffile.imread(image_root / im["file_name"])
            cx, cy = (a["bbox"][0] + a["bbox"][2]) // 2, (a["bbox"][1] + a["bbox"][3]) // 2
            x0 = int(np.clip(cx - crop // 2, 0, max(im["width"] - crop, 0)))
            y0 = int(np.clip(cy - crop // 2, 0, max(im["height"] - crop, 0)))
            tile = np.ascontiguousarray(img[y0 : y0 + crop, x0 : x0 + crop, :3])
            for b in anns.get(im["id"], []):
                x1, y1, x2, y2 = b["bbox"]
                color = (0, 200, 0) if b["category_id"] == 1 else (40, 90, 255)
                cv2.rectangle(tile, (x1 - x0, y1 - y0), (x2 - x0, y2 - y0), color, 2)
            tiles.append(tile)
        if not tiles:
            continue
        row = np.concatenate(tiles, axis=1)
        bar = np.full((label_h, row.shape[1], 3), 255, np.uint8)
        cv2.putText(
            bar,
            f"{tumor} | {scanner} | {split}",
            (4, 16),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        strips.append(np.concatenate([bar, row], axis=0))
    if not strips:
        raise ValueError(f"{json_file}: no annotated image to preview")
    width = max(s.shape[1] for s in strips)
    strips = [
        np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips
    ]
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    # a 256-colour palette keeps the PNG small enough for the docs (about 3x smaller)
    Image.fromarray(np.concatenate(strips, axis=0)).quantize(
        256, method=Image.Quantize.MEDIANCUT
    ).save(out_png, optimize=True)
    return out_png
