"""Scores on held-out crops placed in real H&E context (midog_dev.canvas.build_placed_crops).

Per placed crop only the detections whose centre lies in the window's neighbourhood (the
pasted window grown by 30 px) count: the figure is found (recall) when one of them above
the threshold lies within 30 px of it (MIDOG's greedy matching, one match per figure),
every other one above the threshold is a false detection; rank-1 asks whether the
top-scoring one is the figure. The context tiles alone give false detections per mm².

At real density (:mod:`midog_d2.evaluation.prevalence`): false detections per mm² of the
crops' own tissue count the detections whose centre lies inside a pasted window and not
within 30 px of a mitotic figure the window shows (its own, or another labelled one of the
crop), over the windows' area at :data:`CROP_MPP`; with the recall above they give the F1
expected at 4.4 figures per mm² (:func:`placed_curve`).
Baselines on the same images: the darkest blob (minimum of the Gaussian-blurred grey
image, σ 4 px, :func:`midog_dev.nuclei.darkest_blob`) and a random nucleus-like
blob (chance). Matching and the threshold sweep are the product's
(:func:`midog_d2.evaluation.count_matches`, :func:`midog_d2.evaluation.best_threshold`, on
one :class:`~midog_d2.evaluation.ImagePoints` per crop at 1 µm/px, so that radii are in px);
inference is :func:`midog_d2.inference.predict_images`.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from midog_d2.constants import DEFAULT_MPP, MITOTIC_FIGURE
from midog_d2.evaluation import (
    ImagePoints,
    best_threshold,
    count_matches,
    points_in_region,
    precision_recall_f1,
)
from midog_d2.evaluation.prevalence import PrevalenceCurve, prevalence_curve
from midog_d2.inference import predict_images

from .nuclei import darkest_blob, nucleus_candidates

__all__ = [
    "Detections",
    "baseline_rank1",
    "chance_rank1",
    "evaluate_placed",
    "false_detections_per_mm2",
    "placed_curve",
    "placed_points",
    "predict_points",
    "select_threshold",
    "window_points",
]

Detections = Tuple[np.ndarray, np.ndarray]  # (N, 2) x, y centres and (N,) scores
RADIUS = 30.0
# ImagePoints at 1 µm/px: every radius given to the product's metrics is in pixels.
_PIXEL_MPP = 1.0
# The AMi-Br crops carry no µm/px; MIDOG's scanners are 0.23-0.26 µm/px.
CROP_MPP = DEFAULT_MPP
# Thresholds of the sweeps on placed crops (the detector keeps scores >= 0.05).
SWEEP = np.round(np.arange(0.05, 1.0, 0.01), 2)


def placed_points(sample: Any, detections: Detections, margin: float = 30.0) -> ImagePoints:
    """One placed crop as the product's scoring input: its figure as the ground truth and
    the detections whose centre lies in the window's neighbourhood (grown by ``margin`` px),
    at 1 µm/px so that radii are in pixels."""
    pts = np.asarray(detections[0], dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(detections[1], dtype=np.float64).reshape(-1)
    keep = points_in_region(pts, sample.neighbourhood(margin))
    return ImagePoints([sample.figure], pts[keep], scores[keep], mpp=_PIXEL_MPP)


def window_points(sample: Any, detections: Detections) -> ImagePoints:
    """The crop's own tissue as the product's scoring input for false detections: the
    detections whose centre lies inside the pasted window, every mitotic figure the window
    shows as ground truth (a detection on one is no false detection), and the window's area
    at :data:`CROP_MPP`."""
    pts = np.asarray(detections[0], dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(detections[1], dtype=np.float64).reshape(-1)
    keep = points_in_region(pts, sample.window)
    figures = [sample.figure] + [
        (x, y) for x, y, c in sample.extra.get("other_cells", ()) if c == MITOTIC_FIGURE
    ]
    x0, y0, x1, y1 = sample.window
    area = (x1 - x0) * (y1 - y0) * (CROP_MPP * 1e-3) ** 2
    return ImagePoints(figures, pts[keep], scores[keep], mpp=_PIXEL_MPP, area_mm2=area)


def placed_curve(
    samples: Sequence[Any], detections: Sequence[Detections], thresholds: Sequence[float] = SWEEP
) -> PrevalenceCurve:
    """Recall of the placed figures (:func:`placed_points`) and false detections per mm² of
    the crops' own tissue (:func:`window_points`) at each of ``thresholds``."""
    return prevalence_curve(
        [placed_points(s, d) for s, d in zip(samples, detections)],
        fp_images=[window_points(s, d) for s, d in zip(samples, detections)],
        radius_um=RADIUS,  # at 1 µm/px: pixels
        thresholds=thresholds,
    )


def _group_name(atypical: bool) -> str:
    return "atypical" if atypical else "normal"


def evaluate_placed(
    samples: Sequence[Any],
    detections: Sequence[Detections],
    threshold: float,
    radius: float = RADIUS,
    margin: float = 30.0,
) -> Dict[str, Dict[str, float]]:
    """
    Recall, rank-1, false detections per crop, precision and F1 over ``samples``
    (:class:`~midog_dev.canvas.PlacedCrop`) for ``normal``, ``atypical`` and ``all``;
    ``detections[i]`` are sample ``i``'s (centres, scores) in its canvas. F1 counts each
    found figure as a TP, each missed one as a FN and every false detection as a FP.
    """
    if len(samples) != len(detections):
        raise ValueError(
            f"evaluate_placed: {len(samples)} samples but {len(detections)} detection sets"
        )
    rows = []
    for s, det in zip(samples, detections):
        image = placed_points(s, det, margin)
        pts, scores = image.pred, image.scores
        rank1 = (
            bool(len(scores))
            and float(np.hypot(*(pts[int(np.argmax(scores))] - image.gt[0]))) <= radius
        )
        tp, fp, _ = count_matches(image, radius, threshold)
        rows.append((_group_name(s.atypical), tp, fp, rank1))
    out = {}
    for group in ("normal", "atypical", "all"):
        sel = [r for r in rows if group == "all" or r[0] == group]
        if not sel:
            continue
        tp = sum(r[1] for r in sel)
        fp = sum(r[2] for r in sel)
        fn = len(sel) - tp
        p, r, f1 = precision_recall_f1(tp, fp, fn)
        out[group] = {
            "crops": len(sel),
            "recall": r,
            "rank1": sum(r_[3] for r_ in sel) / len(sel),
            "fp_per_crop": fp / len(sel),
            "precision": p,
            "f1": f1,
        }
    return out


def select_threshold(
    samples: Sequence[Any],
    detections: Sequence[Detections],
    thresholds: Optional[Sequence[float]] = None,
) -> Tuple[float, float]:
    """(threshold, F1) with the best overall F1 (ties: the lower threshold), over
    ``thresholds`` (default 0.05, 0.06, ..., 0.95): :func:`midog_d2.evaluation.best_threshold`
    on :func:`placed_points` (radius :data:`RADIUS` px, the default neighbourhood)."""
    if thresholds is None:
        thresholds = np.round(np.arange(0.05, 0.96, 0.01), 2)
    images = [placed_points(s, d) for s, d in zip(samples, detections)]
    f1, threshold = best_threshold(images, RADIUS, thresholds)
    return threshold, f1


def baseline_rank1(
    samples: Sequence[Any], radius: float = RADIUS, sigma: float = 4.0, use_window: bool = True
) -> Dict[str, float]:
    """Fraction of crops (per group) whose darkest blob, searched in the window's
    neighbourhood (or the whole canvas), lies within ``radius`` px of the figure."""
    hits: Dict[str, List[bool]] = {"normal": [], "atypical": [], "all": []}
    for s in samples:
        p = darkest_blob(s.image, sigma, s.neighbourhood() if use_window else None)
        ok = float(np.hypot(p[0] - s.figure[0], p[1] - s.figure[1])) <= radius
        hits[_group_name(s.atypical)].append(ok)
        hits["all"].append(ok)
    return {k: float(np.mean(v)) for k, v in hits.items() if v}


def chance_rank1(samples: Sequence[Any], radius: float = RADIUS) -> Dict[str, float]:
    """Expected rank-1 of a pick uniformly at random among the nucleus-like blobs of the
    window's neighbourhood (:func:`midog_dev.nuclei.nucleus_candidates`)."""
    hits: Dict[str, List[float]] = {"normal": [], "atypical": [], "all": []}
    for s in samples:
        cand = nucleus_candidates(s.image, box=s.neighbourhood())
        v = (
            float(np.mean(np.hypot(cand[:, 0] - s.figure[0], cand[:, 1] - s.figure[1]) <= radius))
            if len(cand)
            else 0.0
        )
        hits[_group_name(s.atypical)].append(v)
        hits["all"].append(v)
    return {k: float(np.mean(v)) for k, v in hits.items() if v}


def predict_points(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    image_format: str = "BGR",
    batch_size: int = 8,
) -> List[Detections]:
    """Box centres and scores of the mitotic-figure detections of ``model`` on RGB uint8
    images (:func:`midog_d2.inference.predict_images`); the model runs in eval mode and is
    put back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        outputs = predict_images(model, list(images), image_format, batch_size)
    finally:
        model.train(was_training)
    out: List[Detections] = []
    for r in outputs:
        inst = r["instances"].to("cpu")
        keep = inst.pred_classes == MITOTIC_FIGURE if inst.has("pred_classes") else slice(None)
        inst = inst[keep]
        out.append(
            (
                inst.pred_boxes.get_centers().numpy().astype(np.float64),
                inst.scores.numpy().astype(np.float64),
            )
        )
    return out


def false_detections_per_mm2(
    detections: Sequence[Detections],
    shapes: Sequence[Tuple[int, int]],
    threshold: float,
    mpp: float = DEFAULT_MPP,
) -> float:
    """Detections at or above ``threshold`` per mm² over images of ``shapes`` (h, w) px at
    ``mpp`` µm/px (every detection counts: the images are assumed to hold no figure)."""
    n = sum(int((np.asarray(s) >= threshold).sum()) for _, s in detections)
    area = sum(h * w for h, w in shapes) * (mpp * 1e-3) ** 2
    if area <= 0:
        raise ValueError("false_detections_per_mm2: no image area")
    return n / area
