"""read_rgb: the one reader of images small enough to decode whole."""

import cv2
import numpy as np
import pytest
from PIL import Image

from midog_d2.fileio import UnreadableSlideError, read_rgb


def test_reads_png_and_tiff_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.tiff")
    for name in ("a.png", "a.tiff"):
        out = read_rgb(str(tmp_path / name))
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb)  # RGB order, not OpenCV's BGR


def test_greyscale_and_rgba_become_rgb(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.png"), np.dstack([grey] * 3))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    cv2.imwrite(str(tmp_path / "c.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    out = read_rgb(tmp_path / "c.png")
    assert out.shape == (4, 4, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        read_rgb(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(UnreadableSlideError, match=r"bad\.png: not a readable image"):
        read_rgb(tmp_path / "bad.png")
