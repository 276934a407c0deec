"""Level 0 (and thumbnail levels) of tiled 8-bit RGB TIFFs read straight from their tiles,
without OpenSlide: generic tiled TIFFs and Aperio SVS with lossless, JPEG or Aperio's RGB
JPEG 2000 tiles. Positioned reads (``os.pread``) and tifffile's stateless tile decoder (the
codecs release the GIL), so threads may share one reader. :mod:`.slide` decides which files
go this way and caches the readers per process."""

import logging
import os
from typing import Optional, Tuple

import numpy as np
import tifffile

from .structure import UnreadableSlideError

__all__ = ["TiledTiffLevel", "direct_readable", "open_tiff_level"]

logger = logging.getLogger(__name__)

# Tile codecs read without OpenSlide, each checked to give OpenSlide's pixels bit for bit
# (tests/fileio/test_slide.py, tests/fileio/test_real_slides.py). Lossy ones decode with the same
# libraries OpenSlide uses (libjpeg-turbo, OpenJPEG), the JPEG tables and colour space as
# the TIFF declares them, as OpenSlide does.
_LOSSLESS = (1, 8, 32946)  # none, Adobe deflate, old-style deflate
_JPEG = 7
_APERIO_JPEG2000_RGB = 33005  # Aperio's YCbCr variant (33003) OpenSlide converts itself
_DIRECT_PREDICTORS = (1, 2)  # none, horizontal differencing
try:  # tifffile decodes JPEG and JPEG 2000 only through imagecodecs (a requirement)
    import imagecodecs  # noqa: F401

    _LOSSY_DIRECT = (_JPEG, _APERIO_JPEG2000_RGB)
except ImportError:  # pragma: no cover - a broken install reads such tiles through OpenSlide
    _LOSSY_DIRECT = ()


class TiledTiffLevel:
    """
    One pyramid level of a tiled 8-bit RGB TIFF (generic TIFF or Aperio SVS) with
    lossless, JPEG or Aperio JPEG 2000 tiles, read straight from its tiles:
    positioned reads (``os.pread``) and tifffile's stateless tile decoder (the
    codecs release the GIL), so threads may share one reader. A forked process
    opens its own (the caches are per process). Regions read level 0 this way;
    other levels are read whole (thumbnails), since OpenSlide's reads of them
    from level-0 coordinates interpolate sub-pixel offsets.
    """

    def __init__(self, path: str, page: "tifffile.TiffPage"):
        self.path = path
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.tiles_across = -(-self.width // self.tile_w)
        self.offsets = [int(v) for v in page.dataoffsets]
        self.counts = [int(v) for v in page.databytecounts]
        self.decode = page.decode
        self.compression = int(page.compression)
        # JPEG tiles may keep their quantisation and Huffman tables in the TIFF tag (Aperio).
        self.jpegtables = page.jpegtables if page.compression == _JPEG else None
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)

    def _tile(self, index: int) -> Optional[np.ndarray]:
        if not 0 <= index < len(self.counts):
            raise UnreadableSlideError(
                f"cannot read tile {index} of {self.path}: its TIFF holds {len(self.counts)}"
            )
        count = self.counts[index]
        if count == 0:
            return None  # a sparse tile: OpenSlide leaves it transparent
        data = os.pread(self.fd, count, self.offsets[index])
        if len(data) != count:
            raise UnreadableSlideError(
                f"cannot read tile {index} of {self.path}: the file is truncated"
            )
        try:
            segment = self.decode(data, index, jpegtables=self.jpegtables)[0]
            return segment.reshape(self.tile_h, self.tile_w, 3)
        except Exception as e:  # tifffile raises codec-specific errors
            raise UnreadableSlideError(f"cannot decode tile {index} of {self.path}: {e}") from e

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        inside = (x0, y0, x1, y1) == (x, y, x + width, y + height)
        # Filling costs ~0.1 ms a patch: skip it when every pixel gets overwritten.
        out = (
            np.empty((height, width, 3), np.uint8)
            if inside
            else np.full((height, width, 3), 255, np.uint8)
        )
        if x0 >= x1 or y0 >= y1:
            return out
        tw, th = self.tile_w, self.tile_h
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                ax0, ay0 = max(x0, tx * tw), max(y0, ty * th)
                ax1, ay1 = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                tile = self._tile(ty * self.tiles_across + tx)
                dst = out[ay0 - y : ay1 - y, ax0 - x : ax1 - x]
                if tile is None:
                    dst[:] = 255
                else:
                    dst[:] = tile[ay0 - ty * th : ay1 - ty * th, ax0 - tx * tw : ax1 - tx * tw]
        return out


def direct_readable(page: "tifffile.TiffPage", dimensions: Tuple[int, int]) -> bool:
    orientation = page.tags.get(274)
    return bool(
        page.is_tiled
        and (page.imagewidth, page.imagelength) == tuple(dimensions)
        and page.imagedepth == 1
        and page.tiledepth == 1
        and page.compression in _LOSSLESS + _LOSSY_DIRECT
        and page.predictor in _DIRECT_PREDICTORS
        # RGB; JPEG tiles may hold YCbCr, which libjpeg converts as in OpenSlide
        and (page.photometric == 2 or (page.photometric == 6 and page.compression == _JPEG))
        and page.planarconfig == 1  # interleaved samples
        and page.bitspersample == 8
        and page.samplesperpixel == 3
        and page.sampleformat == 1
        and page.fillorder == 1
        and (orientation is None or orientation.value == 1)
    )


def open_tiff_level(path: str, level: int, size: Tuple[int, int]) -> Optional[TiledTiffLevel]:
    """A direct reader of the page of ``path`` that holds pyramid level ``level`` of ``size``
    (level 0: the first page; others: the one tiled page of that size) when
    :func:`direct_readable` takes its tiles, else None (read through OpenSlide)."""
    try:
        with tifffile.TiffFile(path) as tif:
            if level == 0:
                page = tif.pages.first
            else:
                same = [
                    p
                    for p in tif.pages
                    if p.is_tiled and (p.imagewidth, p.imagelength) == tuple(size)
                ]
                if len(same) != 1:
                    return None
                page = same[0]
            if not direct_readable(page, size):
                return None
            return TiledTiffLevel(path, page)
    except Exception as e:  # anything tifffile cannot parse stays with OpenSlide, which opened it
        logger.debug("%s: no direct tile reader (%s); reading through OpenSlide", path, e)
        return None
