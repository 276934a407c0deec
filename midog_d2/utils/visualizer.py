"""Pictures of detections: a thumbnail of the image with ground truth and detections."""

from typing import Optional, Sequence

import cv2
import numpy as np

from ..constants import MITOTIC_FIGURE
from ..io.slide import slide_thumbnail

__all__ = ["draw_overlay", "draw_slide_overlay"]


def draw_overlay(
    file_name: str,
    gt_annotations: Sequence[dict],
    detections: Sequence[dict],
    threshold: float,
    out_file: str,
    max_side: int = 1600,
) -> None:
    """A picture of one image: ground-truth mitotic figures (green circles), hard
    negatives (blue circles), detections at or above ``threshold`` (red boxes, score)."""
    rgb, scale = slide_thumbnail(file_name, max_side)
    canvas = np.ascontiguousarray(rgb[:, :, ::-1])
    for ann in gt_annotations:
        x0, y0, x1, y1 = ann["bbox"]
        colour = (0, 200, 0) if ann["category_id"] == MITOTIC_FIGURE else (255, 120, 0)
        centre = (int((x0 + x1) / 2 * scale), int((y0 + y1) / 2 * scale))
        cv2.circle(canvas, centre, max(4, int(30 * scale)), colour, 2)
    for det in detections:
        if det["score"] < threshold:
            continue
        x, y, w, h = det["bbox"]
        p0, p1 = (int(x * scale), int(y * scale)), (int((x + w) * scale), int((y + h) * scale))
        cv2.rectangle(canvas, p0, p1, (0, 0, 255), 2)
        cv2.putText(
            canvas,
            f"{det['score']:.2f}",
            (p0[0], max(10, p0[1] - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 255),
            1,
            cv2.LINE_AA,
        )
    legend = [
        ("ground truth: mitotic figure", (0, 200, 0)),
        ("ground truth: hard negative", (255, 120, 0)),
        (f"detection, score >= {threshold:.2f}", (0, 0, 255)),
    ]
    cv2.rectangle(canvas, (0, 0), (300, 12 + 22 * len(legend)), (255, 255, 255), -1)
    for i, (text, colour) in enumerate(legend):
        cv2.putText(
            canvas, text, (8, 24 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 1, cv2.LINE_AA
        )
    cv2.imwrite(out_file, canvas)


def draw_slide_overlay(
    thumbnail_rgb: np.ndarray,
    thumb_scale: float,
    xy: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    mask: Optional[np.ndarray] = None,
    hotspot: Optional[Sequence[float]] = None,
    hotspot_count: int = 0,
) -> np.ndarray:
    """A slide's thumbnail (BGR, for ``cv2.imencode``) with the tissue mask's outline
    (green), the hotspot window (x0, y0, x1, y1 in level-0 pixels; yellow, its count in the
    legend) and, on top, the detections at or above ``threshold`` (red dots). ``thumb_scale``: thumbnail
    pixels per level-0 pixel."""
    canvas = np.ascontiguousarray(np.asarray(thumbnail_rgb)[:, :, ::-1])
    if mask is not None and mask.any():
        m = mask.astype(np.uint8)
        if m.shape != canvas.shape[:2]:
            m = cv2.resize(m, canvas.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, (0, 170, 0), 2)
    if hotspot is not None:
        x0, y0, x1, y1 = (int(round(v * thumb_scale)) for v in hotspot)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 200, 255), 2)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    above = xy[np.asarray(scores, np.float64).reshape(-1) >= threshold]
    radius = max(2, int(round(25 * thumb_scale)))
    for x, y in above:
        cv2.circle(canvas, (int(x * thumb_scale), int(y * thumb_scale)), radius, (0, 0, 255), -1)
    legend = [
        ("tissue analysed", (0, 170, 0)),
        (f"mitotic figure (score >= {threshold:.2f}): {len(above)}", (0, 0, 255)),
    ]
    if hotspot is not None:
        legend.append((f"hotspot: {hotspot_count} mitotic figures", (0, 160, 220)))
    cv2.rectangle(canvas, (0, 0), (360, 12 + 22 * len(legend)), (255, 255, 255), -1)
    for i, (text, colour) in enumerate(legend):
        cv2.putText(
            canvas, text, (8, 24 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 1, cv2.LINE_AA
        )
    return canvas
