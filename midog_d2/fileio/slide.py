"""One reader for every image the project touches: MIDOG's tiled TIFF ROIs,
whole-slide formats, and plain TIFF/PNG/JPEG files.

OpenSlide reads tiled TIFFs ("generic-tiff", µm/px from the resolution tags)
and whole-slide formats; ``openslide.open_slide`` falls back to a PIL-backed
``ImageSlide`` for anything else. Handles are opened lazily and kept in a small
per-process LRU cache: a DataLoader worker (a forked process) opens its own
handles instead of sharing its parent's.

Level 0 of tiled TIFFs and Aperio SVS files whose tiles are lossless, JPEG or
Aperio's RGB JPEG 2000 (MIDOG's ROIs, most scanners' slides) is read straight
from its tiles with tifffile and imagecodecs (libjpeg-turbo, OpenJPEG),
bypassing OpenSlide's slower path; the pixels are OpenSlide's, bit for bit
(tests/fileio: generated pyramids and both real SVS files). Thumbnails read their
level whole the same way. :func:`read_region_scaled` resamples a window to the
model's µm/px (``INPUT.MODEL_MPP``), from the best pyramid level; see
docs/slides.md.
"""

import contextlib
import logging
import math
import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import cv2
import numpy as np
import openslide
from PIL import Image, UnidentifiedImageError

from .structure import ImageStructureError, UnreadableSlideError, check_image_structure
from .tiff_tiles import TiledTiffLevel, open_tiff_level

__all__ = [
    "UnreadableSlideError",
    "check_images",
    "open_slide",
    "read_region",
    "read_region_scaled",
    "resample_region",
    "resample_scale",
    "slide_bounds",
    "slide_dimensions",
    "slide_mpp",
    "slide_resolution",
    "slide_thumbnail",
    "set_cache_size",
    "clear_cache",
    "fallback_mpp",
    "first_mpp",
]

logger = logging.getLogger(__name__)

# µm/px outside this range is not a microscope's: TIFF writers default to 72 dpi
# (352.8 µm/px), which must not be taken for a scan resolution.
_PLAUSIBLE_MPP = (0.01, 50.0)

_lock = threading.Lock()
_cache: "OrderedDict[str, openslide.AbstractSlide]" = OrderedDict()
# Direct tile readers (TiledTiffLevel), or None for files that OpenSlide must read.
_tiff_cache: "OrderedDict[Tuple[str, int], Optional[TiledTiffLevel]]" = OrderedDict()
_cache_pid: Optional[int] = None
# PIL-backed slides hold a whole decoded image (~150 MB for a MIDOG ROI), so
# the cache stays small.
_cache_size = 8
# Handles a forked child inherited: kept referenced, never closed there, since
# closing the parent's OpenSlide state from a child is not safe.
_inherited: list = []
_fallback_logged: Set[str] = set()
# A file's own µm/px (None: none usable), so that per-patch lookups cost nothing.
_mpp_cache: Dict[str, Optional[float]] = {}


# OpenSlide's C library reads one handle from many threads; PIL's images (ImageSlide:
# PNG, JPEG, untiled TIFF) do not, so their reads take turns.
_pil_lock = threading.Lock()
_no_lock = contextlib.nullcontext()


def set_cache_size(size: int) -> None:
    """Maximum number of open slide handles kept per process (least recently used go first)."""
    global _cache_size
    if size < 1:
        raise ValueError(f"cache size must be >= 1, got {size}")
    with _lock:
        _cache_size = size
        for cache in (_cache, _tiff_cache):
            while len(cache) > _cache_size:
                cache.popitem(last=False)


def clear_cache() -> None:
    """Forget this process's handles (each closes once nothing else uses it)."""
    with _lock:
        _reset_for_this_process()
        _cache.clear()
        _tiff_cache.clear()
        _mpp_cache.clear()


def _reset_for_this_process() -> None:
    global _cache_pid
    if _cache_pid != os.getpid():
        if _cache_pid is not None:
            _inherited.extend(_cache.values())
        _cache.clear()
        # Direct readers own only a file descriptor: closing the child's copy is safe.
        _tiff_cache.clear()
        _cache_pid = os.getpid()


def _after_fork_in_child() -> None:
    # The parent may have held the lock while forking; the child starts afresh.
    global _lock
    _lock = threading.Lock()
    _reset_for_this_process()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _open_uncached(path: str) -> openslide.AbstractSlide:
    # Structure first: a TIFF whose tags claim more than the file holds can make OpenSlide
    # allocate without bound and abort the process, which no except clause catches.
    try:
        # formats only OpenSlide knows (MIRAX, DICOM, ...) are left to it
        check_image_structure(path, unknown_ok=True)
    except ImageStructureError as e:
        raise UnreadableSlideError(f"cannot read image {path}: {e.problem}") from e
    try:
        return openslide.open_slide(path)
    except (
        openslide.OpenSlideError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        ValueError,
    ) as e:
        raise UnreadableSlideError(f"cannot read image {path}: {e}") from e


def open_slide(path: str) -> openslide.AbstractSlide:
    """
    The process's cached handle of ``path`` (opened on first use). Raises
    FileNotFoundError for a missing file, :class:`UnreadableSlideError` for a
    file neither OpenSlide nor PIL can open.
    """
    key = os.path.abspath(path)
    with _lock:
        _reset_for_this_process()
        slide = _cache.get(key)
        if slide is not None:
            _cache.move_to_end(key)
            return slide
    slide = _open_uncached(path)
    with _lock:
        _reset_for_this_process()
        if key in _cache:  # another thread opened it meanwhile
            _cache.move_to_end(key)
            return _cache[key]
        _cache[key] = slide
        # Evicted handles are not closed here: a caller may still be reading
        # one; OpenSlide/PIL close them when the last reference goes.
        while len(_cache) > _cache_size:
            _cache.popitem(last=False)
    return slide


# The OpenSlide formats whose level 0 is the file's first TIFF page.
_DIRECT_VENDORS = ("generic-tiff", "aperio")


def _open_tiled_tiff(path: str, level: int = 0) -> Optional[TiledTiffLevel]:
    """A direct reader of pyramid level ``level`` of ``path`` when OpenSlide reads it as a
    generic tiled TIFF or an Aperio SVS and the level's tiles can be read directly
    (:func:`~.tiff_tiles.open_tiff_level`), else None."""
    slide = open_slide(path)
    if (
        not isinstance(slide, openslide.OpenSlide)
        or slide.properties.get(openslide.PROPERTY_NAME_VENDOR) not in _DIRECT_VENDORS
        or not 0 <= level < slide.level_count
    ):
        return None
    return open_tiff_level(path, level, slide.level_dimensions[level])


def _tiled_tiff(path: str, level: int = 0) -> Optional[TiledTiffLevel]:
    """The process's cached direct reader of ``path``'s pyramid level ``level`` (None: read
    through OpenSlide)."""
    key = (os.path.abspath(path), int(level))
    with _lock:
        _reset_for_this_process()
        if key in _tiff_cache:
            _tiff_cache.move_to_end(key)
            return _tiff_cache[key]
    reader = _open_tiled_tiff(path, level)
    with _lock:
        _reset_for_this_process()
        _tiff_cache[key] = reader
        while len(_tiff_cache) > _cache_size:
            _tiff_cache.popitem(last=False)
    return reader


def _check_size(path: str, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(
            f"reading {path}: width and height must be positive, got {width} x {height}"
        )


def _read_openslide(
    path: str, x: int, y: int, width: int, height: int, level: int = 0
) -> np.ndarray:
    """(height, width) RGB pixels of ``level`` whose top-left lies at level-0 (x, y); white
    outside."""
    slide = open_slide(path)
    try:
        with _pil_lock if isinstance(slide, openslide.ImageSlide) else _no_lock:
            region = slide.read_region((int(x), int(y)), level, (int(width), int(height)))
        rgba = np.asarray(region)
    except (openslide.OpenSlideError, OSError, ValueError) as e:
        raise UnreadableSlideError(
            f"cannot read region ({x}, {y}, {width}, {height}) at level {level} of {path}: {e}"
        ) from e
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise UnreadableSlideError(f"{path}: unexpected region shape {rgba.shape}")
    alpha = rgba[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    # read_region returns un-premultiplied RGBA; regions outside the image have alpha 0.
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return ((rgb + 127) // 255).astype(np.uint8)


def read_region(path: str, x: int, y: int, width: int, height: int) -> np.ndarray:
    """
    Level-0 pixels ``[y, y + height) x [x, x + width)`` of ``path`` as a
    (height, width, 3) uint8 RGB array. Parts outside the image (``x``/``y`` may
    be negative) are white (255), and transparent pixels are composited on white.
    """
    _check_size(path, width, height)
    direct = _tiled_tiff(path)
    if direct is not None:
        return direct.read(int(x), int(y), int(width), int(height))
    return _read_openslide(path, x, y, width, height)


def resample_scale(mpp: float, model_mpp: Optional[float], tolerance: float = 0.0) -> float:
    """
    Output pixels per level-0 pixel that bring an image of ``mpp`` µm/px to
    ``model_mpp`` (``INPUT.MODEL_MPP``): ``mpp / model_mpp``, or exactly 1 (read
    as is) when ``model_mpp`` is None/0 or the ratio is within ``tolerance``
    (``INPUT.MPP_TOLERANCE``) of 1.
    """
    if not model_mpp:
        return 1.0
    if not (mpp > 0 and model_mpp > 0):
        raise ValueError(f"µm/px must be positive, got image {mpp} and model {model_mpp}")
    scale = float(mpp) / float(model_mpp)
    return 1.0 if abs(scale - 1.0) <= tolerance else scale


def _shrink(src: np.ndarray, scale: float, width: int, height: int) -> np.ndarray:
    # fx/fy (no dsize) keep the scale exact: output pixel j averages source [j/scale, (j+1)/scale).
    out = cv2.resize(src, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if out.shape[0] < height or out.shape[1] < width:
        raise AssertionError(
            f"resampled {src.shape} by {scale} to {out.shape}, short of {height} x {width}"
        )
    return np.ascontiguousarray(out[:height, :width])


def resample_region(
    read: Callable[[int, int, int, int], np.ndarray],
    x: int,
    y: int,
    width: int,
    height: int,
    scale: float,
) -> np.ndarray:
    """
    The window of :func:`read_region_scaled` from any level-0 reader
    ``read(x, y, w, h) -> (h, w, 3) uint8``: (height, width) output pixels, pixel
    (i, j) covering level-0 ``[x + j / scale, x + (j + 1) / scale)`` horizontally
    (likewise vertically). Down (scale < 1): area averaging (INTER_AREA).
    Up: bilinear, output pixel centres at level-0 ``x + (j + 0.5) / scale``, as
    ``cv2.resize`` of the whole image would place them.
    """
    x, y, width, height = int(x), int(y), int(width), int(height)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale}")
    if scale == 1.0:
        return read(x, y, width, height)
    if scale < 1.0:
        return _shrink(
            read(x, y, math.ceil(width / scale) + 1, math.ceil(height / scale) + 1),
            scale,
            width,
            height,
        )
    # One pixel of margin on each side: border output pixels interpolate with their
    # true neighbours (white outside the image), not with a replicated edge.
    src = read(x - 1, y - 1, math.ceil(width / scale) + 3, math.ceil(height / scale) + 3)
    a = 1.0 / scale
    b = 0.5 * a - 0.5 + 1.0  # source index of output pixel 0's centre, margin included
    m = np.array([[a, 0.0, b], [0.0, a, b]])
    return cv2.warpAffine(
        src,
        m,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def read_region_scaled(
    path: str, x: int, y: int, width: int, height: int, scale: float
) -> np.ndarray:
    """
    A (height, width, 3) uint8 RGB window of ``path`` resampled by ``scale``
    output pixels per level-0 pixel (:func:`resample_scale`; > 1 enlarges). The
    window starts at level-0 (``x``, ``y``) and covers ``width / scale`` x
    ``height / scale`` level-0 pixels: output point (u, v) is level-0
    (x + u / scale, y + v / scale). ``scale == 1`` is :func:`read_region`.

    Shrinking reads the best pyramid level (OpenSlide's
    ``get_best_level_for_downsample``, counting a level within half an output
    pixel over the window of the wanted scale as that scale) and area-averages
    it, or takes it as it is when it is that close. Enlarging interpolates level
    0 bilinearly. Outside the image is white.
    """
    _check_size(path, width, height)
    if scale == 1.0:
        return read_region(path, x, y, width, height)
    level = 0
    if 0 < scale < 1.0:
        slide = open_slide(path)
        if slide.level_count > 1:
            # Scanners' levels are rarely exact (a "2x" level at 2.0005): accept one up to
            # half a pixel over the window finer than asked, instead of falling back to
            # the level below, which is 2-4 times larger to read.
            level = slide.get_best_level_for_downsample(
                1.0 / scale * (1.0 + 0.5 / max(width, height))
            )
    if level == 0:
        return resample_region(lambda *r: read_region(path, *r), x, y, width, height, scale)
    # OpenSlide puts the read's first level pixel at level-0 (x, y) exactly.
    level_scale = scale * open_slide(path).level_downsamples[level]
    if abs(level_scale - 1.0) * max(width, height) < 0.5:
        return _read_openslide(path, x, y, width, height, level)
    w, h = math.ceil(width / level_scale) + 1, math.ceil(height / level_scale) + 1
    return _shrink(_read_openslide(path, x, y, w, h, level), level_scale, width, height)


def slide_thumbnail(path: str, max_side: int) -> Tuple[np.ndarray, float]:
    """
    The whole image of ``path`` shrunk to fit ``max_side`` x ``max_side``
    (aspect kept, never enlarged) as ``(rgb, scale)``: a (h, w, 3) uint8 array and
    thumbnail pixels per level-0 pixel (``w / width``; the height's rounding
    differs by under a pixel). Reads the pyramid level OpenSlide's ``get_thumbnail``
    would (the best for the downsample), whole, and area-averages it: through the
    direct tile reader where that reads the level (its pixels are OpenSlide's), else
    through ``get_thumbnail`` (PIL's Lanczos filter), where transparent areas come out in
    the slide's background colour (white by default).
    """
    if max_side < 1:
        raise ValueError(f"slide_thumbnail({path}): max_side must be >= 1, got {max_side}")
    slide = open_slide(path)
    width, height = slide.dimensions
    if max(width, height) <= max_side:
        return read_region(path, 0, 0, width, height), 1.0
    # The level get_thumbnail would read, read whole (from its origin: OpenSlide's pixels)
    # by the direct reader where it can: on a JPEG ROI 5x faster than get_thumbnail, which
    # reads through its cache, converts to RGBA and resizes with PIL.
    level = slide.get_best_level_for_downsample(max(width / max_side, height / max_side))
    direct = _tiled_tiff(path, level)
    if direct is not None:
        lw, lh = direct.width, direct.height
        s = min(max_side / lw, max_side / lh)
        size = (max(1, round(lw * s)), max(1, round(lh * s)))
        rgb = cv2.resize(direct.read(0, 0, lw, lh), size, interpolation=cv2.INTER_AREA)
        return rgb, rgb.shape[1] / width
    try:
        with _pil_lock if isinstance(slide, openslide.ImageSlide) else _no_lock:
            thumb = slide.get_thumbnail((int(max_side), int(max_side)))
    except (openslide.OpenSlideError, OSError, ValueError) as e:
        raise UnreadableSlideError(f"cannot make a thumbnail of {path}: {e}") from e
    rgb = np.asarray(thumb.convert("RGB"))
    return rgb, rgb.shape[1] / width


def slide_dimensions(path: str) -> Tuple[int, int]:
    """Level-0 (width, height) of ``path``."""
    return tuple(open_slide(path).dimensions)


def _tiff_tag_mpp(path: str) -> Optional[float]:
    """µm/px from the resolution tags of a TIFF that OpenSlide left to PIL (untiled)."""
    try:
        with Image.open(path) as im:
            tags = getattr(im, "tag_v2", None)
            if tags is None:
                return None
            xres, unit = tags.get(282), tags.get(296, 2)
    except (OSError, UnidentifiedImageError):
        return None
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # µm per inch / per centimetre
    if not xres or per_unit is None:
        return None
    return per_unit / float(xres)


def _file_mpp(path: str) -> Optional[float]:
    """The file's own µm/px (None when absent), cached: mappers ask once per patch."""
    key = os.path.abspath(path)
    if key in _mpp_cache:
        return _mpp_cache[key]
    slide = open_slide(path)
    props = slide.properties
    mpp = None
    try:
        values = [
            float(props[k])
            for k in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)
            if k in props
        ]
        if values:
            mpp = sum(values) / len(values)
    except ValueError:
        mpp = None
    if mpp is None and isinstance(slide, openslide.ImageSlide):
        mpp = _tiff_tag_mpp(path)
    _mpp_cache[key] = mpp
    return mpp


def fallback_mpp(value: float) -> Optional[float]:
    """The µm/px assumed for an image whose file and dataset record carry none: the one
    reading of ``DATASETS.MIDOG.FALLBACK_MPP``. 0 means no fallback (None): such an image is
    an error, never analysed at a made-up scale. ValueError for a value that is no
    microscope's µm/px."""
    value = float(value)
    if value == 0:
        return None
    if not _PLAUSIBLE_MPP[0] <= value <= _PLAUSIBLE_MPP[1]:
        raise ValueError(
            f"DATASETS.MIDOG.FALLBACK_MPP {value:g}: not a microscope's µm/px (0.01 to 50; "
            "0: no fallback)"
        )
    return value


def first_mpp(where: str, *values: Optional[float]) -> float:
    """The first of ``values`` that is set (an image's µm/px from its input, its dataset
    record, ..., the :func:`fallback_mpp`); ValueError naming ``where`` when none is, so that
    no distance is measured at a made-up scale."""
    for value in values:
        if value:
            return float(value)
    raise ValueError(f"{where}: no µm/px and no fallback (DATASETS.MIDOG.FALLBACK_MPP 0)")


def slide_mpp(path: str, fallback: Optional[float] = None) -> float:
    """
    µm per pixel of ``path``: OpenSlide's ``openslide.mpp-x`` (the mean with
    ``mpp-y`` when both exist), or for TIFFs read through PIL the resolution
    tags; otherwise ``fallback`` (``DATASETS.MIDOG.FALLBACK_MPP``), logged once
    per file and process. Values outside 0.01-50 µm/px (e.g. a 72-dpi default)
    count as absent. Raises ValueError when there is neither.
    """
    return slide_resolution(path, fallback)[0]


# Where a slide's µm/px came from (slide_resolution).
MPP_METADATA, MPP_OPTION, MPP_FALLBACK = "metadata", "option", "fallback"


def slide_resolution(
    path: str, fallback: Optional[float] = None, override: Optional[float] = None
) -> Tuple[float, str]:
    """
    ``(µm/px, source)`` of ``path``: ``override`` when given (source ``"option"``; a
    warning when the file says otherwise by more than 5 %), else :func:`slide_mpp`'s value
    with source ``"metadata"`` or ``"fallback"``. A fallback or an override that
    contradicts the file is logged once per file and process.
    """
    mpp = _file_mpp(path)
    usable = mpp is not None and _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1]
    key = os.path.abspath(path)
    if override is not None:
        if not _PLAUSIBLE_MPP[0] <= override <= _PLAUSIBLE_MPP[1]:
            raise ValueError(f"--mpp {override}: not a microscope's µm/px (0.01 to 50)")
        if usable and abs(mpp - override) > 0.05 * mpp and key not in _fallback_logged:
            _fallback_logged.add(key)
            logger.warning(
                "%s: its metadata says %.4g µm/px; analysed at the given %.4g", path, mpp, override
            )
        return float(override), MPP_OPTION
    if usable:
        return float(mpp), MPP_METADATA
    reason = (
        "has no resolution metadata" if mpp is None else f"reports an implausible {mpp:.4g} µm/px"
    )
    if fallback is None:
        raise ValueError(
            f"{path} {reason} and no fallback µm/px was given (DATASETS.MIDOG.FALLBACK_MPP)"
        )
    if key not in _fallback_logged:
        _fallback_logged.add(key)
        logger.warning(
            "%s %s; ASSUMED the fallback %g µm/px (DATASETS.MIDOG.FALLBACK_MPP): its mm, mm² and "
            "densities are only as right as that guess (--mpp sets it)",
            path,
            reason,
            fallback,
        )
    return float(fallback), MPP_FALLBACK


def slide_bounds(path: str) -> Optional[Tuple[int, int, int, int]]:
    """``(x, y, width, height)`` in level-0 pixels of the non-empty region a slide declares
    (``openslide.bounds-*``: MIRAX, some SCN and NDPI), or None. QuPath shows such a slide
    cropped to it, so its coordinates are level-0 minus ``(x, y)``."""
    props = open_slide(path).properties
    names = (
        openslide.PROPERTY_NAME_BOUNDS_X,
        openslide.PROPERTY_NAME_BOUNDS_Y,
        openslide.PROPERTY_NAME_BOUNDS_WIDTH,
        openslide.PROPERTY_NAME_BOUNDS_HEIGHT,
    )
    if not all(n in props for n in names):
        return None
    try:
        x, y, w, h = (int(props[n]) for n in names)
    except ValueError:
        logger.warning("%s: unreadable openslide.bounds-* properties; no bounds used", path)
        return None
    return x, y, w, h


def check_images(
    dataset_dicts: Iterable[Dict[str, Any]], read_pixels: bool = True
) -> List[Tuple[str, str]]:
    """
    Every problem with the images of ``dataset_dicts``, as (file_name, problem):
    missing, unreadable (cannot be opened or, with ``read_pixels``, a
    64 x 64 region at its centre cannot be decoded), or of another size than
    the dict's ``width`` x ``height``. Bypasses the handle cache, so checking
    a whole dataset does not leave decoded images behind.
    """
    problems = []
    seen = set()
    for d in dataset_dicts:
        path = d["file_name"]
        key = (path, d.get("width"), d.get("height"))
        if key in seen:
            continue
        seen.add(key)
        try:
            slide = _open_uncached(path)
        except FileNotFoundError:
            problems.append((path, "missing"))
            continue
        except UnreadableSlideError as e:
            problems.append((path, f"unreadable: {e.__cause__ or e}"))
            continue
        try:
            w, h = slide.dimensions
            if "width" in d and "height" in d and (w, h) != (d["width"], d["height"]):
                problems.append(
                    (
                        path,
                        f"size {w} x {h} differs from the annotation file's {d['width']} x "
                        f"{d['height']}",
                    )
                )
            elif read_pixels:
                slide.read_region(
                    (max(w // 2 - 32, 0), max(h // 2 - 32, 0)), 0, (min(64, w), min(64, h))
                )
        except (openslide.OpenSlideError, OSError, ValueError) as e:
            problems.append((path, f"unreadable: {e}"))
        finally:
            slide.close()
    return problems
