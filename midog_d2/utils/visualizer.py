"""Pictures of detections: a thumbnail of the image with ground truth and detections."""

from typing import Sequence

import cv2
import numpy as np

from ..constants import MITOTIC_FIGURE
from ..io.slide import slide_thumbnail

__all__ = ["draw_overlay"]


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
