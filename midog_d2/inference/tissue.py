"""Where the tissue is: a mask computed on a slide's thumbnail, so that inference never runs
the model on glass.

Stained tissue is coloured, glass and background are grey-white: Otsu's threshold on the
saturation (HSV) of a smoothed thumbnail separates them, or on the optical density (the sum
over channels of -log10(I / 255)) for pale stains. Small specks are removed and small holes
filled by a morphological opening and closing. A tile is analysed when the tissue covers at
least ``min_fraction`` of it.
"""

from typing import Optional, Sequence

import cv2
import numpy as np

__all__ = ["TISSUE_METHODS", "mask_area_mm2", "tile_tissue_fraction", "tissue_mask"]

TISSUE_METHODS = ("saturation", "od")
# (floor, cap) of the automatic threshold per method: saturation 0-255, summed OD.
_FLOOR_CAP = {"saturation": (20.0, 60.0), "od": (0.15, 0.5)}


def _feature(rgb: np.ndarray, method: str) -> np.ndarray:
    if method == "saturation":
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)[:, :, 1].astype(
            np.float32
        )
    if method == "od":
        od = -np.log10(np.clip(rgb.astype(np.float32), 1.0, 255.0) / 255.0)
        return od.sum(axis=2)
    raise ValueError(f"tissue method must be one of {TISSUE_METHODS}, got {method!r}")


def tissue_mask(
    thumbnail_rgb: np.ndarray,
    method: str = "saturation",
    threshold: Optional[float] = None,
    smooth_px: int = 2,
    open_px: int = 2,
) -> np.ndarray:
    """
    Boolean tissue mask of an RGB uint8 thumbnail.

    Args:
        method: "saturation" (0-255) or "od" (optical density, summed over channels).
        threshold: the feature's cut; None: Otsu's on this thumbnail, kept within
            [floor, cap] (saturation 20-60, OD 0.15-0.5: an Otsu cut above the cap split
            the tissue itself, and the floor is used). Values above it are tissue.
        smooth_px: Gaussian blur (σ, px) before thresholding; 0 for none.
        open_px: radius of the opening (specks) and closing (holes); 0 for none.
    """
    rgb = np.asarray(thumbnail_rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"tissue_mask: expected an RGB uint8 image, got {rgb.dtype} {rgb.shape}")
    f = _feature(rgb, method)
    if smooth_px > 0:
        f = cv2.GaussianBlur(f, (0, 0), smooth_px)
    # A tissue pixel is at least faintly stained (FLOOR); glass is far below CAP. Otsu's cut
    # above CAP split the tissue itself (no glass in view: an ROI), and a thumbnail too
    # uniform to split is judged by the floor alone.
    floor, cap = _FLOOR_CAP[method]
    if threshold is None:
        lo, top = float(f.min()), float(f.max())
        threshold = floor
        if top - lo >= 1e-3 * max(top, 1.0):
            scaled = np.clip((f - lo) * (255.0 / (top - lo)), 0, 255).astype(np.uint8)
            t, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            otsu = lo + t * (top - lo) / 255.0
            if otsu <= cap:
                threshold = max(otsu, floor)
    mask = f > threshold
    if open_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * open_px + 1, 2 * open_px + 1))
        m = mask.astype(np.uint8)
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, k)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k)
        mask = m.astype(bool)
    return mask


def tile_tissue_fraction(mask: np.ndarray, scale: float, box: Sequence[float]) -> float:
    """Fraction of the level-0 box ``[x0, y0, x1, y1)`` covered by tissue in ``mask`` (a
    thumbnail ``scale`` times smaller than level 0); at least one mask pixel is read."""
    h, w = mask.shape
    x0, y0, x1, y1 = [float(v) / scale for v in box]
    c0, r0 = int(np.floor(max(0.0, x0))), int(np.floor(max(0.0, y0)))
    c1 = max(c0 + 1, int(np.ceil(min(float(w), x1))))
    r1 = max(r0 + 1, int(np.ceil(min(float(h), y1))))
    sub = mask[r0:r1, c0:c1]
    return float(sub.mean()) if sub.size else 0.0


def mask_area_mm2(mask: np.ndarray, scale: float, mpp: float) -> float:
    """Tissue area in mm² of a thumbnail mask ``scale`` times smaller than level 0 at ``mpp``
    µm/px."""
    return float(mask.sum()) * (scale * mpp / 1000.0) ** 2
