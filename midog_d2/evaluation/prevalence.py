"""Detection quality at the mitotic density of real tissue (docs/evaluation.md, "At real
density").

Real tissue holds few mitotic figures: the labelled MIDOG++ regions have a median of 4.4 per
mm² (:data:`MIDOGPP_DENSITY`, per tumor type :data:`MIDOGPP_TUMOR_DENSITY`). A detector that
finds a fraction R of the figures (recall) and makes f false detections per mm² of tissue,
run on tissue holding ρ figures per mm², finds Rρ figures and f false ones per mm², so

    precision = Rρ / (Rρ + f),   F1 = 2Rρ / ((1 + R)ρ + f).

Recall and false detections per mm² can be measured on different material (figures placed
in windows; tissue without figures) and combined at any density; on a set scored whole (a
MIDOG ROI) at the set's own density the expected F1 *is* the pooled F1 (2TP / (2TP + FP +
FN)), so the two ways of scoring agree where both apply.

This module owns the operating point: the expected F1 (:func:`expected_f1`), the sweep of
it over thresholds (:class:`PrevalenceCurve`), the threshold with the best expected F1 at a
density (:meth:`PrevalenceCurve.best_threshold`), and the one reading of
``TEST.MIDOG.OPERATING_DENSITY`` (:func:`operating_density`).
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..constants import (
    AP_BOX_HALF_UM,
    DEFAULT_RADIUS_UM,
    HARD_NEGATIVE,
    MIDOGPP_DENSITY,
    MIDOGPP_TUMOR_DENSITY,
    MITOTIC_FIGURE,
    is_labelled,
)
from .metrics import SWEEP_THRESHOLDS, ImagePoints, best_at, evaluate_points, sweep_thresholds

__all__ = [
    "MIDOGPP_DENSITY",
    "MIDOGPP_TUMOR_DENSITY",
    "PrevalenceCurve",
    "density_table",
    "evaluate_at_density",
    "expected_f1",
    "expected_precision",
    "operating_density",
    "prevalence_curve",
    "rate_interval",
    "searched_area_mm2",
]


def expected_precision(recall, fp_per_mm2, density: float):
    """Rρ / (Rρ + f): the precision at ``density`` (ρ) figures per mm² of a detector with
    recall R and f false detections per mm² (NaN where nothing is detected at all)."""
    r, f = np.asarray(recall, dtype=np.float64), np.asarray(fp_per_mm2, dtype=np.float64)
    num = r * density
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(num + f > 0, num / np.where(num + f > 0, num + f, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def expected_f1(recall, fp_per_mm2, density: float):
    """2Rρ / ((1 + R)ρ + f): the F1 a detector of recall R and f false detections per mm²
    gets on tissue holding ``density`` (ρ > 0) mitotic figures per mm²."""
    if not (density > 0 and np.isfinite(density)):
        raise ValueError(f"mitotic density must be a positive number per mm², got {density}")
    r, f = np.asarray(recall, dtype=np.float64), np.asarray(fp_per_mm2, dtype=np.float64)
    out = 2.0 * r * density / ((1.0 + r) * density + f)
    return float(out) if out.ndim == 0 else out


def operating_density(setting: Optional[float], own: Optional[float] = None) -> float:
    """The density (figures per mm²) the operating point is chosen at, from
    ``TEST.MIDOG.OPERATING_DENSITY`` (``setting``; None: MIDOG++'s median, 4.4): a positive
    value as it is; 0 the scored set's own density ``own`` (whole regions scored as they
    are). A set without a density of its own (figures placed in windows) with 0 is an
    error."""
    if setting is None:
        return MIDOGPP_DENSITY
    setting = float(setting)
    if setting > 0:
        return setting
    if setting < 0 or not math.isfinite(setting):
        raise ValueError(f"TEST.MIDOG.OPERATING_DENSITY must be >= 0, got {setting}")
    if own is None:
        raise ValueError(
            "TEST.MIDOG.OPERATING_DENSITY 0 means the set's own density, and this set has none "
            "(its figures are placed in windows): give a density in figures per mm²"
        )
    return float(own)


def _poisson_cdf(k: int, mu: float) -> float:
    """P(X <= k) for X ~ Poisson(mu)."""
    if mu <= 0:
        return 1.0
    term = total = math.exp(-mu)
    for i in range(1, k + 1):
        term *= mu / i
        total += term
    return min(1.0, total)


def rate_interval(count: int, area_mm2: float, level: float = 0.95) -> Tuple[float, float, float]:
    """``(rate, low, high)``: ``count`` false detections in ``area_mm2`` of tissue as a rate
    per mm² with its exact (Garwood) Poisson interval. A rate from a few hundredths of a mm²
    is a count of 0, 1 or 2: the interval says how little that pins down."""
    if area_mm2 <= 0 or count < 0:
        raise ValueError(f"rate_interval: count {count} >= 0 and area {area_mm2} > 0 needed")
    alpha = (1.0 - level) / 2

    def solve(target: float, k: int) -> float:  # mu with P(X <= k; mu) = target
        lo, hi = 0.0, max(10.0, 4.0 * (k + 10))
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _poisson_cdf(k, mid) > target else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if count == 0 else solve(1.0 - alpha, count - 1)
    high = solve(alpha, count)
    return count / area_mm2, low / area_mm2, high / area_mm2


def searched_area_mm2(images: Sequence[ImagePoints]) -> float:
    """Total tissue area (mm²) the images were searched over (each one's ``area_mm2``);
    ValueError naming an image that does not carry one."""
    total = 0.0
    for image in images:
        if image.area_mm2 is None:
            raise ValueError(
                f"image {image.image_id!r}: no searched area (area_mm2), so false detections "
                "per mm² cannot be counted"
            )
        total += float(image.area_mm2)
    return total


@dataclass
class PrevalenceCurve:
    """Recall and false detections per mm² at each threshold of a sweep.

    Attributes:
        thresholds: (T,) score thresholds (a detection counts when ``score >= t``).
        recall: (T,) fraction of the figures found.
        fp_per_mm2: (T,) false detections per mm² of the area searched for them.
        num_figures: figures the recall was measured on.
        area_mm2: area the false detections were counted over.
        false_detections: (T,) their count.
    """

    thresholds: np.ndarray
    recall: np.ndarray
    fp_per_mm2: np.ndarray
    num_figures: int
    area_mm2: float
    false_detections: np.ndarray

    def expected_f1(self, density: float = MIDOGPP_DENSITY) -> np.ndarray:
        """(T,) expected F1 at ``density`` figures per mm²."""
        return expected_f1(self.recall, self.fp_per_mm2, density)

    def best_threshold(self, density: float = MIDOGPP_DENSITY) -> Tuple[float, float]:
        """(threshold, expected F1) maximising the expected F1 at ``density`` (ties: the
        lowest threshold; (NaN, NaN) without figures)."""
        f1, threshold = best_at(self.expected_f1(density), self.thresholds)
        return threshold, f1

    def at(self, threshold: float, density: float = MIDOGPP_DENSITY) -> Dict[str, float]:
        """Recall, false detections per mm², expected precision and F1 at ``density``, at
        the sweep threshold ``threshold`` (it must be one of :attr:`thresholds`)."""
        hit = np.flatnonzero(np.isclose(self.thresholds, threshold, rtol=0, atol=1e-9))
        if not len(hit):
            raise ValueError(f"threshold {threshold} is not one of the curve's thresholds")
        i = int(hit[0])
        r, f = float(self.recall[i]), float(self.fp_per_mm2[i])
        return {
            "threshold": float(self.thresholds[i]),
            "recall": r,
            "fp_per_mm2": f,
            "false_detections": int(self.false_detections[i]),
            "density": float(density),
            "expected_precision": expected_precision(r, f, density),
            "expected_f1": expected_f1(r, f, density),
        }


def prevalence_curve(
    images: Sequence[ImagePoints],
    fp_images: Optional[Sequence[ImagePoints]] = None,
    radius_um: float = DEFAULT_RADIUS_UM,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
) -> PrevalenceCurve:
    """
    Recall on the figures of ``images`` and false detections per mm² over the searched
    area of ``fp_images`` (default: ``images``; each must carry ``area_mm2``) at every
    threshold, with the MIDOG protocol's matching (:func:`~.metrics.sweep_thresholds`): a
    detection within ``radius_um`` of a figure of its image is no false detection, so
    ``fp_images`` should hold every annotated figure of the area as ground truth.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp, _, fn = sweep_thresholds(images, radius_um, thresholds)
    fp_source = images if fp_images is None else fp_images
    area = searched_area_mm2(fp_source)
    if area <= 0:
        raise ValueError("prevalence_curve: the searched area is 0 mm²")
    _, fp, _ = sweep_thresholds(fp_source, radius_um, thresholds)
    num = tp + fn
    recall = np.where(num > 0, tp / np.maximum(num, 1), np.nan)
    return PrevalenceCurve(
        thresholds=thresholds,
        recall=recall.astype(np.float64),
        fp_per_mm2=fp / area,
        num_figures=int(num[0]) if len(num) else 0,
        area_mm2=area,
        false_detections=fp.astype(np.int64),
    )


def density_table(records: Sequence[dict], fallback_mpp: float) -> Dict[str, Dict[str, float]]:
    """Mitotic figures per mm² of the labelled regions of MIDOG dataset dicts (each
    region's figures over its width × height at its ``mpp``, else ``fallback_mpp``):
    ``{"all": {...}, <tumor type>: {...}}`` with ``regions``, ``median``, ``mean``,
    ``q25``, ``q75`` and the same for the hard negatives (``hard_negative_median``)."""
    groups: Dict[str, list] = {"all": []}
    for r in records:
        if not is_labelled(r):
            continue
        mpp = float(r.get("mpp") or fallback_mpp)
        area = float(r["width"]) * float(r["height"]) * (mpp * 1e-3) ** 2
        cats = [a.get("category_id") for a in r.get("annotations", [])]
        row = (cats.count(MITOTIC_FIGURE) / area, cats.count(HARD_NEGATIVE) / area)
        groups["all"].append(row)
        groups.setdefault(str(r.get("tumor_type")), []).append(row)
    out = {}
    for name, rows in groups.items():
        if not rows:
            continue
        fig = np.array([r[0] for r in rows])
        neg = np.array([r[1] for r in rows])
        out[name] = {
            "regions": len(rows),
            "median": float(np.median(fig)),
            "mean": float(fig.mean()),
            "q25": float(np.percentile(fig, 25)),
            "q75": float(np.percentile(fig, 75)),
            "hard_negative_median": float(np.median(neg)),
        }
    return out


def _at_density(
    summary: Dict[str, Any],
    images: Sequence[ImagePoints],
    radius_um: float,
    thresholds: np.ndarray,
    density: Optional[float],
) -> None:
    """Add the numbers at real density to ``summary`` (one group's
    :func:`~.metrics.evaluate_points` keys), when every image carries its area."""
    areas = [i.area_mm2 for i in images]
    if not images or any(a is None for a in areas) or sum(areas) <= 0:
        return
    area = float(sum(areas))
    summary["area_mm2"] = area
    summary["figures_per_mm2"] = summary["num_gt"] / area
    summary["fp_per_mm2"] = summary["fp"] / area
    rho = operating_density(density, summary["figures_per_mm2"])
    summary["density"] = rho
    if summary["num_gt"] and rho > 0:
        summary["expected_f1"] = expected_f1(summary["recall"], summary["fp_per_mm2"], rho)
        curve = prevalence_curve(images, radius_um=radius_um, thresholds=thresholds)
        threshold, f1 = curve.best_threshold(rho)
        summary["density_f1"], summary["density_threshold"] = f1, threshold
    else:
        summary["expected_f1"] = summary["density_threshold"] = summary["density_f1"] = math.nan


def evaluate_at_density(
    images: Sequence[ImagePoints],
    radius_um: float = DEFAULT_RADIUS_UM,
    threshold: Optional[float] = None,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
    box_half_um: float = AP_BOX_HALF_UM,
    density: Optional[float] = None,
) -> Dict[str, Any]:
    """:func:`~.metrics.evaluate_points` plus, for the set and each tumor type, when every
    image carries ``area_mm2``, the numbers at real density: ``area_mm2``,
    ``figures_per_mm2`` (the set's own density), ``fp_per_mm2`` at ``threshold``,
    ``density`` (:func:`operating_density` of ``density``: None MIDOG++'s median, 0 the
    set's own), ``expected_f1`` at ``threshold`` and ``density_threshold``/``density_f1``,
    the sweep threshold with the best expected F1 there
    (:meth:`PrevalenceCurve.best_threshold`). At the set's own density the expected F1
    equals ``f1`` and ``density_threshold`` is ``best_threshold``."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    scored = [i.scored(radius_um) for i in images]
    result = evaluate_points(scored, radius_um, threshold, thresholds, box_half_um)
    _at_density(result, scored, radius_um, thresholds, density)
    tumors: Dict[str, List[ImagePoints]] = {}
    for image in scored:
        tumors.setdefault(image.tumor, []).append(image)
    for tumor, group in tumors.items():
        _at_density(result["per_tumor"][tumor], group, radius_um, thresholds, density)
    result["per_tumor"] = result.pop("per_tumor")  # last, as the files have always had it
    return result
