"""The MIDOG scoring protocol on points, in plain numpy (docs/evaluation.md).

* A detection is a point (its box centre). Ground truth is the mitotic figures only:
  hard negatives play no part.
* Don't-care zones (``ImagePoints.ignore``, an evaluation set's label, e.g. the other figures
  of tumor tissue tiled into composite ROIs): a detection within the radius of one and of no
  mitotic figure is removed before matching, so it is neither true nor false.
* Matching is greedy in ground-truth order: each ground-truth point takes the nearest
  prediction within ``radius`` (distance <= radius, ties broken by prediction index)
  that no earlier ground-truth point took. Unmatched predictions are false positives
  (so a second detection of one cell is one), unmatched ground truth false negatives.
  This is ``evalutils.scorers.score_detection`` as the MIDOG evaluation calls it.
* The radius is 7.5 µm, converted to pixels with each image's µm/px.
* TP/FP/FN are pooled over images before F1 = 2TP / (2TP + FP + FN); per-tumor
  numbers pool within one tumor type.
* ``ap50_points`` is the MIDOG 2022 mAP: every point becomes a square of ±11.25 µm and
  COCO's AP at IoU 0.5 (101 recall points, all detections ranked by score over all
  images, each detection matched to the unmatched ground truth of highest IoU >= 0.5)
  is taken over all submitted points, whatever the operating threshold.

Rates are fractions in [0, 1]; a rate whose denominator is 0 (e.g. precision with no
prediction) is NaN.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..constants import AP_BOX_HALF_UM, DEFAULT_MPP, DEFAULT_RADIUS_UM

__all__ = [
    "ImagePoints",
    "DEFAULT_RADIUS_UM",
    "AP_BOX_HALF_UM",
    "SWEEP_THRESHOLDS",
    "greedy_match",
    "count_matches",
    "points_in_region",
    "precision_recall_f1",
    "sweep_thresholds",
    "best_threshold",
    "ap50_points",
    "roc_auc",
    "evaluate_points",
    "best_at",
]

# The F1-optimal threshold sweep: 0.00, 0.01, ..., 0.99 (exact decimal steps, no drift).
SWEEP_THRESHOLDS = np.arange(100) / 100.0


@dataclass
class ImagePoints:
    """One image's points in level-0 pixels, ready for scoring.

    Attributes:
        gt: (G, 2) mitotic-figure centres (x, y).
        pred: (P, 2) detection centres (x, y).
        scores: (P,) detection scores.
        mpp: µm per pixel of the image.
        tumor: tumor type (for per-tumor pooling).
        image_id: any identifier, carried along for reports.
        selected: optional (P,) bool, the detections that count when no score
            threshold is given (e.g. the points a challenge file names
            "mitotic figure"); None means all of them.
        area_mm2: the tissue area (mm²) searched for the detections, for false
            detections per mm² (:mod:`.prevalence`); None when not known.
        ignore: (K, 2) centres of don't-care zones (see :meth:`scored`).
        ignore_radius_um: a don't-care zone's radius (None: the hit radius).
    """

    gt: np.ndarray
    pred: np.ndarray
    scores: np.ndarray
    mpp: float = DEFAULT_MPP
    tumor: str = ""
    image_id: Any = None
    selected: Optional[np.ndarray] = None
    area_mm2: Optional[float] = None
    ignore: Optional[np.ndarray] = None
    ignore_radius_um: Optional[float] = None

    def __post_init__(self):
        self.gt = np.asarray(self.gt, dtype=np.float64).reshape(-1, 2)
        self.pred = np.asarray(self.pred, dtype=np.float64).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.scores) != len(self.pred):
            raise ValueError(
                f"image {self.image_id!r}: {len(self.pred)} predicted points but "
                f"{len(self.scores)} scores"
            )
        if not (np.isfinite(self.mpp) and self.mpp > 0):
            raise ValueError(f"image {self.image_id!r}: µm per pixel must be > 0, got {self.mpp}")
        if self.selected is not None:
            self.selected = np.asarray(self.selected, dtype=bool).reshape(-1)
            if len(self.selected) != len(self.pred):
                raise ValueError(f"image {self.image_id!r}: `selected` has the wrong length")
        if self.area_mm2 is not None and not (np.isfinite(self.area_mm2) and self.area_mm2 >= 0):
            raise ValueError(f"image {self.image_id!r}: area must be >= 0 mm², got {self.area_mm2}")

        self.ignore = (
            None
            if self.ignore is None or len(self.ignore) == 0
            else np.asarray(self.ignore, dtype=np.float64).reshape(-1, 2)
        )

    def radius_px(self, radius_um: float) -> float:
        return radius_um / self.mpp

    def scored(self, radius_um: float) -> "ImagePoints":
        """The image as it is scored: without the detections within ``ignore_radius_um``
        (default ``radius_um``) of a don't-care zone and within ``radius_um`` of no mitotic
        figure (itself when it has no zone)."""
        if self.ignore is None or len(self.pred) == 0:
            return self
        zone = radius_um if self.ignore_radius_um is None else self.ignore_radius_um

        def near(points: np.ndarray, r_um: float) -> np.ndarray:
            if len(points) == 0:
                return np.zeros(len(self.pred), dtype=bool)
            r2 = self.radius_px(r_um) ** 2
            return (((self.pred[:, None, :] - points[None, :, :]) ** 2).sum(-1) <= r2).any(1)

        keep = ~near(self.ignore, zone) | near(self.gt, radius_um)
        return ImagePoints(
            gt=self.gt,
            pred=self.pred[keep],
            scores=self.scores[keep],
            mpp=self.mpp,
            tumor=self.tumor,
            image_id=self.image_id,
            selected=None if self.selected is None else self.selected[keep],
            area_mm2=self.area_mm2,
        )


def _candidates(gt: np.ndarray, pred: np.ndarray, radius: float) -> List[np.ndarray]:
    """For each ground-truth point, the predictions within ``radius``, nearest first
    (ties: lower prediction index first)."""
    if len(gt) == 0 or len(pred) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(len(gt))]
    d2 = ((gt[:, None, :] - pred[None, :, :]) ** 2).sum(-1)
    within = d2 <= radius * radius
    out = []
    for g in range(len(gt)):
        idx = np.flatnonzero(within[g])
        # argsort is stable, and flatnonzero is ascending: equal distances keep index order.
        out.append(idx[np.argsort(d2[g, idx], kind="stable")])
    return out


def _greedy(candidates: Sequence[np.ndarray], alive: np.ndarray) -> np.ndarray:
    matched = np.full(len(candidates), -1, dtype=np.int64)
    taken = set()
    for g, cand in enumerate(candidates):
        for p in cand:
            if alive[p] and p not in taken:
                taken.add(p)
                matched[g] = p
                break
    return matched


def points_in_region(xy: np.ndarray, region: Optional[Sequence[float]]) -> np.ndarray:
    """Mask of the points (N, 2) inside ``region`` (x0, y0, x1, y1), half-open like
    pixel ranges; None is the whole plane."""
    if region is None:
        return np.ones(len(xy), dtype=bool)
    x0, y0, x1, y1 = region
    return (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)


def greedy_match(gt: np.ndarray, pred: np.ndarray, radius: float) -> np.ndarray:
    """MIDOG matching of one image: (G,) index of the prediction each ground-truth
    point took, -1 where none. Points and radius in the same unit."""
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 2)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    return _greedy(_candidates(gt, pred, radius), np.ones(len(pred), dtype=bool))


def _alive(image: ImagePoints, threshold: Optional[float]) -> np.ndarray:
    if threshold is not None:
        return image.scores >= threshold
    if image.selected is not None:
        return image.selected
    return np.ones(len(image.scores), dtype=bool)


def count_matches(
    image: ImagePoints, radius_um: float = DEFAULT_RADIUS_UM, threshold: Optional[float] = None
) -> Tuple[int, int, int]:
    """(TP, FP, FN) of one image; predictions count when ``score >= threshold`` (all,
    or ``image.selected``, when ``threshold`` is None)."""
    image = image.scored(radius_um)
    alive = _alive(image, threshold)
    cand = _candidates(image.gt, image.pred, image.radius_px(radius_um))
    tp = int((_greedy(cand, alive) >= 0).sum())
    return tp, int(alive.sum()) - tp, len(image.gt) - tp


def precision_recall_f1(tp: float, fp: float, fn: float) -> Tuple[float, float, float]:
    """Precision, recall and F1 = 2TP / (2TP + FP + FN); NaN where undefined (0/0)."""

    def ratio(a, b):
        return float(a) / float(b) if b > 0 else float("nan")

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


def sweep_thresholds(
    images: Sequence[ImagePoints],
    radius_um: float = DEFAULT_RADIUS_UM,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled (TP, FP, FN), each of shape (T,), at every threshold, exactly as
    :func:`count_matches` would give them one threshold at a time.

    Greedy matching does depend on which predictions survive a threshold, but only
    through the predictions that lie within the radius of some ground truth: the
    matching is rerun once per distinct surviving subset of those, not per threshold.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp = np.zeros(len(thresholds), dtype=np.int64)
    fp = np.zeros(len(thresholds), dtype=np.int64)
    fn = np.zeros(len(thresholds), dtype=np.int64)
    for image in images:
        image = image.scored(radius_um)
        sorted_scores = np.sort(image.scores)
        n_alive = len(sorted_scores) - np.searchsorted(sorted_scores, thresholds, side="left")
        cand = _candidates(image.gt, image.pred, image.radius_px(radius_um))
        contested = np.unique(np.concatenate(cand)) if cand else np.zeros(0, dtype=np.int64)
        tp_img = np.zeros(len(thresholds), dtype=np.int64)
        if len(contested):
            cscores = np.sort(image.scores[contested])
            # Which contested predictions survive depends only on how many of their
            # scores lie below the threshold.
            keys = np.searchsorted(cscores, thresholds, side="left")
            memo: Dict[int, int] = {}
            for i, (key, t) in enumerate(zip(keys.tolist(), thresholds)):
                if key not in memo:
                    memo[key] = int((_greedy(cand, image.scores >= t) >= 0).sum())
                tp_img[i] = memo[key]
        tp += tp_img
        fp += n_alive - tp_img
        fn += len(image.gt) - tp_img
    return tp, fp, fn


def _square_iou(a: np.ndarray, b: np.ndarray, half: float) -> np.ndarray:
    """IoU of axis-aligned squares of half side ``half`` centred at ``a`` (N, 2) and ``b``
    (M, 2)."""
    side = 2.0 * half
    iw = np.clip(side - np.abs(a[:, None, 0] - b[None, :, 0]), 0, None)
    ih = np.clip(side - np.abs(a[:, None, 1] - b[None, :, 1]), 0, None)
    inter = iw * ih
    return inter / (2.0 * side * side - inter)


def ap50_points(
    images: Sequence[ImagePoints],
    box_half_um: float = AP_BOX_HALF_UM,
    iou_threshold: float = 0.5,
) -> float:
    """MIDOG 2022 AP at IoU 0.5 over all predictions (pycocotools' COCOeval semantics
    for one category, area "all", no detection limit). NaN when there is no ground truth."""
    all_scores, all_hits = [], []
    num_gt = 0
    for image in images:
        num_gt += len(image.gt)
        if len(image.pred) == 0:
            continue
        order = np.argsort(-image.scores, kind="mergesort")
        hits = np.zeros(len(order), dtype=bool)
        if len(image.gt):
            iou = _square_iou(image.pred[order], image.gt, box_half_um / image.mpp)
            gt_taken = np.zeros(len(image.gt), dtype=bool)
            for d in np.flatnonzero((iou >= iou_threshold).any(axis=1)):
                row = np.where(gt_taken | (iou[d] < iou_threshold), -1.0, iou[d])
                if row.max() < 0:
                    continue
                # COCOeval keeps the last ground truth among equal best IoUs.
                g = len(row) - 1 - int(np.argmax(row[::-1]))
                gt_taken[g] = True
                hits[d] = True
        all_scores.append(image.scores[order])
        all_hits.append(hits)
    if num_gt == 0:
        return float("nan")
    if not all_scores:
        return 0.0
    scores = np.concatenate(all_scores)
    order = np.argsort(-scores, kind="mergesort")
    hits = np.concatenate(all_hits)[order]
    tps = np.cumsum(hits).astype(np.float64)
    fps = np.cumsum(~hits).astype(np.float64)
    recall = tps / num_gt
    precision = tps / (tps + fps + np.spacing(1))
    # Precision envelope: the best precision at any recall >= this one.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    rec_thrs = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, rec_thrs, side="left")
    q = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(q.mean())


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN if one class is absent."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks (1-based) over runs of equal scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _summary(tp: int, fp: int, fn: int) -> Dict[str, float]:
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    return {
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def best_at(values: np.ndarray, thresholds: np.ndarray) -> Tuple[float, float]:
    """(best value, its threshold) of ``values`` (T,) over ``thresholds`` (T,): the lowest
    threshold among equally good ones (equal up to 1e-12: F1s computed through rates
    differ in their last bits); (NaN, NaN) when every value is NaN."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).any():
        return float("nan"), float("nan")
    i = int(np.flatnonzero(values >= np.nanmax(values) - 1e-12)[0])
    return float(values[i]), float(thresholds[i])


def _best(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, thresholds: np.ndarray
) -> Tuple[float, float]:
    denom = 2 * tp + fp + fn
    return best_at(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan), thresholds)


def best_threshold(
    images: Sequence[ImagePoints],
    radius_um: float = DEFAULT_RADIUS_UM,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
) -> Tuple[float, float]:
    """(best F1, its threshold) of the pooled sweep over ``thresholds``: the protocol's
    operating point, chosen on validation images. Ties go to the lowest threshold;
    (NaN, NaN) when F1 is undefined at every threshold."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return _best(*sweep_thresholds(images, radius_um, thresholds), thresholds)


def evaluate_points(
    images: Sequence[ImagePoints],
    radius_um: float = DEFAULT_RADIUS_UM,
    threshold: Optional[float] = None,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
    box_half_um: float = AP_BOX_HALF_UM,
) -> Dict[str, Any]:
    """Every MIDOG number for a set of images.

    Returns a dict with ``tp, fp, fn, precision, recall, f1`` at ``threshold``
    (``score >= threshold``; None: all predictions or each image's ``selected``),
    ``threshold``, ``best_f1``/``best_threshold`` of the sweep over ``thresholds``
    (lowest threshold on ties), ``ap50`` (:func:`ap50_points`), ``num_images``,
    ``num_gt``, ``num_pred`` and ``per_tumor``: {tumor: the same keys pooled within it}.

    The numbers at real density (false detections per mm², the expected F1 and the best
    threshold at a density) are :func:`~.prevalence.evaluate_at_density`'s.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    images = [i.scored(radius_um) for i in images]

    def summarize(group: Sequence[ImagePoints]) -> Dict[str, Any]:
        counts = np.zeros(3, dtype=np.int64)
        for image in group:
            counts += count_matches(image, radius_um, threshold)
        out = _summary(*counts.tolist())
        out["threshold"] = None if threshold is None else float(threshold)
        tp, fp, fn = sweep_thresholds(group, radius_um, thresholds)
        out["best_f1"], out["best_threshold"] = _best(tp, fp, fn, thresholds)
        out["ap50"] = ap50_points(group, box_half_um)
        out["num_images"] = len(group)
        out["num_gt"] = int(sum(len(i.gt) for i in group))
        out["num_pred"] = int(sum(len(i.pred) for i in group))
        return out

    result = summarize(images)
    tumors: Dict[str, List[ImagePoints]] = {}
    for image in images:
        tumors.setdefault(image.tumor, []).append(image)
    result["per_tumor"] = {t: summarize(g) for t, g in sorted(tumors.items())}
    return result
