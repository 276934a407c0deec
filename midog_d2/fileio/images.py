"""Plain image files (PNG, JPEG, TIFF crops and tiles) read whole, as RGB, and an RGB array
as the tensor a Detectron2 model reads (the channel order of ``INPUT.FORMAT``, CHW).

Slides and large ROIs are read window by window through :mod:`midog_d2.fileio.slide`; this is
the one reader for files small enough to decode at once (real-figure crops, context tiles,
previews).
"""

import os

import cv2
import numpy as np
import torch

from .slide import UnreadableSlideError

__all__ = ["read_rgb", "check_image_format", "rgb_to_format", "to_chw_tensor"]

_FORMATS = ("BGR", "RGB")


def read_rgb(path: str) -> np.ndarray:
    """The whole image of ``path`` as a contiguous (H, W, 3) uint8 RGB array.

    Raises FileNotFoundError for a missing file and
    :class:`~midog_d2.fileio.slide.UnreadableSlideError` (an ``OSError``) for one OpenCV cannot
    decode, naming the file in both.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise UnreadableSlideError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def check_image_format(image_format: str) -> str:
    """``image_format`` itself when it is "BGR" or "RGB"; otherwise a ValueError."""
    if image_format not in _FORMATS:
        raise ValueError(f"image_format must be one of {_FORMATS}, got {image_format!r}")
    return image_format


def rgb_to_format(rgb: np.ndarray, image_format: str) -> np.ndarray:
    """An RGB uint8 image in ``image_format`` ("BGR" or "RGB") channel order; BGR
    comes back as a contiguous copy (not a ::-1 view), which the colour ops read faster."""
    return (
        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if check_image_format(image_format) == "BGR" else rgb
    )


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """An (H, W, C) image as the (C, H, W) tensor Detectron2 models read (one contiguous
    copy; flipped or channel-reversed views are taken as they are)."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
