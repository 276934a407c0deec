"""An image file's structure checked without decoding its pixels: what a reader would
trip over (or, for OpenSlide, abort the process on) found first, with the file named.

TIFF (and the SVS/pyramidal files built on it): every page's bit depth and channels, its
tile or strip table against the image's size, each tile's bytes against the file's size,
and tile sizes a reader could allocate. PNG/JPEG and other PIL formats: bit depth and
channels from the header, PNG chunks and their checksums (read, not decompressed).
Formats that only OpenSlide reads (MIRAX, DICOM, ...) are left to OpenSlide's own checks.
"""

import os
import struct
import warnings
from typing import Optional, Tuple

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageStructureError", "check_image_structure"]

# A tile or strip larger than this many pixels is refused before a reader allocates it.
MAX_TILE_PIXELS = 64 * 2**20
# PIL modes holding 8-bit H&E faithfully ("L" and "P" are expanded to RGB by the readers).
_PIL_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "L", "LA", "P", "PA")


class UnreadableSlideError(OSError):
    """An image file exists but cannot be opened or decoded."""


class ImageStructureError(OSError):
    """An image file whose structure readers cannot read faithfully: ``path`` and
    ``problem``; its message names both."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def _tiff_page(path: str, size: int, i: int, page, is_first: bool) -> Tuple[int, int]:
    where = f"TIFF page {i}"
    w, h = int(page.imagewidth), int(page.imagelength)
    if w <= 0 or h <= 0:
        raise ImageStructureError(path, f"{where}: size {w} x {h}")
    bits = page.bitspersample
    bits = max(bits) if isinstance(bits, tuple) else int(bits)
    spp = int(page.samplesperpixel)
    if is_first:
        if bits != 8:
            raise ImageStructureError(
                path,
                f"{where}: {bits}-bit samples; midog-d2 reads 8-bit RGB H&E (convert "
                "it to 8 bits per channel, e.g. with vips or tifffile)",
            )
        if spp not in (3, 4):
            raise ImageStructureError(
                path,
                f"{where}: {spp} channel(s); midog-d2 reads RGB H&E (greyscale or "
                "multiplexed images are not H&E)",
            )
    if page.is_tiled:
        tw, th = int(page.tilewidth), int(page.tilelength)
        if tw <= 0 or th <= 0 or tw * th > MAX_TILE_PIXELS:
            raise ImageStructureError(path, f"{where}: tile size {tw} x {th}")
        depth = int(getattr(page, "imagedepth", 1) or 1)
        expected = -(-w // tw) * -(-h // th) * depth
    else:
        # No size limit on strips: Hamamatsu NDPI stores a whole level as one JPEG strip,
        # which OpenSlide reads by its restart markers.
        rows = int(getattr(page, "rowsperstrip", 0) or h)
        rows = min(max(rows, 1), h)
        expected = -(-h // rows)
    if int(page.planarconfig) == 2:
        expected *= spp
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) != expected or len(counts) != expected:
        raise ImageStructureError(
            path,
            f"{where}: {len(offsets)} tile/strip offsets and {len(counts)} byte "
            f"counts for a {w} x {h} image that needs {expected}",
        )
    for j, (o, c) in enumerate(zip(offsets, counts)):
        if c and (o < 0 or c < 0 or o + c > size):
            raise ImageStructureError(
                path,
                f"{where}: tile/strip {j} ends at byte {o + c} of a {size}-byte file "
                "(the file is truncated or its tags are wrong)",
            )
    return w, h


def _tiff(path: str, size: int) -> Tuple[int, int]:
    import tifffile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tif = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises many types for a malformed header
        raise ImageStructureError(path, f"not a readable TIFF ({type(e).__name__}: {e})")
    with tif:
        try:
            pages = list(tif.pages)
        except Exception as e:
            raise ImageStructureError(path, f"its TIFF page list is damaged ({e})")
        if not pages:
            raise ImageStructureError(path, "a TIFF without images")
        first = None
        for i, page in enumerate(pages):
            if not hasattr(page, "imagewidth"):
                continue
            try:
                size_i = _tiff_page(path, size, i, page, first is None)
            except ImageStructureError:
                raise
            except Exception as e:  # a damaged tag makes tifffile's properties raise
                raise ImageStructureError(
                    path, f"TIFF page {i}: malformed tags ({type(e).__name__}: {e})"
                ) from None
            first = first or size_i
        if first is None:
            raise ImageStructureError(path, "a TIFF without images")
        return first


def _png_chunks(path: str, size: int) -> None:
    import zlib

    with open(path, "rb") as f:
        f.seek(8)
        pos = 8
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise ImageStructureError(path, "PNG ends before its IEND chunk (truncated)")
            length, kind = struct.unpack(">I4s", head)
            if pos + 12 + length > size:
                raise ImageStructureError(
                    path,
                    f"PNG chunk {kind!r} at byte {pos} runs past the end of the file "
                    "(truncated)",
                )
            crc = zlib.crc32(kind)
            left = length
            while left:
                block = f.read(min(left, 1 << 20))
                crc = zlib.crc32(block, crc)
                left -= len(block)
            (stored,) = struct.unpack(">I", f.read(4))
            if stored != crc & 0xFFFFFFFF:
                raise ImageStructureError(path, f"PNG chunk {kind!r} at byte {pos} is corrupt")
            pos += 12 + length
            if kind == b"IEND":
                return


def check_image_structure(path: str, unknown_ok: bool = False) -> Optional[Tuple[int, int]]:
    """The (width, height) of ``path``'s level 0 after checking its structure (module
    docstring) without decoding its pixels. Raises FileNotFoundError for a missing file
    and :class:`ImageStructureError`, naming the file and the problem, otherwise.
    ``unknown_ok``: a file that is neither a TIFF nor a format PIL knows (MIRAX, DICOM,
    ...: formats only OpenSlide reads) returns None instead of raising."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff(path, size)
    try:
        with Image.open(path) as im:
            mode, dims, fmt = im.mode, im.size, im.format
    except Image.DecompressionBombError as e:
        raise ImageStructureError(path, f"{e}") from None
    except UnidentifiedImageError:
        if unknown_ok:
            return None
        raise ImageStructureError(path, "not an image format midog-d2 can check") from None
    except Exception as e:  # PIL raises many types for a malformed header
        raise ImageStructureError(path, f"not a readable image ({type(e).__name__}: {e})")
    if mode not in _PIL_MODES:
        raise ImageStructureError(
            path,
            f"{fmt} image of mode {mode} (16-bit or floating point); midog-d2 reads "
            "8-bit RGB H&E (convert it to 8 bits per channel)",
        )
    if fmt == "PNG":
        _png_chunks(path, size)
    elif fmt == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(size - 64, 0))
            tail = f.read().rstrip(b"\x00")
        if not tail.endswith(b"\xff\xd9"):
            raise ImageStructureError(path, "JPEG without its end marker (truncated)")
    return dims
