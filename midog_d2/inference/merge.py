"""Merging detections across tile seams: suppression by centre distance, over all detections
at once or streaming as tiles arrive."""

from typing import Optional, Tuple

import numpy as np

__all__ = ["StreamingMerger", "close_pairs", "suppress_close_points"]


def close_pairs(
    centres: np.ndarray, classes: np.ndarray, radius: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of same-class points closer than ``radius``.

    Points are hashed into radius-sized cells (one integer per class and cell, sorted), so
    only the 3 x 3 neighbouring cells are searched, all in numpy: merging runs once per batch
    of tiles and must cost little beside the model."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    n = len(centres)
    empty = np.zeros(0, np.int64)
    if radius <= 0 or n < 2:
        return empty, empty
    keys = np.floor(centres / radius).astype(np.int64)
    keys -= keys.min(axis=0) - 1  # a margin of one cell: neighbours stay in the same class
    width, height = int(keys[:, 0].max()) + 2, int(keys[:, 1].max()) + 2
    _, cls = np.unique(np.asarray(classes).reshape(-1), return_inverse=True)
    cell = (cls.reshape(-1).astype(np.int64) * height + keys[:, 1]) * width + keys[:, 0]
    order = np.argsort(cell, kind="stable")
    sorted_cells = cell[order]
    first, second = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            target = cell + dy * width + dx
            lo = np.searchsorted(sorted_cells, target, "left")
            counts = np.searchsorted(sorted_cells, target, "right") - lo
            total = int(counts.sum())
            if total == 0:
                continue
            starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
            first.append(np.repeat(np.arange(n), counts))
            second.append(order[starts + np.arange(total)])
    if not first:
        return empty, empty
    i, j = np.concatenate(first), np.concatenate(second)
    d = centres[i] - centres[j]
    near = (i < j) & ((d * d).sum(axis=1) < radius * radius)
    return i[near], j[near]


def suppress_close_points(
    centres: np.ndarray, scores: np.ndarray, classes: np.ndarray, radius: float
) -> np.ndarray:
    """Indices (by decreasing score) of the detections kept after dropping every one
    whose centre is closer than ``radius`` to a kept, higher-scoring detection of the
    same class. ``radius <= 0`` keeps all."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if radius <= 0 or len(order) == 0:
        return order
    i, j = close_pairs(centres, classes, radius)
    if len(i) == 0:
        return order
    # Greedy, by decreasing score, over the points that have a close neighbour; the others
    # are kept whatever happens.
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    hi, lo = np.where(rank[i] < rank[j], i, j), np.where(rank[i] < rank[j], j, i)
    by_lo = np.argsort(rank[lo], kind="stable")
    lo, hi = lo[by_lo], hi[by_lo]
    bounds = np.flatnonzero(np.diff(lo)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    ends = np.concatenate([bounds, [len(lo)]]).tolist()
    suppressed = np.zeros(len(order), bool)
    for a, b in zip(starts, ends):
        # Every higher-scoring neighbour of lo[a] came earlier in rank order: decided.
        if not suppressed[hi[a:b]].all():
            suppressed[lo[a]] = True
    return order[~suppressed[order]]


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
        """Group label of each pending detection: the connected components of close
        same-class pairs (labels propagated to each component's smallest index)."""
        n = len(self._scores)
        labels = np.arange(n)
        i, j = close_pairs(self._xy, self._classes, self.radius)
        while len(i):
            low = np.minimum(labels[i], labels[j])
            new = labels.copy()
            np.minimum.at(new, i, low)
            np.minimum.at(new, j, low)
            new = new[new]  # labels only point to smaller indices of the same component
            if np.array_equal(new, labels):
                break
            labels = new
        return labels

    def _emit(self, frontier_y: float):
        n = len(self._scores)
        extra = self._extra if self._extra is not None else np.zeros((n, 0))
        if n == 0:
            return self._xy, self._scores, self._classes, extra
        groups = self._groups()
        lowest = np.full(n, -np.inf)
        np.maximum.at(lowest, groups, self._xy[:, 1])
        final = lowest[groups] < frontier_y - self.radius
        idx = np.flatnonzero(final)
        keep = idx[
            suppress_close_points(self._xy[idx], self._scores[idx], self._classes[idx], self.radius)
        ]
        out = (self._xy[keep], self._scores[keep], self._classes[keep], extra[keep])
        rest = np.flatnonzero(~final)
        self._xy, self._scores = self._xy[rest], self._scores[rest]
        self._classes, self._extra = self._classes[rest], extra[rest]
        return out
