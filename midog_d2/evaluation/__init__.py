"""MIDOG scoring: point metrics (numpy), Detectron2 evaluators, challenge file I/O."""

from .challenge_io import (
    evaluate_prediction_file,
    gt_points,
    instances_to_points_json,
    is_labelled,
    json_safe,
    load_coco_results,
    load_point_predictions,
    points_to_json,
    write_points_json,
)
from .midog_evaluator import (
    MidogEvaluator,
    MitoticCOCOEvaluator,
    build_midog_evaluators,
    format_results_table,
    register_mitotic_only,
)
from .midog_metrics import (
    ImagePoints,
    ap50_points,
    count_matches,
    evaluate_points,
    greedy_match,
    precision_recall_f1,
    roc_auc,
    sweep_thresholds,
)

__all__ = [
    "ImagePoints",
    "MidogEvaluator",
    "MitoticCOCOEvaluator",
    "ap50_points",
    "build_midog_evaluators",
    "count_matches",
    "evaluate_points",
    "evaluate_prediction_file",
    "format_results_table",
    "greedy_match",
    "gt_points",
    "instances_to_points_json",
    "is_labelled",
    "json_safe",
    "load_coco_results",
    "load_point_predictions",
    "points_to_json",
    "precision_recall_f1",
    "register_mitotic_only",
    "roc_auc",
    "sweep_thresholds",
    "write_points_json",
]
