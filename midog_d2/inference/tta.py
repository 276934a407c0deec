"""Flip test-time augmentation: each image is also read flipped, and a cell's score is the
mean of its scores over the readings (0 where a reading missed it).

A mitotic figure has no orientation, so a detector that found it in one reading should find
it in the flipped ones; a detection that only one reading makes is down-weighted. The
readings' detections are fused by centre distance (:func:`fuse_flipped`), as the seam merging
does (:func:`~.merge.close_pairs`), not by box IoU: figures are scored as points.
"""

from typing import List, Sequence

import numpy as np
import torch

from detectron2.structures import Boxes, Instances

from .merge import close_pairs

__all__ = ["FLIPS", "check_flips", "flip_image", "fuse_flipped", "unflip_instances"]

# "h": left-right, "v": up-down, "hv": both (a 180° rotation).
FLIPS = ("h", "v", "hv")


def check_flips(flips: Sequence[str]) -> List[str]:
    """``flips`` as a list, each one of :data:`FLIPS` and none twice, or a ValueError."""
    flips = list(flips)
    bad = [f for f in flips if f not in FLIPS]
    if bad or len(set(flips)) != len(flips):
        raise ValueError(f"TEST.TILE.TTA_FLIPS must hold distinct values of {FLIPS}, got {flips!r}")
    return flips


def flip_image(rgb: np.ndarray, flip: str) -> np.ndarray:
    """(H, W, 3) ``rgb`` flipped by ``flip`` (:data:`FLIPS`), contiguous."""
    if "h" in flip:
        rgb = rgb[:, ::-1]
    if "v" in flip:
        rgb = rgb[::-1]
    return np.ascontiguousarray(rgb)


def unflip_instances(inst: Instances, flip: str) -> Instances:
    """Detections made on an image flipped by ``flip``, in the unflipped image's pixels."""
    h, w = inst.image_size
    b = inst.pred_boxes.tensor.clone()
    if "h" in flip:
        b[:, [0, 2]] = w - b[:, [2, 0]]
    if "v" in flip:
        b[:, [1, 3]] = h - b[:, [3, 1]]
    out = Instances(inst.image_size, **inst.get_fields())
    out.pred_boxes = Boxes(b)
    return out


def fuse_flipped(readings: Sequence[Instances], radius_px: float) -> Instances:
    """One set of detections from ``readings`` of the same image (each in its pixels).

    Greedy, by decreasing score: a detection not yet taken starts a cell and takes, from each
    other reading, its best detection of the same class not yet taken within ``radius_px``.
    The cell keeps the starting detection's box and class (and every other field) and scores
    the mean over *all* readings, 0 for a reading that has none there."""
    n = len(readings)
    if n == 0:
        raise ValueError("fuse_flipped needs at least one reading")
    if n == 1:
        return readings[0]
    cat = Instances.cat([r.to("cpu") for r in readings])
    reading = np.concatenate([np.full(len(r), k) for k, r in enumerate(readings)]).astype(int)
    scores = cat.scores.detach().double().numpy()
    boxes = cat.pred_boxes.tensor.detach().double().numpy().reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    classes = cat.pred_classes.detach().numpy()
    i, j = close_pairs(centres, classes, radius_px)
    neighbours: List[List[int]] = [[] for _ in range(len(scores))]
    for a, b in zip(i.tolist(), j.tolist()):
        neighbours[a].append(b)
        neighbours[b].append(a)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(order), int)
    rank[order] = np.arange(len(order))
    taken = np.zeros(len(scores), bool)
    seeds, fused = [], []
    for s in order.tolist():
        if taken[s]:
            continue
        taken[s] = True
        total, best = scores[s], {}
        for nb in neighbours[s]:
            r = reading[nb]
            if taken[nb] or r == reading[s]:
                continue
            if r not in best or rank[nb] < rank[best[r]]:
                best[r] = nb
        for nb in best.values():
            taken[nb] = True
            total += scores[nb]
        seeds.append(s)
        fused.append(total / n)
    seeds_arr = np.asarray(seeds, dtype=np.int64)
    fused_arr = np.asarray(fused)
    by_score = np.argsort(-fused_arr, kind="stable")
    out = cat[torch.as_tensor(seeds_arr[by_score])]
    out.scores = torch.as_tensor(fused_arr[by_score], dtype=cat.scores.dtype)
    return out
