"""Nucleus-like dark blobs of an RGB image: candidates, the darkest one, and the unlabelled
nuclei of a crop. Every finder here reads one map, the Gaussian-blurred grey image
(:func:`blurred_grey`), and takes its first extreme in row-major order
(:func:`extreme_point`)."""

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "blurred_grey",
    "darkest_blob",
    "extreme_point",
    "nucleus_candidates",
    "other_nuclei",
]


def blurred_grey(rgb: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """The grey image (OpenCV's luma) of RGB uint8 ``rgb``, float32, Gaussian-blurred by
    ``sigma`` px."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(grey, (0, 0), sigma)


def _box(shape: Tuple[int, ...], region: Optional[Sequence[float]]) -> Tuple[int, int, int, int]:
    if region is None:
        return 0, 0, shape[1], shape[0]
    x0, y0, x1, y1 = [int(round(v)) for v in region]
    return x0, y0, x1, y1


def extreme_point(
    values: np.ndarray, region: Optional[Sequence[float]] = None, largest: bool = False
) -> Optional[Tuple[int, int]]:
    """(x, y) of the first (row-major) minimum of the 2-D map ``values`` (the maximum with
    ``largest``) inside ``region`` [x0, y0, x1, y1) (rounded; None: the whole map), or None
    when the region is empty."""
    x0, y0, x1, y1 = _box(values.shape, region)
    sub = values[y0:y1, x0:x1]
    if sub.size == 0:
        return None
    k = int(np.argmax(sub)) if largest else int(np.argmin(sub))
    y, x = np.unravel_index(k, sub.shape)
    return int(x) + x0, int(y) + y0


def nucleus_candidates(
    rgb: np.ndarray,
    sigma: float = 4.0,
    quantile: float = 0.3,
    box: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """(N, 2) x, y of nucleus-like dark blobs: local minima (11 px) of the Gaussian-blurred
    grey image darker than its ``quantile`` (inside ``box`` [x0, y0, x1, y1) if given)."""
    blur = blurred_grey(rgb, sigma)
    x0, y0, x1, y1 = _box(rgb.shape, box)
    region = blur[y0:y1, x0:x1]
    if region.size == 0:
        return np.zeros((0, 2))
    mins = (region <= cv2.erode(region, np.ones((11, 11), np.uint8))) & (
        region < np.quantile(region, quantile)
    )
    ys, xs = np.nonzero(mins)
    return np.stack([xs + x0, ys + y0], axis=1).astype(np.float64)


def darkest_blob(
    rgb: np.ndarray,
    sigma: float = 4.0,
    region: Optional[Sequence[float]] = None,
    among_candidates: bool = False,
) -> Optional[Tuple[float, float]]:
    """(x, y) of the darkest point of the Gaussian-blurred (``sigma`` px) grey image within
    ``region`` [x0, y0, x1, y1) when given: "the darkest blob is the mitosis".

    ``among_candidates=False`` (the placed-crop baseline): the darkest pixel of the region;
    an empty region is a ValueError. ``among_candidates=True`` (the hard negatives of
    :mod:`midog_dev.realistic`): the darkest of the region's
    :func:`nucleus_candidates`, None when it has none, so a flat region or one whose darkest
    pixel is no darker than its 30 % quantile gives None instead of a point.
    """
    if among_candidates:
        cand = nucleus_candidates(rgb, sigma, box=region)
        if not len(cand):
            return None
        grey = blurred_grey(rgb, sigma)
        k = int(np.argmin(grey[cand[:, 1].astype(int), cand[:, 0].astype(int)]))
        return float(cand[k, 0]), float(cand[k, 1])
    p = extreme_point(blurred_grey(rgb, sigma), region)
    if p is None:
        raise ValueError(f"darkest_blob: empty region {region} in a {rgb.shape[:2]} image")
    return float(p[0]), float(p[1])


def other_nuclei(
    rgb: np.ndarray,
    point: Sequence[float],
    content: Sequence[int],
    margin: int,
    min_distance: float,
) -> np.ndarray:
    """(N, 2) nucleus candidates of a crop at least ``margin`` px inside its ``content``
    box and ``min_distance`` px from its labelled ``point``."""
    x0, y0, x1, y1 = content
    cand = nucleus_candidates(rgb, box=(x0 + margin, y0 + margin, x1 - margin, y1 - margin))
    return cand[np.hypot(cand[:, 0] - point[0], cand[:, 1] - point[1]) >= min_distance]
