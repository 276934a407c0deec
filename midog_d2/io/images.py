"""Plain image files (PNG, JPEG, TIFF crops and tiles) read whole, as RGB.

Slides and large ROIs are read window by window through :mod:`midog_d2.io.slide`; this is
the one reader for files small enough to decode at once (real-figure crops, context tiles,
previews).
"""

import os

import cv2
import numpy as np

from .slide import UnreadableSlideError

__all__ = ["read_rgb"]


def read_rgb(path: str) -> np.ndarray:
    """The whole image of ``path`` as a contiguous (H, W, 3) uint8 RGB array.

    Raises FileNotFoundError for a missing file and
    :class:`~midog_d2.io.slide.UnreadableSlideError` (an ``OSError``) for one OpenCV cannot
    decode, naming the file in both.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableSlideError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
