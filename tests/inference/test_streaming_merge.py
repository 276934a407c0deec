"""Streaming seam merging (midog_d2.inference.StreamingMerger): exactly the all-at-once
suppression, with memory bounded by the rows still to come."""

import numpy as np
import pytest

from midog_d2.inference.grid import tile_grid
from midog_d2.inference.merge import StreamingMerger, close_pairs, suppress_close_points


def _tiles_of(points, tiles):
    """Each point reported by every tile holding it (as overlapping tiles do)."""
    out = []
    for x0, y0, x1, y1 in tiles:
        inside = (
            (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)
        )
        out.append(np.flatnonzero(inside))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_streaming_keeps_exactly_what_the_global_suppression_keeps(seed):
    rng = np.random.default_rng(seed)
    n = 600
    # clustered points, so that suppression chains cross tile rows
    centres = rng.uniform(0, 2000, (n // 3, 2))
    pts = np.concatenate(
        [centres, centres + rng.normal(0, 15, centres.shape), rng.uniform(0, 2000, (n // 3, 2))]
    )
    pts = np.clip(pts, 0, 1999)
    scores = rng.uniform(0, 1, len(pts))
    classes = rng.integers(0, 2, len(pts))
    tiles = tile_grid((0, 0, 2000, 2000), 512, 52)
    # the detections as the tiles report them (duplicates across overlaps, jittered)
    xy, sc, cl, ids = [], [], [], []
    for t, idx in zip(tiles, _tiles_of(pts, tiles)):
        xy.append(pts[idx] + rng.normal(0, 0.5, (len(idx), 2)))
        sc.append(scores[idx] - rng.uniform(0, 1e-3, len(idx)))
        cl.append(classes[idx])
    all_xy, all_sc, all_cl = np.concatenate(xy), np.concatenate(sc), np.concatenate(cl)
    want = suppress_close_points(all_xy, all_sc, all_cl, 25.0)
    merger = StreamingMerger(25.0)
    got, most_pending, pos = [], 0, 0
    for k, t in enumerate(tiles):
        frontier = tiles[k + 1][1] if k + 1 < len(tiles) else float("inf")
        ids = np.arange(pos, pos + len(xy[k]), dtype=float)[:, None]
        out = merger.add(xy[k], sc[k], cl[k], frontier, extra=ids)
        pos += len(xy[k])
        got.extend(out[3][:, 0].astype(int).tolist())
        most_pending = max(most_pending, merger.pending)
    got.extend(merger.finish()[3][:, 0].astype(int).tolist())
    assert sorted(got) == sorted(want.tolist())
    assert most_pending < 0.6 * len(all_sc)  # rows done are let go


def test_a_cell_across_a_corner_of_four_tiles_is_reported_once():
    tiles = tile_grid((0, 0, 1000, 1000), 512, 52)  # corner overlap around (460-512, 460-512)
    cell = np.array([[488.0, 488.0]])
    merger = StreamingMerger(25.0)
    kept = []
    for k, (x0, y0, x1, y1) in enumerate(tiles):
        if x0 <= cell[0, 0] < x1 and y0 <= cell[0, 1] < y1:
            det, s = cell + np.random.default_rng(k).normal(0, 1.0, (1, 2)), [0.9 - 0.01 * k]
        else:
            det, s = np.zeros((0, 2)), []
        frontier = tiles[k + 1][1] if k + 1 < len(tiles) else float("inf")
        kept.extend(merger.add(det, s, [0] * len(s), frontier)[1].tolist())
    kept.extend(merger.finish()[1].tolist())
    assert kept == [0.9]


def _greedy_by_brute_force(xy, scores, classes, radius):
    """The suppression's definition, pair by pair: by decreasing score, keep a point unless a
    kept point of its class lies closer than the radius."""
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        d = xy[kept] - xy[i] if kept else np.zeros((0, 2))
        same = classes[kept] == classes[i] if kept else np.zeros(0, bool)
        if not ((d * d).sum(axis=1)[same] < radius * radius).any():
            kept.append(i)
    return np.array(kept, np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_pairs_and_suppression_equal_the_brute_force_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    centres = rng.uniform(-300, 1500, (max(1, n // 4), 2))  # negative and large coordinates
    xy = np.concatenate([centres + rng.normal(0, 12, centres.shape) for _ in range(4)])[:n]
    # points exactly on cell edges and exactly one radius apart (not closer: kept apart)
    xy[: n // 10] = np.round(xy[: n // 10] / 25.0) * 25.0
    scores = rng.uniform(0, 1, len(xy))
    classes = rng.choice([0, 1, 7], len(xy))
    i, j = close_pairs(xy, classes, 25.0)
    d = xy[:, None] - xy[None]
    near = ((d * d).sum(-1) < 625.0) & (classes[:, None] == classes[None])
    want = {(a, b) for a, b in zip(*np.nonzero(near)) if a < b}
    assert set(zip(i.tolist(), j.tolist())) == want and len(i) == len(want)
    np.testing.assert_array_equal(
        suppress_close_points(xy, scores, classes, 25.0),
        _greedy_by_brute_force(xy, scores, classes, 25.0),
    )
