"""Does a cell's score depend on the input it is read in?

A detector whose normalisation uses statistics of the whole input (GroupNorm) scores the same
cell differently in a 192-px training canvas, a 512-px evaluation tile and a 1024-px slide
tile, so a threshold chosen on one kind of input does not carry over to another. This module
measures it: each labelled point is read in square inputs of several sizes cut from the same
image around it (the same neighbourhood, more or less surroundings), and its score in each is
the highest score of a detection within the matching radius.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from ..constants import MITOTIC_FIGURE
from .predictor import predict_images, scale_detection_caps

__all__ = ["window_around", "scores_across_sizes", "parity_summary"]


def window_around(
    shape: Tuple[int, int], point: Tuple[float, float], size: int, rng: np.random.Generator
) -> Tuple[int, int]:
    """Top-left (x0, y0) of a ``size`` x ``size`` window of an image of ``shape`` (H, W) holding
    ``point`` at a random place at least a quarter of the window from its borders (less where
    the image is too small); ValueError when the image is smaller than the window."""
    h, w = shape[:2]
    if size > h or size > w:
        raise ValueError(f"a {size}-px window does not fit in an image of {w} x {h} px")
    x, y = point
    m = size // 4
    lo_x, hi_x = max(0, int(x) - size + m), min(w - size, int(x) - m)
    lo_y, hi_y = max(0, int(y) - size + m), min(h - size, int(y) - m)
    x0 = (
        int(rng.integers(lo_x, hi_x + 1))
        if hi_x >= lo_x
        else int(np.clip(x - size // 2, 0, w - size))
    )
    y0 = (
        int(rng.integers(lo_y, hi_y + 1))
        if hi_y >= lo_y
        else int(np.clip(y - size // 2, 0, h - size))
    )
    return x0, y0


def scores_across_sizes(
    model: nn.Module,
    images: Sequence[np.ndarray],
    points: Sequence[Tuple[float, float]],
    sizes: Sequence[int],
    input_format: str,
    radius_px: float,
    seed: int = 0,
    batch_size: int = 4,
    caps_per_512: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    """(N, len(sizes)) scores: for each RGB uint8 image and its labelled point, the highest
    score of the model's detections within ``radius_px`` of the point (0 when none) in a
    window of each size cut around it (:func:`window_around`, seeded). The model must be in
    eval mode and keep low-scoring detections (``SCORE_THRESH_TEST``) for small differences
    to show. ``caps_per_512``: a RetinaNet's candidates and detections per 512 x 512 px,
    scaled to each window's area as the tiled predictor does (the model's own are restored
    after)."""
    if len(images) != len(points):
        raise ValueError(f"{len(images)} images but {len(points)} points")
    rng = np.random.default_rng(seed)
    out = np.zeros((len(images), len(sizes)), dtype=np.float64)
    caps = (
        getattr(model, "test_topk_candidates", None),
        getattr(model, "max_detections_per_image", None),
    )
    try:
        for j, size in enumerate(sizes):
            if caps_per_512 is not None:
                scale_detection_caps(model, caps_per_512, size)
            crops, local = [], []
            for image, (x, y) in zip(images, points):
                x0, y0 = window_around(image.shape, (x, y), size, rng)
                crops.append(np.ascontiguousarray(image[y0 : y0 + size, x0 : x0 + size]))
                local.append((x - x0, y - y0))
            outputs = predict_images(model, crops, input_format, batch_size)
            out[:, j] = [_score_near(o["instances"], p, radius_px) for o, p in zip(outputs, local)]
    finally:
        if caps[1] is not None:
            model.test_topk_candidates, model.max_detections_per_image = caps
    return out


def _score_near(inst, point: Tuple[float, float], radius_px: float) -> float:
    """The highest mitotic-figure score within ``radius_px`` of ``point`` (0 when none)."""
    inst = inst.to("cpu")
    if len(inst) == 0:
        return 0.0
    c = inst.pred_boxes.get_centers().double().numpy()
    near = np.hypot(c[:, 0] - point[0], c[:, 1] - point[1]) <= radius_px
    if inst.has("pred_classes"):
        near &= inst.pred_classes.numpy() == MITOTIC_FIGURE
    return float(inst.scores.double().numpy()[near].max()) if near.any() else 0.0


def parity_summary(scores: np.ndarray, sizes: Sequence[int]) -> Dict[str, List[float]]:
    """Per pair of sizes (a, b): the median and 90th percentile of |score_a - score_b| over
    the points, and each size's median score."""
    sizes = list(sizes)
    out: Dict[str, List[float]] = {
        "median_score": [float(np.median(scores[:, j])) for j in range(len(sizes))]
    }
    for a in range(len(sizes)):
        for b in range(a + 1, len(sizes)):
            d = np.abs(scores[:, a] - scores[:, b])
            out[f"{sizes[a]}-{sizes[b]}"] = [float(np.median(d)), float(np.percentile(d, 90))]
    return out
