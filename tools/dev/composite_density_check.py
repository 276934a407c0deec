#!/usr/bin/env python
"""Check the expected F1 at real density against a direct count: composite ROIs of unseen
real tissue holding held-out real figures at a stated density, scored whole by the product's
evaluator (``midog_d2.engine.protocol.score_dataset``: tiled inference, MidogEvaluator).

    .venv/bin/python tools/dev/composite_density_check.py \\
        --run output/study/scanner-density-cpu/none__heldout_xr__seed0 --density 32.5

The run's own config, weights and stored (density) threshold; its held-out placed test crops
(``midog_dev.scanner_study.domain_evaluation_sets``) become the composites' figures
(``midog_dev.composites``), the rest of each composite is evaluation tissue. The
expected F1 combines the placed crops' recall and the evaluation tiles' false detections per
mm² at that threshold at the composites' own density (2Rρ / ((1 + R)ρ + f)); both come with
95 % intervals (bootstrap over composites; binomial recall and Poisson count for the
prediction). Writes ``<run>/composite_check_<density>.json``.
"""

import argparse
import json
import os
import sys

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import cv2
import numpy as np
import torch

from detectron2.utils.logger import setup_logger

from midog_d2.checkpoint import load_model_weights, load_threshold
from midog_d2.constants import MIDOG_CATEGORIES
from midog_d2.data import register_midog
from midog_d2.engine.protocol import score_dataset
from midog_d2.evaluation import ImagePoints, count_matches
from midog_d2.evaluation.prevalence import expected_f1
from midog_dev import setup_datagen_cfg
from midog_dev.canvas import context_tile_names
from midog_dev.composites import build_composites
from midog_dev.context import load_context_tiles
from midog_dev.placed_crops import CROP_MPP, placed_curve, predict_points
from midog_dev.scanner_study import RealFigureTrainer, domain_evaluation_sets, tile_false_detections


def write_composites(composites, out_dir: str) -> str:
    """PNG files and a MIDOG annotation file of the composites; returns the file."""
    os.makedirs(out_dir, exist_ok=True)
    images, anns = [], []
    for i, c in enumerate(composites):
        name = f"composite_{i:04d}.png"
        cv2.imwrite(os.path.join(out_dir, name), cv2.cvtColor(c.image, cv2.COLOR_RGB2BGR))
        h, w = c.image.shape[:2]
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h,
                       "tumor_type": "human breast cancer", "labelled": True})  # fmt: skip
        for x, y in c.figures:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "bbox": [x - 25, y - 25, x + 25, y + 25]})  # fmt: skip
    path = os.path.join(out_dir, "composites.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": anns, "categories": list(MIDOG_CATEGORIES)}, f)
    return path


def per_image_counts(points_file: str, composites, threshold: float) -> np.ndarray:
    """(N, 3) TP, FP, FN of each composite from the evaluator's challenge points file."""
    with open(points_file, encoding="utf-8") as f:
        points = json.load(f)
    rows = []
    for i, c in enumerate(composites):
        pts = points.get(f"composite_{i:04d}.png", {}).get("points", [])
        xy = np.array([p["point"][:2] for p in pts]).reshape(-1, 2) * 1000.0 / CROP_MPP
        scores = np.array([p["probability"] for p in pts])
        image = ImagePoints(c.figures, xy, scores, mpp=CROP_MPP)
        rows.append(count_matches(image, threshold=threshold))
    return np.array(rows, dtype=np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True, help="a study run's folder (config.yaml, weights)")
    ap.add_argument("--density", type=float, default=4.4, help="figures per mm² (4.4)")
    ap.add_argument("--max-crops", type=int, default=0, help="held-out crops used (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    setup_logger(name="midog_d2")
    torch.set_num_threads(args.threads)
    weights = os.path.join(args.run, "model_final.pth")
    cfg = setup_datagen_cfg(
        os.path.join(args.run, "config.yaml"), ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]
    )
    model = RealFigureTrainer.build_model(cfg)
    load_model_weights(cfg, model, weights)
    model.eval()
    threshold = float(load_threshold(weights)["threshold"])

    samples = domain_evaluation_sets(cfg, limit=args.max_crops)["held_out"]
    det = predict_points(model, [s.image for s in samples], cfg.INPUT.FORMAT)
    at = placed_curve(samples, det, [threshold]).at(threshold, args.density)
    tiles = tile_false_detections(model, cfg, {"f": threshold})
    n_false = int(round(tiles["f"] * tiles["area_mm2"]))

    _, eval_names = context_tile_names(cfg)
    context = load_context_tiles(cfg.DATASETS.REAL_FIGURES.TILE_DIR, eval_names)
    composites = build_composites(samples, context, args.density, seed=args.seed)
    out_dir = os.path.join(args.run, f"composites_{args.density:g}")
    name = f"composites_{args.density:g}"
    register_midog(name, write_composites(composites, out_dir), out_dir, mpp=CROP_MPP)
    run_cfg = cfg.clone()
    run_cfg.defrost()
    run_cfg.TEST.MIDOG.OPERATING_DENSITY = args.density
    run_cfg.TEST.TISSUE.ENABLED = False
    midog = score_dataset(run_cfg, model, name, out_dir, threshold)["midog"]

    rho = midog["figures_per_mm2"]
    predicted = expected_f1(at["recall"], tiles["f"], rho)
    rng = np.random.default_rng(0)
    counts = per_image_counts(os.path.join(out_dir, "midog_points.json"), composites, threshold)
    boot = []
    for _ in range(2000):
        tp, fp, fn = counts[rng.integers(len(counts), size=len(counts))].sum(axis=0)
        boot.append(2 * tp / max(2 * tp + fp + fn, 1))
    pred_boot = expected_f1(
        rng.binomial(len(samples), at["recall"], 2000) / len(samples),
        rng.poisson(max(n_false, 0), 2000) / tiles["area_mm2"],
        rho,
    )
    report = {
        "run": args.run,
        "threshold": threshold,
        "density_asked": args.density,
        "composites": len(composites),
        "composite_area_mm2": midog["area_mm2"],
        "figures": int(sum(len(c.figures) for c in composites)),
        "figures_per_mm2": rho,
        "direct": {k: midog[k] for k in ("F1", "recall", "precision", "TP", "FP", "FN",
                                          "FP_per_mm2")},  # fmt: skip
        "direct_f1_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "placed_recall": at["recall"],
        "placed_crops": len(samples),
        "tiles_fp_per_mm2": tiles["f"],
        "tiles_area_mm2": tiles["area_mm2"],
        "expected_f1": predicted,
        "expected_f1_ci95": [
            float(np.percentile(pred_boot, 2.5)),
            float(np.percentile(pred_boot, 97.5)),
        ],
    }
    path = os.path.join(args.run, f"composite_check_{args.density:g}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
