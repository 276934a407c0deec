"""One study run on MIDOG data (``tools/run_study.py``): the product's train, calibrate,
score path on whole images."""

import logging
import os
from typing import Any, Dict, Sequence

from .runner import reused_weights
from .spec import StudyRun

logger = logging.getLogger(__name__)


def _midog_scores(result: Dict[str, Any]) -> Dict[str, Any]:
    """The study's names for one dataset's evaluator results (fractions; COCO AP50 in %)."""
    m = result.get("midog", {})
    out = {
        "f1": m.get("F1"),
        "precision": m.get("precision"),
        "recall": m.get("recall"),
        "threshold": m.get("threshold"),
        "best_f1": m.get("best_F1"),
        "best_threshold": m.get("best_threshold"),
        "ap50": m.get("AP50_points"),
        "num_images": m.get("num_images"),
        "fp_per_mm2": m.get("FP_per_mm2"),
        "figures_per_mm2": m.get("figures_per_mm2"),
        "expected_f1": m.get("expected_F1"),
        "density_threshold": m.get("density_threshold"),
        "density_f1": m.get("density_F1"),
    }
    if "bbox" in result:
        out["coco_ap50"] = result["bbox"].get("AP50")
    return out


def train_and_evaluate(
    config_file: str,
    run: StudyRun,
    output_dir: str,
    threads: int = 0,
    extra_opts: Sequence[str] = (),
) -> Dict[str, Any]:
    """
    One study run on MIDOG data: ``config_file`` + ``run.opts`` + ``extra_opts``, trained by
    :class:`~midog_d2.engine.MidogTrainer` into ``output_dir``, then scored by the domain
    protocol (:func:`midog_d2.engine.protocol.evaluate_domains`): the first
    ``DATASETS.TEST`` entry (in-domain validation) fixes the threshold, stored beside
    ``model_final.pth``; ``in_domain`` holds its scores, ``held_out`` those of the second
    entry (the held-out domain) and ``datasets`` every entry's. ``threads`` > 0 sets torch's
    thread count. A run with a base (``reuse``) loads its trained weights instead of
    training (:func:`reused_weights`); with ``MODEL.SECOND_STAGE.ON`` the second stage is
    trained after the detector (:func:`midog_d2.engine.runs.fit_run`).
    """
    import torch

    from ...engine.protocol import calibration_record, evaluate_domains
    from ...engine.runs import train_calibrate_score
    from ...engine.trainer import MidogTrainer, setup_cfg

    if threads > 0:
        torch.set_num_threads(threads)
    os.makedirs(output_dir, exist_ok=True)
    cfg = setup_cfg(config_file, list(run.opts) + list(extra_opts) + ["OUTPUT_DIR", output_dir])
    if len(cfg.DATASETS.TEST) < 2:
        raise ValueError(
            f"{config_file}: a study run needs DATASETS.TEST = (in-domain validation, held-out "
            f"domain, ...), got {tuple(cfg.DATASETS.TEST)}"
        )
    val, held = cfg.DATASETS.TEST[0], cfg.DATASETS.TEST[1]

    def score(cfg, model):
        results = evaluate_domains(cfg, model, os.path.join(output_dir, "inference"))
        scores = {name: _midog_scores(r) for name, r in results.items()}
        threshold, record = calibration_record(cfg, results[val]["midog"], val)
        out = {"threshold": threshold, "in_domain": scores[val], "held_out": scores[held]}
        return {**out, "datasets": scores}, threshold, record

    reused = reused_weights(run, output_dir)
    cfg, result = train_calibrate_score(cfg, MidogTrainer, output_dir, score, reused)
    return {**result, "iterations": cfg.SOLVER.MAX_ITER}
