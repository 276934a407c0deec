"""Merging detections across tile seams: suppression by centre distance, over all detections
at once or streaming as tiles arrive."""

from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["StreamingMerger", "suppress_close_points"]


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


class StreamingMerger:
    """
    :func:`suppress_close_points` for detections that arrive tile by tile, in tile-row order,
    with memory bounded by the detections near the rows still to come.

    Greedy suppression within ``radius`` only ever compares detections joined by a chain of
    same-class neighbours closer than ``radius``, so it can be run on each such group alone
    with the same result. A group is complete once no later tile can add a neighbour: when
    every member lies more than ``radius`` above ``frontier_y``, the top of every tile still
    to come. :meth:`add` returns the kept detections of the groups completed so far,
    :meth:`finish` the rest; together they are exactly :func:`suppress_close_points`' kept
    set over all detections.
    """

    def __init__(self, radius: float):
        self.radius = float(radius)
        self._xy = np.zeros((0, 2))
        self._scores = np.zeros(0)
        self._classes = np.zeros(0, dtype=np.int64)
        self._extra: Optional[np.ndarray] = None  # (N, k), k fixed by the first add

    @property
    def pending(self) -> int:
        """Detections held back, waiting for the tiles below them."""
        return len(self._scores)

    def add(
        self,
        centres: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        frontier_y: float,
        extra: Optional[np.ndarray] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Add one tile's detections (level-0 centres, scores, classes, and optionally one
        row of ``extra`` values each, e.g. their boxes); ``frontier_y``: no later detection
        has a centre above this y. Returns the kept (centres, scores, classes, extra) that
        are final now."""
        centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        n = len(centres)
        self._xy = np.concatenate([self._xy, centres])
        self._scores = np.concatenate([self._scores, np.asarray(scores, np.float64).reshape(-1)])
        self._classes = np.concatenate([self._classes, np.asarray(classes, np.int64).reshape(-1)])
        ex = np.zeros((n, 0)) if extra is None else np.asarray(extra, np.float64)
        if extra is not None:
            ex = ex.reshape(n, -1) if n else ex.reshape(0, ex.shape[-1] if ex.ndim == 2 else 0)
        if self._extra is None:
            self._extra = np.zeros((0, ex.shape[1]))
        if ex.shape[1] != self._extra.shape[1]:
            raise ValueError(
                f"extra has {ex.shape[1]} columns, earlier tiles {self._extra.shape[1]}"
            )
        self._extra = np.concatenate([self._extra, ex])
        return self._emit(frontier_y)

    def finish(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The kept detections still held back (call once, after the last tile)."""
        return self._emit(float("inf"))

    def _groups(self) -> np.ndarray:
        """Group label of each pending detection (union-find over close same-class pairs)."""
        n = len(self._scores)
        parent = np.arange(n)

        def root(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        if self.radius > 0 and n:
            cells: Dict[Tuple[int, int, int], List[int]] = {}
            r2 = self.radius * self.radius
            keys = np.floor(self._xy / self.radius).astype(np.int64)
            for i in range(n):
                c, (cx, cy) = int(self._classes[i]), keys[i]
                for gx in (cx - 1, cx, cx + 1):
                    for gy in (cy - 1, cy, cy + 1):
                        for j in cells.get((c, int(gx), int(gy)), ()):
                            d = self._xy[i] - self._xy[j]
                            if d[0] * d[0] + d[1] * d[1] < r2:
                                parent[root(i)] = root(j)
                cells.setdefault((c, int(cx), int(cy)), []).append(i)
        return np.array([root(i) for i in range(n)], dtype=np.int64)

    def _emit(self, frontier_y: float):
        n = len(self._scores)
        extra = self._extra if self._extra is not None else np.zeros((n, 0))
        if n == 0:
            return self._xy, self._scores, self._classes, extra
        groups = self._groups()
        lowest: Dict[int, float] = {}
        for g, y in zip(groups.tolist(), self._xy[:, 1].tolist()):
            lowest[g] = max(lowest.get(g, -np.inf), y)
        final = np.array([lowest[g] < frontier_y - self.radius for g in groups.tolist()])
        idx = np.flatnonzero(final)
        keep = idx[
            suppress_close_points(self._xy[idx], self._scores[idx], self._classes[idx], self.radius)
        ]
        out = (self._xy[keep], self._scores[keep], self._classes[keep], extra[keep])
        rest = np.flatnonzero(~final)
        self._xy, self._scores = self._xy[rest], self._scores[rest]
        self._classes, self._extra = self._classes[rest], extra[rest]
        return out
