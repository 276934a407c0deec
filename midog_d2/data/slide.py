"""One reader for every image the project touches: MIDOG's tiled TIFF ROIs,
whole-slide formats, and plain TIFF/PNG/JPEG files.

OpenSlide reads tiled TIFFs ("generic-tiff", µm/px from the resolution tags)
and whole-slide formats; ``openslide.open_slide`` falls back to a PIL-backed
``ImageSlide`` for anything else. Handles are opened lazily and kept in a small
per-process LRU cache: a DataLoader worker (a forked process) opens its own
handles instead of sharing its parent's.

Everything is read at level 0 for now; resampling to the model's µm/px
(``INPUT.MODEL_MPP``) belongs here too, on top of :func:`read_region`.
"""
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
import openslide
from PIL import Image, UnidentifiedImageError

__all__ = [
    "UnreadableSlideError",
    "check_images",
    "open_slide",
    "read_region",
    "slide_dimensions",
    "slide_mpp",
    "set_cache_size",
    "clear_cache",
]

logger = logging.getLogger(__name__)

# µm/px outside this range is not a microscope's: TIFF writers default to 72 dpi
# (352.8 µm/px), which must not be taken for a scan resolution.
_PLAUSIBLE_MPP = (0.01, 50.0)

_lock = threading.Lock()
_cache: "OrderedDict[str, openslide.AbstractSlide]" = OrderedDict()
_cache_pid: Optional[int] = None
# PIL-backed slides hold a whole decoded image (~150 MB for a MIDOG ROI), so
# the cache stays small.
_cache_size = 8
# Handles a forked child inherited: kept referenced, never closed there, since
# closing the parent's OpenSlide state from a child is not safe.
_inherited: list = []
_fallback_logged: Set[str] = set()


class UnreadableSlideError(OSError):
    """An image file exists but cannot be opened or decoded."""


def set_cache_size(size: int) -> None:
    """Maximum number of open slide handles kept per process (least recently used go first)."""
    global _cache_size
    if size < 1:
        raise ValueError(f"cache size must be >= 1, got {size}")
    with _lock:
        _cache_size = size
        while len(_cache) > _cache_size:
            _cache.popitem(last=False)


def clear_cache() -> None:
    """Forget this process's handles (each closes once nothing else uses it)."""
    with _lock:
        _reset_for_this_process()
        _cache.clear()


def _reset_for_this_process() -> None:
    global _cache_pid
    if _cache_pid != os.getpid():
        if _cache_pid is not None:
            _inherited.extend(_cache.values())
        _cache.clear()
        _cache_pid = os.getpid()


def _after_fork_in_child() -> None:
    # The parent may have held the lock while forking; the child starts afresh.
    global _lock
    _lock = threading.Lock()
    _reset_for_this_process()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _open_uncached(path: str) -> openslide.AbstractSlide:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        return openslide.open_slide(path)
    except (openslide.OpenSlideError, UnidentifiedImageError, OSError, ValueError) as e:
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


def read_region(path: str, x: int, y: int, width: int, height: int) -> np.ndarray:
    """
    Level-0 pixels ``[y, y + height) x [x, x + width)`` of ``path`` as a
    (height, width, 3) uint8 RGB array. Parts outside the image (``x``/``y`` may
    be negative) are white (255), and transparent pixels are composited on white.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"read_region({path}): width and height must be positive, got {width} x {height}")
    slide = open_slide(path)
    try:
        rgba = np.asarray(slide.read_region((int(x), int(y)), 0, (int(width), int(height))))
    except (openslide.OpenSlideError, OSError, ValueError) as e:
        raise UnreadableSlideError(f"cannot read region ({x}, {y}, {width}, {height}) of {path}: {e}") from e
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise UnreadableSlideError(f"{path}: unexpected region shape {rgba.shape}")
    alpha = rgba[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    # read_region returns un-premultiplied RGBA; regions outside the image have alpha 0.
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return ((rgb + 127) // 255).astype(np.uint8)


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


def slide_mpp(path: str, fallback: Optional[float] = None) -> float:
    """
    µm per pixel of ``path``: OpenSlide's ``openslide.mpp-x`` (the mean with
    ``mpp-y`` when both exist), or for TIFFs read through PIL the resolution
    tags; otherwise ``fallback`` (``DATASETS.MIDOG.FALLBACK_MPP``), logged once
    per file. Values outside 0.01-50 µm/px (e.g. a 72-dpi default) count as
    absent. Raises ValueError when there is neither.
    """
    slide = open_slide(path)
    props = slide.properties
    mpp = None
    try:
        values = [float(props[k]) for k in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y) if k in props]
        if values:
            mpp = sum(values) / len(values)
    except ValueError:
        mpp = None
    if mpp is None and isinstance(slide, openslide.ImageSlide):
        mpp = _tiff_tag_mpp(path)
    if mpp is not None and _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1]:
        return mpp
    reason = "has no resolution metadata" if mpp is None else f"reports an implausible {mpp:.4g} µm/px"
    if fallback is None:
        raise ValueError(f"{path} {reason} and no fallback µm/px was given (DATASETS.MIDOG.FALLBACK_MPP)")
    key = os.path.abspath(path)
    if key not in _fallback_logged:
        _fallback_logged.add(key)
        logger.warning("%s %s; using the fallback %g µm/px", path, reason, fallback)
    return float(fallback)


def check_images(dataset_dicts: Iterable[Dict[str, Any]], read_pixels: bool = True) -> List[Tuple[str, str]]:
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
        if path in seen:
            continue
        seen.add(path)
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
                    (path, f"size {w} x {h} differs from the annotation file's {d['width']} x {d['height']}")
                )
            elif read_pixels:
                slide.read_region((max(w // 2 - 32, 0), max(h // 2 - 32, 0)), 0, (min(64, w), min(64, h)))
        except (openslide.OpenSlideError, OSError, ValueError) as e:
            problems.append((path, f"unreadable: {e}"))
        finally:
            slide.close()
    return problems
