"""The domain-generalisation protocol: the operating threshold is chosen where a user can
choose it (in-domain validation images, at the density of the tissue to be counted) and
carried unchanged to held-out domains, as a MIDOG submission must (midog.md §2)."""

import math
import os
from collections import OrderedDict
from typing import Dict, Optional, Tuple

from torch import nn

from detectron2.config import CfgNode
from detectron2.evaluation import inference_on_dataset

from ..checkpoint import save_threshold, threshold_record
from ..data.sampler import build_midog_test_loader
from ..evaluation.evaluator import build_midog_evaluators
from ..fileio import json_safe
from ..inference.predictor import TiledPredictor

__all__ = [
    "operating_threshold",
    "score_dataset",
    "evaluate_domains",
    "calibrate",
    "calibration_record",
    "store_calibration",
]


def operating_threshold(midog: Dict[str, float]) -> Tuple[float, str]:
    """The threshold a validation set's :class:`~.evaluator.MidogEvaluator` results choose,
    and which rule chose it: the best F1 expected at ``TEST.MIDOG.OPERATING_DENSITY``
    (``density_threshold``), or the plain best F1 when the images' areas are unknown."""
    t = midog.get("density_threshold")
    if t is not None and math.isfinite(t):
        return float(t), f"best F1 expected at {midog['density']:.3g} figures/mm²"
    return float(midog["best_threshold"]), "best F1 on the validation images"


def score_dataset(
    cfg: CfgNode,
    model: nn.Module,
    dataset_name: str,
    output_dir: Optional[str] = None,
    threshold: Optional[float] = None,
) -> Dict[str, dict]:
    """MIDOG and COCO scores of ``model`` on whole images of ``dataset_name`` (tiled
    inference), at ``threshold`` (default ``TEST.MIDOG.SCORE_THRESHOLD``); the evaluators'
    files go to ``output_dir``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = (dataset_name,)
    if threshold is not None:
        cfg.TEST.MIDOG.SCORE_THRESHOLD = float(threshold)
    loader = build_midog_test_loader(cfg, dataset_name)
    evaluator = build_midog_evaluators(cfg, dataset_name, output_dir)
    return inference_on_dataset(TiledPredictor(cfg, model, evaluation=True), loader, evaluator)


def calibrate(
    cfg: CfgNode,
    model: nn.Module,
    dataset_name: str,
    weights: str,
    output_dir: Optional[str] = None,
) -> Dict[str, object]:
    """Score ``model`` (whose weights are the file ``weights``) on whole images of the
    validation set ``dataset_name`` and :func:`store_calibration` (one process)."""
    midog = score_dataset(cfg, model, dataset_name, output_dir)["midog"]
    return store_calibration(cfg, midog, dataset_name, weights)


def calibration_record(
    cfg: CfgNode, midog: Dict[str, float], dataset_name: str
) -> Tuple[float, Dict[str, object]]:
    """The operating threshold a validation set's MIDOG scores choose
    (:func:`operating_threshold`) and its threshold record's fields
    (:func:`~midog_d2.checkpoint.threshold_record`): what every calibration on whole images
    stores, the calibration tool's, the one command's and the MIDOG study's."""
    threshold, rule = operating_threshold(midog)
    info = {
        "dataset": dataset_name,
        "rule": rule,
        "num_images": midog.get("num_images"),
        "density": midog.get("density"),
        "figures_per_mm2": midog.get("figures_per_mm2"),
        "expected_f1": midog.get("density_F1"),
        "best_f1": midog["best_F1"],
        "best_f1_threshold": midog["best_threshold"],
        "radius_um": cfg.TEST.MIDOG.RADIUS_UM,
        "dont_care_radius_um": cfg.TEST.MIDOG.DONT_CARE_RADIUS_UM,
    }
    return threshold, threshold_record(**json_safe(info))


def store_calibration(
    cfg: CfgNode, midog: Dict[str, float], dataset_name: str, weights: str
) -> Dict[str, object]:
    """:func:`calibration_record` stored beside ``weights`` (bound to their SHA-256). Returns
    the threshold, the record's fields and the file written."""
    threshold, record = calibration_record(cfg, midog, dataset_name)
    path = save_threshold(weights, threshold, **record)
    return json_safe({"threshold": threshold, **record, "file": path})


def evaluate_domains(cfg: CfgNode, model: nn.Module, output_dir: str) -> Dict[str, dict]:
    """Scores on ``cfg.DATASETS.TEST``: the first (in-domain validation) fixes the
    operating threshold (:func:`operating_threshold`), the others are scored with it. Each
    dataset's files go to ``output_dir/<dataset>``."""
    val_name, *held_out = cfg.DATASETS.TEST
    results: Dict[str, dict] = OrderedDict()
    results[val_name] = score_dataset(cfg, model, val_name, os.path.join(output_dir, val_name))
    threshold, _ = operating_threshold(results[val_name]["midog"])
    for name in held_out:
        results[name] = score_dataset(cfg, model, name, os.path.join(output_dir, name), threshold)
    return results
