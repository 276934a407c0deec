"""Where the figure of an AMi-Br crop is, and where its darkest point lies against it.

A crop is a 128 px window centred on its figure; crops cut short by their region's border
were letterboxed with black bars, and there the figure lies half a window from one edge of
the tissue (:func:`locate_figure`). The darkest point of the smoothed crop is a statistic
for checking that rule, never a label (:func:`position_statistics`, and
:func:`control_statistics` on windows of tiles centred on nothing).
"""

import math
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from midog_d2.constants import BOX_SIZE
from midog_d2.fileio import read_rgb

from .nuclei import extreme_point

__all__ = ["CROP_SIZE", "control_statistics", "locate_figure", "position_statistics"]

CROP_SIZE = 128
# Letterbox bars are pure black (0); rows/columns at the crop edge no brighter
# than this count as bar. Tissue rows never are, even in dark nuclei.
_BAR_MAX = 10
_SMOOTH_SIGMA = 3.0


def _gaussian_smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (NumPy only: no SciPy here)."""
    r = int(math.ceil(3 * sigma))
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma))
    k = (k / k.sum()).astype(np.float32)
    out = np.pad(image, ((r, r), (0, 0)), mode="edge")
    out = sum(w * out[i : i + image.shape[0]] for i, w in enumerate(k))
    out = np.pad(out, ((0, 0), (r, r)), mode="edge")
    return sum(w * out[:, i : i + image.shape[1]] for i, w in enumerate(k))


def _content_box(rgb: np.ndarray) -> Tuple[int, int, int, int]:
    bar_row = rgb.max(axis=(1, 2)) <= _BAR_MAX
    bar_col = rgb.max(axis=(0, 2)) <= _BAR_MAX

    def span(bar):
        keep = np.flatnonzero(~bar)
        return (0, len(bar)) if len(keep) == 0 else (int(keep[0]), int(keep[-1]) + 1)

    x0, x1 = span(bar_col)
    y0, y1 = span(bar_row)
    return x0, y0, x1, y1


def _darkness(rgb: np.ndarray, content_box: Tuple[int, int, int, int]) -> np.ndarray:
    """Smoothed darkness (255 - grey); the letterbox bar gets the tissue's median
    so that it neither wins nor drags the blur."""
    x0, y0, x1, y1 = content_box
    dark = 255.0 - rgb.astype(np.float32).mean(axis=2)
    inside = np.zeros(dark.shape, bool)
    inside[y0:y1, x0:x1] = True
    dark[~inside] = np.median(dark[inside])
    return _gaussian_smooth(dark, _SMOOTH_SIGMA)


def locate_figure(
    rgb: np.ndarray, crop_size: int = CROP_SIZE
) -> Tuple[Tuple[float, float], Tuple[int, int, int, int], Tuple[int, int]]:
    """
    Where the figure of one crop is.

    Returns ``(center, content_box, darkest)``: the figure centre (x, y); the
    tissue part ``(x0, y0, x1, y1)`` without letterbox bars; and the darkest
    point of the smoothed crop (a statistic for checking the centre, not used
    to place the box).

    A full crop is a window centred on the figure: centre (crop_size / 2,
    crop_size / 2). Along an axis that has bars, the window was cut by the
    region border on one side and then centred, so the figure lies half a
    window from one end of the tissue: at ``x0 + crop_size/2`` or
    ``x1 - crop_size/2``; the candidate with the darker point within a quarter
    box (mitotic chromatin is the darkest thing in the crop) is taken.
    """
    h, w = rgb.shape[:2]
    content = _content_box(rgb)
    x0, y0, x1, y1 = content
    dark = _darkness(rgb, content)
    # Its own darkness map (mean of the channels, bars at the tissue's median, NumPy blur),
    # not nuclei.blurred_grey: the same map scores the candidate centres below, and the
    # converted files record this point.
    dx, dy = extreme_point(dark, content, largest=True)

    half = crop_size / 2.0
    xs = sorted({x0 + half, x1 - half})
    ys = sorted({y0 + half, y1 - half})
    # The darkest point within a quarter box of each candidate: condensed
    # chromatin is darker than any interphase nucleus, whereas a mean over the
    # neighbourhood is swayed by how crowded the nuclei are (checked by eye on
    # the letterboxed crops, docs/real_figures.md).
    r = BOX_SIZE // 4

    def score(c):
        cx, cy = int(round(c[0])), int(round(c[1]))
        return float(
            dark[max(cy - r, y0) : min(cy + r + 1, y1), max(cx - r, x0) : min(cx + r + 1, x1)].max()
        )

    candidates = [(x, y) for y in ys for x in xs]
    center = max(candidates, key=score)  # first of equals: deterministic
    return (float(center[0]), float(center[1])), content, (int(dx), int(dy))


def _summary(values: np.ndarray) -> Dict[str, Any]:
    if len(values) == 0:
        return {"n": 0}
    return {
        "n": int(len(values)),
        "mean": [round(float(v), 2) for v in values.mean(axis=0)],
        "median": [float(v) for v in np.median(values, axis=0)],
        "std": [round(float(v), 2) for v in values.std(axis=0)],
    }


def position_statistics(figures: Sequence[Any]) -> Dict[str, Any]:
    """
    Where the darkest blob of each crop lies, against the box centre: for all
    crops, full ones and letterboxed ones, the mean / median / std of the
    darkest point (x, y) and the fraction of crops where it is within 10 and 25
    px (half a box) of the figure centre.
    """
    out = {}
    for name, sel in (
        ("all", list(figures)),
        ("full", [f for f in figures if not f.letterboxed]),
        ("letterboxed", [f for f in figures if f.letterboxed]),
    ):
        dark = np.array([f.darkest for f in sel], float).reshape(-1, 2)
        centre = np.array([f.center for f in sel], float).reshape(-1, 2)
        stats = _summary(dark)
        if len(sel):
            dist = np.hypot(*(dark - centre).T)
            stats["within_10px_of_center"] = round(float((dist <= 10).mean()), 3)
            stats["within_25px_of_center"] = round(float((dist <= 25).mean()), 3)
            stats["median_distance_to_center"] = round(float(np.median(dist)), 2)
            # Against the plain crop centre too: what the letterbox rule changes.
            naive = np.hypot(*(dark - np.array([[f.width / 2.0, f.height / 2.0] for f in sel])).T)
            stats["within_10px_of_crop_centre"] = round(float((naive <= 10).mean()), 3)
        out[name] = stats
    return out


def control_statistics(
    tile_paths: Sequence[str], windows_per_tile: int = 20, seed: int = 0, crop_size: int = CROP_SIZE
) -> Dict[str, Any]:
    """
    The same darkest-point statistic on random ``crop_size`` windows of real H&E
    tiles that are not centred on anything: what the statistic gives by chance.
    Distances are to the window centre.
    """
    rng = np.random.default_rng(seed)
    points = []
    for path in sorted(tile_paths):
        rgb = read_rgb(path)
        h, w = rgb.shape[:2]
        if h < crop_size or w < crop_size:
            raise ValueError(f"{path}: {w} x {h} px is smaller than a {crop_size} px window")
        for _ in range(windows_per_tile):
            y, x = int(rng.integers(0, h - crop_size + 1)), int(rng.integers(0, w - crop_size + 1))
            win = rgb[y : y + crop_size, x : x + crop_size]
            _, _, darkest = locate_figure(win, crop_size)
            points.append(darkest)
    pts = np.array(points, float).reshape(-1, 2)
    stats = _summary(pts)
    if len(pts):
        dist = np.hypot(*(pts - crop_size / 2.0).T)
        stats["within_10px_of_center"] = round(float((dist <= 10).mean()), 3)
        stats["within_25px_of_center"] = round(float((dist <= 25).mean()), 3)
        stats["median_distance_to_center"] = round(float(np.median(dist)), 2)
    stats["tiles"] = len(tile_paths)
    return stats
