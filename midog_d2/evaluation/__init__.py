"""MIDOG scoring: point metrics (numpy), scoring at the mitotic density of real tissue, the
scored-points builder and Detectron2 evaluators. The domain protocol that uses them (threshold
chosen in-domain, applied to held-out domains) is :mod:`midog_d2.engine.protocol`."""

from .metrics import (
    ImagePoints,
    ap50_points,
    best_threshold,
    count_matches,
    evaluate_points,
    greedy_match,
    points_in_region,
    precision_recall_f1,
    roc_auc,
    sweep_thresholds,
)
from .prevalence import (
    PrevalenceCurve,
    evaluate_at_density,
    expected_f1,
    operating_density,
    prevalence_curve,
)
from .scoring import box_centres, evaluate_prediction_file, image_points
from .evaluator import (
    MidogEvaluator,
    MitoticCOCOEvaluator,
    build_midog_evaluators,
    format_results_table,
    register_mitotic_only,
)
