"""Imposter (hard-negative) mining: a trained model's confident detections away from every
annotated cell become "not mitotic figure" annotations, and the next training round learns
them as background (the bootstrapping of the MIDOG 2021/2022 winners).

:func:`mine_imposters` picks the points; :func:`add_mined_annotations` writes them into a
MIDOG-format annotation file (``tools/mine_imposters.py`` for MIDOG data;
``midog_dev`` does the same for the real-figure crops).
"""

import copy
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from ..constants import BOX_SIZE, CATEGORY_ALIASES, HARD_NEGATIVE

__all__ = ["MINED_KEY", "add_mined_annotations", "mine_imposters"]

# Mined annotations carry this flag (and the detection's score): they can be told from the
# experts' labels, and a file mined again keeps both apart.
MINED_KEY = "mined"


def mine_imposters(
    cells: np.ndarray,
    detections: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    radius: float,
) -> Tuple[np.ndarray, np.ndarray]:
    """
    The imposters among one image's detections: those scoring ``>= threshold`` whose centre
    lies farther than ``radius`` from every annotated cell (``cells`` (N, 2): mitotic
    figures and hard negatives alike, the latter being labelled already), and farther than
    ``radius`` from a higher-scoring imposter (one cell, one annotation). Returns their
    (M, 2) centres and (M,) scores, highest score first. Points and radius in one unit.
    """
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
    pts = np.asarray(detections, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(pts) != len(scores):
        raise ValueError(f"mine_imposters: {len(pts)} detections but {len(scores)} scores")
    keep = scores >= threshold
    if len(cells) and keep.any():
        d2 = ((pts[:, None, :] - cells[None, :, :]) ** 2).sum(-1)
        keep &= (d2 > radius * radius).all(axis=1)
    order = np.flatnonzero(keep)
    order = order[np.argsort(-scores[order], kind="stable")]
    chosen = []
    for i in order:
        if all(np.hypot(*(pts[i] - pts[j])) > radius for j in chosen):
            chosen.append(i)
    chosen = np.asarray(chosen, dtype=np.int64)
    return pts[chosen].reshape(-1, 2), scores[chosen]


def _hard_negative_category(data: Mapping[str, Any], path: str) -> int:
    for c in data.get("categories", []):
        if CATEGORY_ALIASES.get(str(c.get("name", "")).strip().lower()) == HARD_NEGATIVE:
            return c["id"]
    raise ValueError(f"{path}: no hard-negative category ('not mitotic figure') to add to")


def add_mined_annotations(
    data: Mapping[str, Any],
    mined: Mapping[Any, Tuple[np.ndarray, np.ndarray]],
    path: str = "<annotations>",
    round_: int = 1,
) -> Dict[str, Any]:
    """
    A copy of a MIDOG-format annotation file (``data``, read from ``path``) with the mined
    points of each image (``mined``: image id -> (centres (M, 2) in level-0 px, scores))
    added as ``BOX_SIZE`` boxes of its hard-negative category, each flagged ``mined`` with
    its ``score`` and ``round``. Ids continue after the file's largest; an image id the
    file lacks is a ValueError naming it.
    """
    out = copy.deepcopy(dict(data))
    category = _hard_negative_category(out, path)
    images = {img["id"] for img in out.get("images", [])}
    next_id = max((a["id"] for a in out.get("annotations", [])), default=0) + 1
    half = BOX_SIZE / 2.0
    for image_id, (pts, scores) in mined.items():
        if image_id not in images:
            raise ValueError(f"{path}: mined points for image id {image_id!r}, not in the file")
        for (x, y), s in zip(np.asarray(pts).reshape(-1, 2), np.asarray(scores).reshape(-1)):
            out["annotations"].append(
                {
                    "id": next_id,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [float(x - half), float(y - half), float(x + half), float(y + half)],
                    MINED_KEY: True,
                    "score": float(s),
                    "round": int(round_),
                }
            )
            next_id += 1
    return out
