"""Composite regions of interest: unseen real tissue holding held-out real figures at a stated
density, to score whole with the product's evaluator (``tools/dev/composite_density_check.py``).

A composite is a grid of 256-px blocks: the blocks of placed crops
(:func:`~.canvas.build_placed_crops`: a held-out crop's window in an evaluation tile region)
scattered at random among blocks of evaluation tissue alone (:func:`~.context.random_context`),
as many of the latter as the density asks (ρ figures per mm² at :data:`~.placed_crops.CROP_MPP`).
Scoring it whole counts what the expected F1 (``midog_d2.evaluation.prevalence``) predicts from
the recall on placed crops and the false detections per mm² of the tiles.
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from midog_d2.constants import MITOTIC_FIGURE

from .canvas import PlacedCrop
from .context import ContextTile, random_context
from .placed_crops import CROP_MPP

__all__ = ["CompositeROI", "build_composites", "blocks_for_density"]


@dataclass
class CompositeROI:
    image: np.ndarray  # RGB uint8
    figures: List[Tuple[float, float]]  # the placed figures and other labelled ones, (x, y)
    crops: int  # placed crops in it


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
