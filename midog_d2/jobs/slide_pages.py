"""The pages and pictures a person checks a slide's result on: the overlay's lines of
numbers, the crops around detections and the review page ``<stem>.html`` (its HTML:
:mod:`midog_d2.fileio.review`)."""

import os
from typing import List, Sequence

import cv2
import numpy as np

from ..fileio.review import GalleryItem, review_html
from ..fileio.slide import MPP_FALLBACK, read_region
from ..inference.slide_predictor import SlideResult
from ..utils.visualizer import RING_RADIUS_UM

__all__ = [
    "CROP_UM",
    "MAX_BELOW",
    "MAX_GALLERY",
    "detection_crop",
    "overlay_lines",
    "review_page",
]

# The review page: crops of about this size around each detection, every detection at or
# above the threshold up to MAX_GALLERY (a page a browser still opens quickly) and the
# MAX_BELOW best candidates below it.
CROP_UM = 60.0
MAX_GALLERY = 1000
MAX_BELOW = 24


def detection_crop(result: SlideResult, x: float, y: float) -> np.ndarray:
    """About :data:`CROP_UM` µm of the slide at full resolution around (x, y) (moved inside
    the image at its border), with a thin ring of the overlay's radius around the point."""
    side = max(16, int(round(CROP_UM / result.mpp)))
    x0 = int(min(max(round(x - side / 2), 0), max(result.width - side, 0)))
    y0 = int(min(max(round(y - side / 2), 0), max(result.height - side, 0)))
    w, h = min(side, result.width), min(side, result.height)
    crop = np.ascontiguousarray(read_region(result.path, x0, y0, w, h))
    r = max(3, int(round(RING_RADIUS_UM / result.mpp)))
    cv2.circle(crop, (int(round(x - x0)), int(round(y - y0))), r, (255, 210, 0), 1, cv2.LINE_AA)
    return crop


def review_page(
    result: SlideResult,
    readout,
    threshold: float,
    overlay_rgb: np.ndarray,
    threshold_source: str,
    weights_sha256: str,
    notes: Sequence[str],
) -> str:
    """The slide's review page (:func:`midog_d2.fileio.review.review_html`)."""
    hs = readout.hotspot
    source = {MPP_FALLBACK: "ASSUMED (not in the file: DATASETS.MIDOG.FALLBACK_MPP)"}
    numbers = [
        ("Mitotic figures (count)", "count", readout.count),
        ("per mm² of tissue", "count_per_mm2", readout.per_mm2),
        ("Tissue analysed, mm²", "tissue_mm2", readout.tissue_mm2),
        ("Hotspot: mitotic figures", "hotspot_count", hs.count if hs else 0),
        ("Hotspot: per mm² of tissue", "hotspot_per_mm2", hs.per_mm2 if hs else 0.0),
        ("Hotspot window, mm²", "hotspot_area_mm2", hs.area_mm2 if hs else "–"),
        ("Hotspot tissue, mm²", "hotspot_tissue_mm2", hs.tissue_mm2 if hs else "–"),
        ("µm per pixel", "mpp", result.mpp),
        ("µm per pixel from", "mpp_source", source.get(result.mpp_source, result.mpp_source)),
        ("Score threshold", "threshold", threshold),
        ("Threshold from", "threshold_source", threshold_source or "–"),
        ("Model weights (SHA-256)", "weights_sha256", weights_sha256[:16] or "–"),
    ]
    above = np.flatnonzero(result.scores >= threshold)  # scores are sorted, highest first
    below = np.flatnonzero(result.scores < threshold)
    items = [
        GalleryItem(
            k + 1,
            float(result.scores[i]),
            *map(float, result.xy[i]),
            detection_crop(result, *result.xy[i]),
        )
        for k, i in enumerate(above[:MAX_GALLERY])
    ]
    under = [
        GalleryItem(
            len(above) + k + 1,
            float(result.scores[i]),
            *map(float, result.xy[i]),
            detection_crop(result, *result.xy[i]),
        )
        for k, i in enumerate(below[:MAX_BELOW])
    ]
    s = result.thumb_scale
    rings = [(x * s, y * s, k + 1) for k, (x, y) in enumerate(result.xy[above[:MAX_GALLERY]])]
    radius = max(4.0, RING_RADIUS_UM / result.mpp * s)
    return review_html(
        os.path.basename(result.path),
        result.path,
        numbers,
        list(notes),
        overlay_rgb,
        rings,
        radius,
        items,
        len(above),
        under,
        len(below),
    )


def overlay_lines(result: SlideResult, readout) -> List[str]:
    """The numbers printed under a slide's overlay."""
    source = {MPP_FALLBACK: "ASSUMED: not in the file"}.get(result.mpp_source, result.mpp_source)
    lines = [
        f"{result.mpp:.4g} µm/px ({source}); {readout.tissue_mm2:.3g} mm² of tissue; "
        f"{readout.count} mitotic figures, {readout.per_mm2:.3g} per mm²"
    ]
    hs = readout.hotspot
    if hs is not None:
        lines.append(
            f"hotspot: {hs.count} in {hs.area_mm2:.3g} mm² ({hs.tissue_mm2:.3g} mm² tissue), "
            f"{hs.per_mm2:.3g} per mm² of tissue"
            + (" (window cut to the image)" if hs.clipped else "")
        )
    return lines
