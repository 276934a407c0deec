"""Pictures of detections: a thumbnail of the image with ground truth and detections."""

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from ..constants import MITOTIC_FIGURE
from ..fileio.slide import slide_thumbnail

__all__ = ["RING_RADIUS_UM", "draw_overlay", "draw_slide_overlay"]


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


# Rings around detections: a mitotic figure is about 10 µm across, so a ring of this radius
# encloses it without covering it.
RING_RADIUS_UM = 12.0


def draw_slide_overlay(
    thumbnail_rgb: np.ndarray,
    thumb_scale: float,
    xy: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    mask: Optional[np.ndarray] = None,
    hotspot: Optional[Sequence[float]] = None,
    hotspot_count: int = 0,
    *,
    mpp: Optional[float] = None,
    title: str = "",
    lines: Sequence[str] = (),
) -> np.ndarray:
    """A slide's thumbnail (BGR, for ``cv2.imencode``) with the tissue mask's outline
    (green), the hotspot window (x0, y0, x1, y1 in level-0 pixels; yellow, drawn inside the
    image even on its border) and the detections at or above ``threshold`` as open red rings
    of :data:`RING_RADIUS_UM` (at ``mpp`` µm/px; 25 level-0 px without it), at least 4 px.
    Below the image, never over it, a legend scaled to the thumbnail's width: ``title``
    (the slide's name), ``lines`` (µm/px, density, ...) and the colours' meaning.
    ``thumb_scale``: thumbnail pixels per level-0 pixel."""
    canvas = np.ascontiguousarray(np.asarray(thumbnail_rgb)[:, :, ::-1])
    H, W = canvas.shape[:2]
    line_w = max(1, int(round(max(W, H) / 800)))
    if mask is not None and mask.any():
        m = mask.astype(np.uint8)
        if m.shape != canvas.shape[:2]:
            m = cv2.resize(m, canvas.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, (0, 170, 0), line_w)
    hot_w = 2 * line_w
    if hotspot is not None:
        x0, y0, x1, y1 = (v * thumb_scale for v in hotspot)
        # a window on the image's border is drawn just inside it, else half the line is lost
        inset = hot_w / 2
        p0 = (
            int(round(min(max(x0, inset), W - 1 - inset))),
            int(round(min(max(y0, inset), H - 1 - inset))),
        )
        p1 = (
            int(round(min(max(x1, inset), W - 1 - inset))),
            int(round(min(max(y1, inset), H - 1 - inset))),
        )
        cv2.rectangle(canvas, p0, p1, (0, 200, 255), hot_w)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    above = xy[np.asarray(scores, np.float64).reshape(-1) >= threshold]
    radius_l0 = RING_RADIUS_UM / mpp if mpp else 25.0
    radius = max(4, int(round(radius_l0 * thumb_scale)))
    for x, y in above:
        centre = (int(round(x * thumb_scale)), int(round(y * thumb_scale)))
        cv2.circle(canvas, centre, radius, (0, 0, 255), max(1, radius // 4), cv2.LINE_AA)
    legend = [(t, (0, 0, 0)) for t in ([title] if title else []) + list(lines)]
    legend += [
        ("tissue analysed", (0, 150, 0)),
        (f"mitotic figure (score ≥ {threshold:.2f}): {len(above)}", (0, 0, 220)),
    ]
    if hotspot is not None:
        legend.append((f"hotspot window: {hotspot_count} mitotic figures", (0, 140, 200)))
    return np.concatenate([canvas, _legend_band(legend, W)], axis=0)


def _legend_band(entries: Sequence[Tuple[str, Tuple[int, int, int]]], width: int) -> np.ndarray:
    """White band ``width`` px wide (BGR) with one line of text a legend entry (colours BGR),
    its font scaled to the width and each line cut to fit."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(min(28, max(11, width / 45)))
    font = _font(size)
    step = int(size * 1.35)
    band = Image.new("RGB", (width, step * len(entries) + size // 2), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for i, (text, (b, g, r)) in enumerate(entries):
        while len(text) > 4 and draw.textlength(text, font=font) > width - size:
            text = text[: max(4, int(len(text) * 0.9)) - 1] + "…"
        draw.text((size // 2, size // 4 + i * step), text, fill=(r, g, b), font=font)
    return np.ascontiguousarray(np.asarray(band)[:, :, ::-1])


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib, a Detectron2 dependency: it has µ, ² and ≥),
    else PIL's default font."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(
            font_manager.findfont("DejaVu Sans", fallback_to_default=True), size
        )
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default(size=size)
