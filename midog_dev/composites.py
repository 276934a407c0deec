"""Composite regions of interest: unseen real tissue holding held-out real figures at a stated
density, to score whole with the product's evaluator.

Two kinds. :func:`build_composites` (``tools/dev/composite_density_check.py``, in memory)
places each figure's window in evaluation context only. :func:`build_roi_set` is the
measuring stick of issue 27, written once as files (:func:`write_roi_set`,
``tools/dev/build_composites.py``) and scored by ``train_net.py --eval-only``: besides the
context blocks it tiles tumor tissue densely from whole crops, whose own figures become
don't-care zones, so that the figure-free tissue is as tumor-like as the crops allow.

A composite is a grid of 256-px blocks: the blocks of placed crops
(:func:`~.canvas.build_placed_crops`: a held-out crop's window in an evaluation tile region)
scattered at random among blocks of evaluation tissue alone (:func:`~.context.random_context`),
as many of the latter as the density asks (ρ figures per mm² at :data:`~.placed_crops.CROP_MPP`).
Scoring it whole counts what the expected F1 (``midog_d2.evaluation.prevalence``) predicts from
the recall on placed crops and the false detections per mm² of the tiles.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from midog_d2.constants import BOX_SIZE, DONT_CARE_CATEGORY, MIDOG_CATEGORIES, MITOTIC_FIGURE
from midog_d2.fileio.atomic import atomic_write_text

from .canvas import PlacedCrop, build_placed_crops
from .context import ContextTile, random_context
from .placed_crops import CROP_MPP

__all__ = [
    "CompositeROI",
    "build_composites",
    "blocks_for_density",
    "build_roi_set",
    "write_roi_set",
    "TISSUE_KINDS",
]

# A composite's pixels are context tissue (the evaluation tiles) or tumor tissue (the
# pasted whole crops); false detections are reported per mm² of each.
TISSUE_KINDS = ("context", "tumor")


@dataclass
class CompositeROI:
    image: np.ndarray  # RGB uint8
    figures: List[Tuple[float, float]]  # the placed figures and other labelled ones, (x, y)
    crops: int  # placed crops in it
    ignore: List[Tuple[float, float]] = field(default_factory=list)  # don't-care zones
    tumor: List[Tuple[int, int, int, int]] = field(default_factory=list)  # tumor windows
    sources: List[str] = field(default_factory=list)  # the counted figures' crop files


def blocks_for_density(figures: int, density: float, block: int) -> int:
    """How many ``block``-px blocks hold ``figures`` figures at ``density`` per mm²."""
    area = (block * CROP_MPP * 1e-3) ** 2
    return max(figures, int(round(figures / (density * area))))


def build_composites(
    samples: Sequence[PlacedCrop],
    tiles: Sequence[ContextTile],
    density: float,
    side: int = 4,
    seed: int = 0,
) -> List[CompositeROI]:
    """Composites of ``side`` x ``side`` blocks holding every placed crop of ``samples``
    (256-px canvases) at ``density`` figures per mm², the remaining blocks evaluation tissue;
    the last composite is filled up with tissue. Seeded."""
    if not samples:
        raise ValueError("build_composites: no placed crops")
    block = samples[0].image.shape[0]
    rng = np.random.default_rng(seed)
    total = blocks_for_density(len(samples), density, block)
    per = side * side
    total = int(np.ceil(total / per)) * per
    slots = rng.permutation(total)[: len(samples)]
    where = {int(s): i for i, s in enumerate(slots)}
    out = []
    for c in range(total // per):
        image = np.zeros((side * block, side * block, 3), np.uint8)
        figures, crops = [], 0
        for k in range(per):
            y0, x0 = (k // side) * block, (k % side) * block
            i = where.get(c * per + k)
            if i is None:
                image[y0 : y0 + block, x0 : x0 + block] = random_context(rng, tiles, block)[0]
                continue
            s = samples[i]
            image[y0 : y0 + block, x0 : x0 + block] = s.image
            crops += 1
            figures.append((x0 + s.figure[0], y0 + s.figure[1]))
            figures += [
                (x0 + x, y0 + y)
                for x, y, cls in s.extra.get("other_cells", ())
                if cls == MITOTIC_FIGURE
            ]
        out.append(CompositeROI(image, figures, crops))
    return out


def _tumor_block(
    pieces: List[PlacedCrop], block: int, piece: int
) -> Tuple[np.ndarray, List[Tuple[float, float]], List[Tuple[int, int, int, int]]]:
    """A ``block``-px square tiled by ``(block // piece)²`` whole crops (each already blended
    into a ``piece``-px context square): image, don't-care points, tumor windows."""
    image = np.zeros((block, block, 3), np.uint8)
    ignore, windows = [], []
    n = block // piece
    for k, p in enumerate(pieces):
        y0, x0 = (k // n) * piece, (k % n) * piece
        image[y0 : y0 + piece, x0 : x0 + piece] = p.image
        ignore.append((x0 + p.figure[0], y0 + p.figure[1]))
        ignore += [(x0 + x, y0 + y) for x, y, c in p.extra["other_cells"] if c == MITOTIC_FIGURE]
        wx0, wy0, wx1, wy1 = p.window
        windows.append((x0 + wx0, y0 + wy0, x0 + wx1, y0 + wy1))
    return image, ignore, windows


def build_roi_set(
    figures: Sequence[Dict[str, Any]],
    tissue: Sequence[Dict[str, Any]],
    tiles: Sequence[ContextTile],
    density: float,
    *,
    seed: int = 0,
    side: int = 8,
    block: int = 256,
    piece: int = 128,
    tumor_fraction: float = 0.5,
    max_figures: int = 0,
) -> List[CompositeROI]:
    """Composite ROIs of ``side`` x ``side`` blocks of ``block`` px at :data:`CROP_MPP`
    holding every crop of ``figures`` (at most ``max_figures``, a seeded choice) as a
    counted mitotic figure, at ``density`` figures per mm². Each figure's block is its
    window placed in evaluation context (:func:`~.canvas.build_placed_crops`). Of the other
    blocks a seeded ``tumor_fraction`` is tumor tissue, ``piece``-px whole crops of
    ``tissue`` tiled densely, their own figures don't-care zones; the rest is evaluation
    context. Deterministic: the same inputs and seed give the same pixels."""
    if not figures:
        raise ValueError("build_roi_set: no figure crops")
    if not tissue and tumor_fraction > 0:
        raise ValueError("build_roi_set: tumor_fraction > 0 needs tissue crops")
    if block % piece:
        raise ValueError(f"build_roi_set: block {block} is not a multiple of piece {piece}")
    rng = np.random.default_rng(seed)
    figures = list(figures)
    if max_figures and len(figures) > max_figures:
        figures = [figures[i] for i in sorted(rng.permutation(len(figures))[:max_figures])]
    placed = build_placed_crops(figures, tiles, size=block, seed=seed)
    per = side * side
    total = blocks_for_density(len(placed), density, block)
    total = int(np.ceil(total / per)) * per
    slots = rng.permutation(total)[: len(placed)]
    where = {int(s): i for i, s in enumerate(slots)}
    is_tumor = rng.random(total) < tumor_fraction
    pieces: List[PlacedCrop] = []
    rounds = 0

    def next_pieces(k: int) -> List[PlacedCrop]:
        nonlocal rounds
        while len(pieces) < k:
            # A new round of every tissue crop, each with a fresh transform and context.
            pieces.extend(
                build_placed_crops(
                    tissue, tiles, size=piece, seed=seed + 1_000_003 * (rounds + 1), whole_crop=True
                )
            )
            rounds += 1
        return [pieces.pop(0) for _ in range(k)]

    out = []
    for c in range(total // per):
        image = np.zeros((side * block, side * block, 3), np.uint8)
        roi = CompositeROI(image, [], 0)
        for k in range(per):
            slot = c * per + k
            y0, x0 = (k // side) * block, (k % side) * block
            i = where.get(slot)
            if i is not None:
                s = placed[i]
                image[y0 : y0 + block, x0 : x0 + block] = s.image
                roi.crops += 1
                roi.sources.append(s.file_name)
                roi.figures.append((x0 + s.figure[0], y0 + s.figure[1]))
                roi.figures += [
                    (x0 + x, y0 + y)
                    for x, y, cls in s.extra.get("other_cells", ())
                    if cls == MITOTIC_FIGURE
                ]
            elif is_tumor[slot]:
                sub, ignore, windows = _tumor_block(
                    next_pieces((block // piece) ** 2), block, piece
                )
                image[y0 : y0 + block, x0 : x0 + block] = sub
                roi.ignore += [(x0 + x, y0 + y) for x, y in ignore]
                roi.tumor += [(x0 + a, y0 + b, x0 + c2, y0 + d) for a, b, c2, d in windows]
            else:
                image[y0 : y0 + block, x0 : x0 + block] = random_context(rng, tiles, block)[0]
        out.append(roi)
    return out


def write_roi_set(
    rois: Sequence[CompositeROI],
    out_dir: str,
    name: str,
    *,
    domain: str = "",
    mpp: float = CROP_MPP,
    meta: Optional[Dict[str, Any]] = None,
) -> str:
    """``out_dir/<name>_NNNN.tiff`` (tiled, deflate, µm/px tags) and ``out_dir/<name>.json``:
    a MIDOG-style file (category 1 the counted figures, category 3 the don't-care zones;
    ``scanner`` and ``tumor_type`` per image from ``domain``) with each image's tumor
    windows (``tumor_windows``, x0 y0 x1 y1) for the false detections per kind of tissue,
    and ``meta``. Returns the JSON path."""
    from .synthetic import write_tiff

    os.makedirs(out_dir, exist_ok=True)
    images, anns = [], []
    h = BOX_SIZE / 2.0

    def box(x, y):
        return [x - h, y - h, x + h, y + h]

    for i, roi in enumerate(rois):
        file_name = f"{name}_{i:04d}.tiff"
        write_tiff(os.path.join(out_dir, file_name), roi.image, mpp)
        ih, iw = roi.image.shape[:2]
        images.append(
            {
                "id": i + 1,
                "file_name": file_name,
                "width": iw,
                "height": ih,
                "scanner": domain,
                "tumor_type": "human breast cancer",
                "labelled": True,
                "tumor_windows": [list(map(int, w)) for w in roi.tumor],
                "figure_sources": list(roi.sources),
            }
        )
        for (x, y), cat in [(p, 1) for p in roi.figures] + [(p, 3) for p in roi.ignore]:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat,
                         "bbox": box(float(x), float(y))})  # fmt: skip
    doc = {
        "images": images,
        "annotations": anns,
        "categories": list(MIDOG_CATEGORIES) + [DONT_CARE_CATEGORY],
        "info": dict(meta or {}, mpp=mpp),
    }
    path = os.path.join(out_dir, f"{name}.json")
    atomic_write_text(path, json.dumps(doc))
    return path
