"""Scores on held-out crops placed in real H&E context (midog_d2.datagen.canvas.build_placed_crops).

Per placed crop only the detections whose centre lies in the window's neighbourhood (the
pasted window grown by 30 px) count: the figure is found (recall) when one of them above
the threshold lies within 30 px of it (MIDOG's greedy matching, one match per figure),
every other one above the threshold is a false detection; rank-1 asks whether the
top-scoring one is the figure. The context tiles alone give false detections per mm².
Baselines on the same images: the darkest blob (minimum of the Gaussian-blurred grey
image, σ 4 px) and a random nucleus-like blob (chance).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ..evaluation.metrics import greedy_match, points_in_region, precision_recall_f1

__all__ = [
    "Detections",
    "baseline_rank1",
    "chance_rank1",
    "darkest_blob",
    "evaluate_placed",
    "false_detections_per_mm2",
    "predict_points",
    "select_threshold",
]

Detections = Tuple[np.ndarray, np.ndarray]  # (N, 2) x, y centres and (N,) scores
RADIUS = 30.0


def darkest_blob(
    rgb: np.ndarray, sigma: float = 4.0, region: Optional[Sequence[float]] = None
) -> Tuple[float, float]:
    """(x, y) of the minimum of the Gaussian-blurred (``sigma`` px) grey image, within
    ``region`` [x0, y0, x1, y1) when given: "the darkest blob is the mitosis"."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    blur = cv2.GaussianBlur(grey, (0, 0), sigma)
    x0, y0, x1, y1 = (
        (0, 0, grey.shape[1], grey.shape[0]) if region is None else [int(round(v)) for v in region]
    )
    sub = blur[y0:y1, x0:x1]
    if sub.size == 0:
        raise ValueError(f"darkest_blob: empty region {region} in a {grey.shape} image")
    y, x = np.unravel_index(int(np.argmin(sub)), sub.shape)
    return float(x + x0), float(y + y0)


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
    (:class:`~midog_d2.datagen.canvas.PlacedCrop`) for ``normal``, ``atypical`` and ``all``;
    ``detections[i]`` are sample ``i``'s (centres, scores) in its canvas. F1 counts each
    found figure as a TP, each missed one as a FN and every false detection as a FP.
    """
    if len(samples) != len(detections):
        raise ValueError(
            f"evaluate_placed: {len(samples)} samples but {len(detections)} detection sets"
        )
    rows = []
    for s, (pts, scores) in zip(samples, detections):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        keep = points_in_region(pts, s.neighbourhood(margin))
        pts, scores = pts[keep], scores[keep]
        gt = np.asarray([s.figure], dtype=np.float64)
        rank1 = (
            bool(len(scores)) and float(np.hypot(*(pts[int(np.argmax(scores))] - gt[0]))) <= radius
        )
        alive = scores >= threshold
        order = np.argsort(-scores[alive], kind="stable")
        m = greedy_match(gt, pts[alive][order], radius)
        tp = int(m[0] >= 0)
        rows.append((_group_name(s.atypical), tp, int(alive.sum()) - tp, rank1))
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
    """(threshold, F1) with the best overall F1 (ties: the lower threshold)."""
    if thresholds is None:
        thresholds = np.round(np.arange(0.05, 0.96, 0.01), 2)
    best = (float(thresholds[0]), -1.0)
    for t in thresholds:
        f1 = evaluate_placed(samples, detections, float(t))["all"]["f1"]
        if f1 > best[1]:
            best = (float(t), f1)
    return best


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
    window's neighbourhood (:func:`midog_d2.datagen.canvas.nucleus_candidates`)."""
    from .canvas import nucleus_candidates

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


@torch.no_grad()
def predict_points(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    image_format: str = "BGR",
    batch_size: int = 8,
) -> List[Detections]:
    """Box centres and scores of ``model`` (Detectron2 inference mode) on RGB uint8 images."""
    was_training = model.training
    model.eval()
    out: List[Detections] = []
    try:
        for i in range(0, len(images), batch_size):
            batch = []
            for rgb in images[i : i + batch_size]:
                im = rgb if image_format == "RGB" else rgb[:, :, ::-1]
                batch.append(
                    {
                        "image": torch.as_tensor(np.ascontiguousarray(im.transpose(2, 0, 1))),
                        "height": rgb.shape[0],
                        "width": rgb.shape[1],
                    }
                )
            for r in model(batch):
                inst = r["instances"].to("cpu")
                keep = inst.pred_classes == 0 if inst.has("pred_classes") else slice(None)
                inst = inst[keep]
                out.append(
                    (
                        inst.pred_boxes.get_centers().numpy().astype(np.float64),
                        inst.scores.numpy().astype(np.float64),
                    )
                )
    finally:
        model.train(was_training)
    return out


def false_detections_per_mm2(
    detections: Sequence[Detections],
    shapes: Sequence[Tuple[int, int]],
    threshold: float,
    mpp: float = 0.25,
) -> float:
    """Detections at or above ``threshold`` per mm² over images of ``shapes`` (h, w) px at
    ``mpp`` µm/px (every detection counts: the images are assumed to hold no figure)."""
    n = sum(int((np.asarray(s) >= threshold).sum()) for _, s in detections)
    area = sum(h * w for h, w in shapes) * (mpp * 1e-3) ** 2
    if area <= 0:
        raise ValueError("false_detections_per_mm2: no image area")
    return n / area
