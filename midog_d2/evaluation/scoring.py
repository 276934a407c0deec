"""Ground truth and detections -> the points the MIDOG protocol scores.

One builder (:func:`image_points`) serves both the evaluator that runs during training
(:class:`~midog_d2.evaluation.MidogEvaluator`) and the scorer of prediction files
(:func:`evaluate_prediction_file`, ``tools/evaluate_midog.py``), so both apply the same
rules: mitotic figures only, never-annotated images left out, an optional region.
"""

import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ..constants import (
    DEFAULT_DONT_CARE_RADIUS_UM,
    DEFAULT_MPP,
    DEFAULT_RADIUS_UM,
    DONT_CARE,
    MITOTIC_FIGURE,
    is_labelled,
)
from ..data.midog import box_centres, load_midog_json
from ..fileio.points import detect_prediction_format, load_coco_results, load_point_predictions
from .metrics import ImagePoints, points_in_region
from .prevalence import evaluate_at_density

# box_centres lives with the dataset dicts (midog_d2.data.midog); re-exported here.
__all__ = ["box_centres", "image_points", "evaluate_prediction_file"]

PathLike = Union[str, os.PathLike]


def image_points(
    record: Dict[str, Any],
    pred: np.ndarray,
    scores: np.ndarray,
    mpp: float,
    *,
    region: Optional[Sequence[float]] = None,
    selected: Optional[np.ndarray] = None,
    image_id: Any = None,
    ignore_radius_um: float = DEFAULT_DONT_CARE_RADIUS_UM,
) -> Optional[ImagePoints]:
    """
    The :class:`ImagePoints` one image is scored on: the mitotic figures of ``record`` (a
    dataset dict), its don't-care zones and the detections ``pred`` (P, 2) / ``scores``
    (P,) in level-0 pixels, all restricted to ``region`` (x0, y0, x1, y1) when given; a
    don't-care zone reaches ``ignore_radius_um`` (``TEST.MIDOG.DONT_CARE_RADIUS_UM``). Its
    searched area is the region's, else the record's ``width`` x ``height`` (a MIDOG ROI is
    tissue throughout), less its don't-care zones: no detection there can be false, so false
    detections per mm² count over the rest (:func:`zones_area_px`). None when the image was
    never annotated (:func:`~midog_d2.constants.is_labelled`): it takes no part in scoring.
    """
    if not is_labelled(record):
        return None
    box: Optional[Sequence[float]] = region
    if box is None and record.get("width") and record.get("height"):
        box = (0.0, 0.0, float(record["width"]), float(record["height"]))
    area_px = None if box is None else max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    gt = box_centres(record, MITOTIC_FIGURE)
    ignore = box_centres(record, DONT_CARE)
    ignore = ignore[points_in_region(ignore, region)]
    if area_px is not None and len(ignore):
        area_px = max(0.0, area_px - zones_area_px(ignore, ignore_radius_um / mpp, box))
    keep = points_in_region(pred, region)
    return ImagePoints(
        gt=gt[points_in_region(gt, region)],
        pred=pred[keep],
        scores=scores[keep],
        mpp=mpp,
        tumor=str(record.get("tumor_type")),
        image_id=record.get("image_id") if image_id is None else image_id,
        selected=None if selected is None else np.asarray(selected, dtype=bool)[keep],
        area_mm2=None if area_px is None else area_px * (mpp * 1e-3) ** 2,
        ignore=ignore,
        ignore_radius_um=ignore_radius_um,
    )


def zones_area_px(centres: np.ndarray, radius_px: float, box: Sequence[float]) -> float:
    """Area (px²) of the union of discs of ``radius_px`` around ``centres`` inside ``box``
    (x0, y0, x1, y1), counted on a grid of radius / 16 (within ~2 % of the exact area)."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    if len(centres) == 0 or radius_px <= 0:
        return 0.0
    cell = max(radius_px / 16.0, 0.5)
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = int(math.ceil((x1 - x0) / cell)), int(math.ceil((y1 - y0) / cell))
    if w <= 0 or h <= 0:
        return 0.0
    mask = np.zeros((h, w), bool)
    reach = int(math.ceil(radius_px / cell)) + 1
    for cx, cy in centres:
        gx, gy = (cx - x0) / cell, (cy - y0) / cell
        i0, i1 = max(int(gx) - reach, 0), min(int(gx) + reach + 1, w)
        j0, j1 = max(int(gy) - reach, 0), min(int(gy) + reach + 1, h)
        if i0 >= i1 or j0 >= j1:
            continue
        xs = (np.arange(i0, i1) + 0.5 - gx) * cell
        ys = (np.arange(j0, j1) + 0.5 - gy) * cell
        mask[j0:j1, i0:i1] |= xs[None, :] ** 2 + ys[:, None] ** 2 <= radius_px**2
    return float(mask.sum()) * cell * cell


def evaluate_prediction_file(
    ground_truth: PathLike,
    predictions: PathLike,
    *,
    radius_um: float = DEFAULT_RADIUS_UM,
    mpp: float = DEFAULT_MPP,
    threshold: Optional[float] = None,
    pred_category_id: Optional[int] = None,
    use_point_names: bool = False,
    dont_care_radius_um: float = DEFAULT_DONT_CARE_RADIUS_UM,
) -> Dict[str, Any]:
    """Score a prediction file against a MIDOG/MIDOG++ annotation file.

    Ground truth is read with :func:`midog_d2.data.load_midog_json`: mitotic figures only;
    never-annotated images (no annotation at all) are left out, and predictions on
    them are counted in ``ignored_predictions`` but not scored. Ground-truth images
    without predictions count as images where nothing was detected.

    Predictions: Detectron2 ``coco_instances_results.json`` (pixels) or MIDOG points
    (mm, converted with ``mpp``), detected by
    :func:`~midog_d2.fileio.points.detect_prediction_format`. Without ``threshold``,
    TP/FP/FN/F1 use every prediction, or, with ``use_point_names``, the points a MIDOG file
    names "mitotic figure" (the challenge's own rule: the submitter's threshold is carried
    in the names); with it, ``score >= threshold``. The sweep and AP always use every
    detection.

    Returns :func:`~midog_d2.evaluation.prevalence.evaluate_at_density`'s dict plus the
    inputs, ``format``, ``mpp``, ``radius_um``, ``unlabelled_images`` and
    ``ignored_predictions``.
    """
    if not (mpp > 0):
        raise ValueError(f"µm per pixel must be > 0, got {mpp}")
    dicts = load_midog_json(str(ground_truth), include_unlabelled=True)
    fmt = detect_prediction_format(predictions)
    by_id = {d["image_id"]: d for d in dicts}
    preds: Dict[Any, Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = {}
    if fmt == "coco":
        for image_id, (xy, scores) in load_coco_results(predictions, pred_category_id).items():
            if image_id not in by_id:
                raise ValueError(
                    f"{predictions}: image_id {image_id!r} is not in the ground truth "
                    f"{ground_truth}"
                )
            preds[image_id] = (xy, scores, None)
    else:
        for image_id, (xy_mm, prob, named) in load_point_predictions(predictions, dicts).items():
            preds[image_id] = (xy_mm * (1000.0 / mpp), prob, named if use_point_names else None)

    images, ignored, unlabelled = [], 0, 0
    for d in dicts:
        xy, scores, selected = preds.get(d["image_id"], (np.zeros((0, 2)), np.zeros(0), None))
        points = image_points(
            d, xy, scores, mpp, selected=selected, ignore_radius_um=dont_care_radius_um
        )
        if points is None:
            unlabelled += 1
            ignored += len(scores)
            continue
        images.append(points)
    if not images:
        raise ValueError(f"{ground_truth}: no labelled image to score")
    result = evaluate_at_density(images, radius_um, threshold)
    result.update(
        ground_truth=str(ground_truth),
        predictions=str(predictions),
        format=fmt,
        mpp=mpp,
        radius_um=radius_um,
        unlabelled_images=unlabelled,
        ignored_predictions=ignored,
    )
    return result
