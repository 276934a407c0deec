"""The domain-generalisation protocol: the operating threshold is chosen where a user can
choose it (in-domain validation images) and carried unchanged to held-out domains, as a
MIDOG submission must (midog.md §2)."""

import os
from collections import OrderedDict
from typing import Dict, Optional

from torch import nn

from detectron2.config import CfgNode
from detectron2.evaluation import inference_on_dataset

from ..data.sampler import build_midog_test_loader
from ..inference.predictor import TiledPredictor
from .evaluator import build_midog_evaluators

__all__ = ["score_dataset", "evaluate_domains"]


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


def evaluate_domains(cfg: CfgNode, model: nn.Module, output_dir: str) -> Dict[str, dict]:
    """Scores on ``cfg.DATASETS.TEST``: the first (in-domain validation) fixes the
    operating threshold at its F1 optimum, the others are scored with it. Each dataset's
    files go to ``output_dir/<dataset>``."""
    val_name, *held_out = cfg.DATASETS.TEST
    results: Dict[str, dict] = OrderedDict()
    results[val_name] = score_dataset(cfg, model, val_name, os.path.join(output_dir, val_name))
    threshold = results[val_name]["midog"]["best_threshold"]
    for name in held_out:
        results[name] = score_dataset(cfg, model, name, os.path.join(output_dir, name), threshold)
    return results
