"""Merging detections across tile seams: suppression by centre distance."""

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["suppress_close_points"]


def suppress_close_points(
    centres: np.ndarray, scores: np.ndarray, classes: np.ndarray, radius: float
) -> np.ndarray:
    """Indices (by decreasing score) of the detections kept after dropping every one
    whose centre is closer than ``radius`` to a kept, higher-scoring detection of the
    same class. ``radius <= 0`` keeps all."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if radius <= 0 or len(order) == 0:
        return order
    centres = np.asarray(centres, dtype=np.float64)
    r2 = radius * radius
    # Hash kept points into radius-sized cells: only the 3 x 3 neighbouring cells can
    # hold a point closer than the radius.
    cells = np.floor(centres / radius).astype(np.int64)
    grid: Dict[Tuple[int, int, int], List[int]] = {}
    keep = []
    for i in order.tolist():
        cx, cy = cells[i]
        c = int(classes[i])
        close = False
        for gx in (cx - 1, cx, cx + 1):
            for gy in (cy - 1, cy, cy + 1):
                for j in grid.get((c, gx, gy), ()):
                    d = centres[i] - centres[j]
                    if d[0] * d[0] + d[1] * d[1] < r2:
                        close = True
                        break
                if close:
                    break
            if close:
                break
        if not close:
            keep.append(i)
            grid.setdefault((c, int(cx), int(cy)), []).append(i)
    return np.asarray(keep, dtype=np.int64)
