"""Clinical read-outs of a slide's detections: the mitotic count per mm² of analysed tissue and
the hotspot, the window of 10 high-power fields with the most mitotic figures (midog.md §5).

One HPF is about 0.237 mm², so 10 HPF are 2.37 mm², a 4:3 rectangle (the veterinary
standard; many human guidelines count per 2 mm²: pass that area). The hotspot search is
exact: the best window of a given size has a detection on its left and on its top edge
(or touches the slide's border), so only those positions are tried.
"""

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["HPF10_MM2", "Hotspot", "find_hotspot", "hotspot_window_px", "mitotic_density"]

HPF10_MM2 = 2.37  # ten high-power fields


@dataclass(frozen=True)
class Hotspot:
    """The window [x0, x1) x [y0, y1) (level-0 pixels) with the most detections at or above
    the threshold, their count, the window's area, the tissue in it (the window's area when
    no tissue mask is known) and the count per mm² of that tissue. ``clipped``: the image
    is smaller than the window asked for, so the window is the image's width or height."""

    x0: float
    y0: float
    x1: float
    y1: float
    count: int
    area_mm2: float
    per_mm2: float
    tissue_mm2: float = float("nan")
    clipped: bool = False


def hotspot_window_px(
    mpp: float, area_mm2: float = HPF10_MM2, aspect: float = 4 / 3
) -> Tuple[float, float]:
    """(width, height) in pixels at ``mpp`` µm/px of a window of ``area_mm2`` whose width
    is ``aspect`` times its height."""
    if not (mpp > 0 and area_mm2 > 0 and aspect > 0):
        raise ValueError(f"mpp, area and aspect must be > 0, got {mpp}, {area_mm2}, {aspect}")
    h_mm = math.sqrt(area_mm2 / aspect)
    return h_mm * aspect * 1000.0 / mpp, h_mm * 1000.0 / mpp


def mitotic_density(count: int, tissue_mm2: float) -> float:
    """Mitotic figures per mm² of analysed tissue (NaN without tissue)."""
    return float(count) / tissue_mm2 if tissue_mm2 > 0 else float("nan")


def find_hotspot(
    xy: Any,
    scores: Any,
    threshold: float,
    image_wh: Tuple[float, float],
    mpp: float,
    area_mm2: float = HPF10_MM2,
    aspect: float = 4 / 3,
) -> Optional[Hotspot]:
    """
    The hotspot of detections ``xy`` (level-0 pixels, (N, 2)) with ``scores >= threshold``
    in an image of ``image_wh`` pixels at ``mpp`` µm/px: the window of ``area_mm2`` (width
    ``aspect`` × height) inside the image that holds the most of them (ties: the first in
    x, then y). A window larger than the image is cut to the image (its area shrinks and
    ``clipped`` is set). None when no detection reaches the threshold.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pts = xy[scores >= threshold]
    W, H = float(image_wh[0]), float(image_wh[1])
    w, h = hotspot_window_px(mpp, area_mm2, aspect)
    clipped = w > W or h > H
    w, h = min(w, W), min(h, H)
    if not len(pts):
        return None
    lefts = np.unique(np.clip(np.concatenate([pts[:, 0], [0.0, W - w]]), 0.0, W - w))
    best = (-1, 0.0, 0.0)
    for x0 in lefts:
        ys = np.sort(pts[(pts[:, 0] >= x0) & (pts[:, 0] < x0 + w), 1])
        if len(ys) <= best[0]:
            continue
        tops = np.unique(np.clip(np.concatenate([ys, [0.0, H - h]]), 0.0, H - h))
        counts = np.searchsorted(ys, tops + h, "left") - np.searchsorted(ys, tops, "left")
        k = int(np.argmax(counts))
        if counts[k] > best[0]:
            best = (int(counts[k]), float(x0), float(tops[k]))
    count, x0, y0 = best
    area = w * h * (mpp / 1000.0) ** 2
    return Hotspot(x0, y0, x0 + w, y0 + h, count, area, count / area, area, clipped)
