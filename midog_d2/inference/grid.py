"""Tile grids over an image region, in level-0 pixels or at a model's µm/px."""

import math
from typing import List, Sequence, Tuple

__all__ = ["Region", "ScaledTile", "tile_grid", "scaled_tile_grid"]

Region = Tuple[int, int, int, int]
# A tile read at a scale: level-0 top-left (x, y) and its size (w, h) in model pixels.
ScaledTile = Tuple[int, int, int, int]


def _starts(lo: int, hi: int, size: int, stride: int) -> List[int]:
    """Tile starts covering [lo, hi): regular steps, the last tile flush with ``hi``."""
    if hi - lo <= size:
        return [lo]
    starts = list(range(lo, hi - size, stride))
    return starts + [hi - size]


def tile_grid(region: Sequence[int], size: int, overlap: int) -> List[Region]:
    """Tiles (x0, y0, x1, y1) covering ``region`` (x0, y0, x1, y1): ``size`` px squares
    at stride ``size - overlap``, the last row/column shifted to end on the region's
    edge (so tiles never leave it), one smaller tile along a side shorter than ``size``."""
    x0, y0, x1, y1 = (int(v) for v in region)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty region {tuple(region)}")
    if not 0 <= overlap < size:
        raise ValueError(f"tile overlap must be in [0, size={size}), got {overlap}")
    stride = size - overlap
    return [
        (tx, ty, min(tx + size, x1), min(ty + size, y1))
        for ty in _starts(y0, y1, size, stride)
        for tx in _starts(x0, x1, size, stride)
    ]


def scaled_tile_grid(
    region: Sequence[int], size: int, overlap: int, scale: float = 1.0
) -> List[ScaledTile]:
    """Tiles (x, y, w, h) covering level-0 ``region`` (x0, y0, x1, y1) when it is
    read at ``scale`` model pixels per level-0 pixel: :func:`tile_grid` laid out in
    model pixels (``size`` px squares, stride ``size - overlap``), each tile's origin
    rounded to a level-0 pixel (x, y), its size (w, h) in model pixels; it covers
    level-0 [x, x + w / scale) x [y, y + h / scale) inside ``region``. At scale 1
    these are :func:`tile_grid`'s tiles."""
    x0, y0, x1, y1 = (int(v) for v in region)
    if scale == 1.0:
        return [(a, b, c - a, d - b) for a, b, c, d in tile_grid(region, size, overlap)]
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale}")
    # The region in model pixels: those whose level-0 footprint lies inside it.
    model_region = (
        math.ceil(x0 * scale),
        math.ceil(y0 * scale),
        math.floor(x1 * scale),
        math.floor(y1 * scale),
    )
    if model_region[2] <= model_region[0] or model_region[3] <= model_region[1]:
        raise ValueError(f"region {tuple(region)} is under one pixel wide at scale {scale}")
    tiles = []
    for u0, v0, u1, v1 in tile_grid(model_region, size, overlap):
        w, h = u1 - u0, v1 - v0
        # Rounding may push a tile up to half a pixel past the region's far edge: pull it back.
        x = min(max(round(u0 / scale), x0), max(x0, math.floor(x1 - w / scale)))
        y = min(max(round(v0 / scale), y0), max(y0, math.floor(y1 - h / scale)))
        tiles.append((x, y, w, h))
    return tiles
