"""Generated whole slides: pyramidal tiled TIFFs that OpenSlide reads as slides, with tissue
on part of the glass and known mitotic figures, for whole-slide inference tests and benchmarks.

A slide is a grid of ``block`` x ``block`` cells; where a smooth random tissue shape covers a
cell's centre, the cell holds one of a few tissue blocks (e.g. the demo's generated MIDOG
images, :func:`blocks_from_midog`) with their mitotic figures, the rest is glass. Only the
blocks are held in memory: every pyramid level is written tile row by tile row, so a
30,000 x 30,000 slide costs the blocks, not the slide.
"""

import json
import math
import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import cv2
import numpy as np
import tifffile

from midog_d2.constants import MITOTIC_FIGURE
from midog_d2.fileio.slide import read_region

__all__ = ["SlideBlock", "GeneratedSlide", "blocks_from_midog", "write_generated_slide"]

GLASS = 243  # the grey-white of empty glass


@dataclass
class SlideBlock:
    """A square of tissue (RGB uint8) and its mitotic figures' centres (N, 2), block pixels."""

    rgb: np.ndarray
    figures: np.ndarray


@dataclass
class GeneratedSlide:
    """What :func:`write_generated_slide` wrote: the file, its size and µm/px, the level-0
    centres of every mitotic figure and the fraction of the area that is tissue."""

    path: str
    width: int
    height: int
    mpp: float
    figures: np.ndarray
    tissue_fraction: float

    def save_truth(self, json_path: str) -> None:
        """The ground truth as a MIDOG-style JSON (one image, 50-px boxes, category 1)."""
        anns = [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [float(x) - 25, float(y) - 25, float(x) + 25, float(y) + 25],
            }
            for i, (x, y) in enumerate(self.figures.tolist())
        ]
        data = {
            "images": [
                {
                    "id": 1,
                    "file_name": os.path.basename(self.path),
                    "width": self.width,
                    "height": self.height,
                }
            ],
            "annotations": anns,
            "categories": [
                {"id": 1, "name": "mitotic figure"},
                {"id": 2, "name": "not mitotic figure"},
            ],
        }
        with open(json_path, "w") as f:
            json.dump(data, f)


def blocks_from_midog(
    json_file: str, image_root: str, block: int, limit: int = 8
) -> List[SlideBlock]:
    """Up to ``limit`` ``block``-px squares cut from the top-left of the images of a
    MIDOG-style JSON, with the mitotic figures inside them."""
    with open(json_file) as f:
        data = json.load(f)
    by_image = {}
    for a in data.get("annotations", []):
        if a["category_id"] == MITOTIC_FIGURE + 1:
            x0, y0, x1, y1 = a["bbox"]
            by_image.setdefault(a["image_id"], []).append(((x0 + x1) / 2, (y0 + y1) / 2))
    blocks = []
    for im in data["images"]:
        if im["width"] < block or im["height"] < block:
            continue
        rgb = read_region(os.path.join(image_root, im["file_name"]), 0, 0, block, block)
        pts = np.array(
            [
                (x, y)
                for x, y in by_image.get(im["id"], [])
                if 25 <= x < block - 25 and 25 <= y < block - 25
            ],
            np.float64,
        ).reshape(-1, 2)
        blocks.append(SlideBlock(rgb, pts))
        if len(blocks) == limit:
            break
    if not blocks:
        raise ValueError(f"{json_file}: no image is {block} x {block} px or larger")
    return blocks


def _tissue_cells(rows: int, cols: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random (rows, cols) bool shape covering ``fraction`` of the cells."""
    noise = rng.normal(size=(rows, cols)).astype(np.float32)
    sigma = max(1.0, min(rows, cols) / 6)
    field = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    k = int(round(fraction * rows * cols))
    cells = np.zeros(rows * cols, bool)
    cells[np.argsort(-field.ravel(), kind="stable")[:k]] = True
    return cells.reshape(rows, cols)


def write_generated_slide(
    path: str,
    size: Tuple[int, int],
    blocks: Sequence[SlideBlock],
    mpp: float = 0.25,
    tissue_fraction: float = 0.4,
    seed: int = 0,
    tile: int = 256,
    quality: int = 90,
    compression: str = "jpeg",
) -> GeneratedSlide:
    """
    Write a pyramidal tiled TIFF (JPEG tiles at ``quality``, as scanners write them, or
    "deflate" (lossless); levels at downsample 1, 4, 16, ... while the level is over 1,024
    px; µm/px in its resolution tags) of ``size`` (width, height): ``tissue_fraction`` of
    its cells hold ``blocks`` (drawn at random), the rest glass.
    """
    if compression not in ("jpeg", "deflate"):
        raise ValueError(f"compression must be 'jpeg' or 'deflate', got {compression!r}")
    width, height = int(size[0]), int(size[1])
    b = blocks[0].rgb.shape[0]
    if any(bl.rgb.shape != (b, b, 3) for bl in blocks):
        raise ValueError("blocks must all be square RGB arrays of one size")
    rng = np.random.default_rng(seed)
    rows, cols = math.ceil(height / b), math.ceil(width / b)
    cells = _tissue_cells(rows, cols, tissue_fraction, rng)
    choice = rng.integers(0, len(blocks), (rows, cols))
    figures = []
    for r, c in zip(*np.nonzero(cells)):
        pts = blocks[choice[r, c]].figures + (c * b, r * b)
        figures.append(pts[(pts[:, 0] < width) & (pts[:, 1] < height)])
    figures_xy = np.concatenate(figures) if figures else np.zeros((0, 2))

    downsamples = [1]
    while max(width, height) // (downsamples[-1] * 4) > 1024 and b % (downsamples[-1] * 4) == 0:
        downsamples.append(downsamples[-1] * 4)
    level_blocks = {
        d: [cv2.resize(bl.rgb, (b // d, b // d), interpolation=cv2.INTER_AREA) for bl in blocks]
        for d in downsamples
    }

    def tiles(d: int) -> Iterator[np.ndarray]:
        w, h, bd = math.ceil(width / d), math.ceil(height / d), b // d
        for ty in range(0, h, tile):
            strip = np.full((tile, math.ceil(w / tile) * tile, 3), GLASS, np.uint8)
            for c in range(cols):
                for r in range(ty // bd, min(rows, (ty + tile - 1) // bd + 1)):
                    if not cells[r, c]:
                        continue
                    y0, y1 = max(ty, r * bd), min(ty + tile, (r + 1) * bd, h)
                    x0, x1 = c * bd, min((c + 1) * bd, w)
                    src = level_blocks[d][choice[r, c]]
                    strip[y0 - ty : y1 - ty, x0:x1] = src[y0 - r * bd : y1 - r * bd, : x1 - x0]
            if ty + tile > h:
                strip[h - ty :] = GLASS
            strip[:, w:] = GLASS
            for tx in range(0, strip.shape[1], tile):
                yield strip[:, tx : tx + tile]

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for d in downsamples:
            w, h = math.ceil(width / d), math.ceil(height / d)
            res = 1e4 / (mpp * d)
            tif.write(
                tiles(d),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                compressionargs={"level": quality} if compression == "jpeg" else None,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if d == 1 else 1,
                metadata=None,
            )
    return GeneratedSlide(path, width, height, mpp, figures_xy, float(cells.mean()))
