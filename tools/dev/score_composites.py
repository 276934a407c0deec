#!/usr/bin/env python
"""Score a trained model on a fold's composite ROIs (tools/dev/build_composites.py) the way a
slide is read: whole 2048-px regions at MIDOG++'s median density, through the product's
evaluation path (``midog_d2.engine.protocol.score_dataset``: the TiledPredictor and
MidogEvaluator that ``train_net.py --eval-only`` runs), the threshold chosen on the fold's
validation composites (``calibrate``, as ``tools/calibrate_threshold.py``) and carried to the
test sets:

    .venv/bin/python tools/dev/score_composites.py --run output/curve/bn_cs2_seed0 \\
        --weights model_0000999.pth --fold heldout_cs2 --out docs/study/curve.jsonl --label 1k

Appends one JSON row: per set F1 counted directly (with a bootstrap interval over ROIs),
recall (Wilson interval), precision, false detections per mm² with their Poisson interval,
split by context and tumor tissue, AP50, the seconds and Mpx/s of inference; the stored
threshold record is written beside the weights. ``--sets`` picks the test sets,
``--max-rois`` scores the first ROIs of each test set only, ``--val-rois`` chooses the
threshold on the first validation ROIs only (quicker points, said so in the row).
``--second-stage DIR`` scores a learning-curve point of the whole recipe: the checkpoint's
detector with a second stage trained on it now (saved in DIR).
"""

import argparse
import json
import math
import os
import sys
import time

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron2.data import DatasetCatalog  # noqa: E402

from midog_d2.checkpoint import load_model_weights, load_threshold  # noqa: E402
from midog_d2.data.register import register_midog  # noqa: E402
from midog_d2.engine import MidogTrainer  # noqa: E402
from midog_d2.engine.protocol import calibrate, score_dataset  # noqa: E402
from midog_d2.engine.runs import begin_run, fit_run  # noqa: E402
from midog_d2.evaluation.metrics import greedy_match  # noqa: E402
from midog_d2.evaluation.prevalence import rate_interval  # noqa: E402
from midog_d2.evaluation.scoring import image_points  # noqa: E402
from midog_d2.inference import prepare_for_inference  # noqa: E402
from midog_dev import setup_datagen_cfg  # noqa: E402
from midog_dev.placed_crops import evaluate_placed, predict_points  # noqa: E402
from midog_dev.scanner_study import RealFigureTrainer, domain_evaluation_sets  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96):
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def per_roi(
    dataset: str,
    json_file: str,
    points_file: str,
    threshold: float,
    radius_um: float,
    limit: int,
    dont_care_radius_um: float,
):
    """Per ROI: TP, FP, FN, FP in tumor tissue, scored area, scored tumor area (mm²: outside
    the don't-care zones)."""
    with open(points_file, encoding="utf-8") as f:
        points = json.load(f)
    with open(json_file, encoding="utf-8") as f:
        windows = {im["file_name"]: im.get("tumor_windows", []) for im in json.load(f)["images"]}
    rows = []
    for d in DatasetCatalog.get(dataset)[: limit or None]:
        mpp = 0.25
        pts = points.get(os.path.basename(d["file_name"]), {}).get("points", [])
        xy = np.array([p["point"][:2] for p in pts]).reshape(-1, 2) * 1000.0 / mpp
        sc = np.array([p["probability"] for p in pts])
        img = image_points(d, xy, sc, mpp, ignore_radius_um=dont_care_radius_um).scored(radius_um)
        alive = img.scores >= threshold
        match = greedy_match(img.gt, np.where(alive[:, None], img.pred, np.inf), radius_um / mpp)
        fp_mask = alive.copy()
        fp_mask[match[match >= 0]] = False
        wins = np.array(windows[os.path.basename(d["file_name"])] or np.zeros((0, 4)))
        wins = wins.reshape(-1, 4)
        fpx = img.pred[fp_mask]
        in_tumor = np.zeros(len(fpx), dtype=bool)
        for x0, y0, x1, y1 in wins:
            in_tumor |= (fpx[:, 0] >= x0) & (fpx[:, 0] < x1) & (fpx[:, 1] >= y0) & (fpx[:, 1] < y1)
        px2 = (mpp * 1e-3) ** 2
        tumor_area = float(((wins[:, 2] - wins[:, 0]) * (wins[:, 3] - wins[:, 1])).sum()) * px2
        # the don't-care zones lie in tumor tissue: what is scored there is the rest
        full_area = float(d["width"]) * float(d["height"]) * px2
        tumor_area = max(0.0, tumor_area - (full_area - img.area_mm2))
        tp = int((match >= 0).sum())
        rows.append([tp, int(fp_mask.sum()), len(img.gt) - tp, int(in_tumor.sum()),
                     img.area_mm2, tumor_area])  # fmt: skip
    return np.array(rows, dtype=np.float64)


def summarize(rows: np.ndarray, rng) -> dict:
    tp, fp, fn, fp_t, area, t_area = rows.sum(axis=0)
    c_area = area - t_area
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    boot = []
    for _ in range(2000):
        s = rows[rng.integers(len(rows), size=len(rows))].sum(axis=0)
        boot.append(2 * s[0] / max(2 * s[0] + s[1] + s[2], 1))
    rate = rate_interval(int(fp), float(area))
    return {
        "rois": len(rows),
        "figures": int(tp + fn),
        "area_mm2": round(float(area), 3),
        "F1": f1,
        "F1_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "recall": tp / max(tp + fn, 1),
        "recall_ci95": list(wilson(int(tp), int(tp + fn))),
        "precision": tp / max(tp + fp, 1),
        "TP": int(tp),
        "FP": int(fp),
        "FN": int(fn),
        "FP_per_mm2": rate[0],
        "FP_per_mm2_ci95": [rate[1], rate[2]],
        "FP_per_mm2_tumor": float(fp_t / t_area) if t_area else float("nan"),
        "FP_per_mm2_context": float((fp - fp_t) / c_area) if c_area else float("nan"),
        "tumor_area_mm2": round(float(t_area), 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True)
    ap.add_argument("--weights", default="model_final.pth")
    ap.add_argument("--config-file", default="", help="default: the run's config.yaml")
    ap.add_argument("--fold", required=True)
    ap.add_argument("--composites", default="datasets/composites")
    ap.add_argument("--sets", nargs="+", default=["held_out", "in_domain"])
    ap.add_argument("--max-rois", type=int, default=0, help="score the first ROIs of each set")
    ap.add_argument(
        "--val-rois",
        type=int,
        default=0,
        help="choose the threshold on the first ROIs of the validation set only",
    )
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="score at this threshold, not one chosen on the validation set (for "
        "threshold-free comparisons: AP50 and the best F1)",
    )
    ap.add_argument(
        "--windows",
        action="store_true",
        help="also score each set's scanners' test figures in 256-px windows at "
        "the same threshold (the canvas-against-composite recall parity; needs a config with "
        "the development data's DATASETS.REAL_FIGURES, e.g. configs/dev/Reference-CPU-R18.yaml)",
    )
    ap.add_argument("--second-stage", default="",
                    help="train the recipe's second stage on --weights' detector into this "
                         "folder first, and score that")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label", default="")
    ap.add_argument("--output-dir", default="", help="evaluator files (default: the run's)")
    ap.add_argument("--out", default="", help="JSONL file the row is appended to")
    ap.add_argument("opts", nargs="*", help="config overrides (e.g. TEST.TILE.SIZE 2048)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    weights = os.path.join(args.run, args.weights)
    cfg = setup_datagen_cfg(
        args.config_file or os.path.join(args.run, "config.yaml"),
        ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
         *args.opts],
    )  # fmt: skip
    if args.second_stage:
        # A learning-curve point of the whole recipe: the checkpoint's detector, frozen, and
        # a second stage trained on its candidates, as train_model does after the last one.
        if not cfg.MODEL.SECOND_STAGE.ON:
            raise SystemExit("--second-stage needs MODEL.SECOND_STAGE.ON in the config")
        os.makedirs(args.second_stage, exist_ok=True)
        begin_run(cfg, args.second_stage)
        model, _, _ = fit_run(cfg, RealFigureTrainer, args.second_stage, reused=weights)
        weights = os.path.join(args.second_stage, "model_final.pth")
    else:
        model = MidogTrainer.build_model(cfg)
        load_model_weights(cfg, model, weights)
    model.eval()
    prepare_for_inference(model, cfg)
    folder = os.path.join(args.composites, args.fold)
    names = {}
    for s in ["val", *args.sets]:
        name = f"composites_{args.fold}_{s}"
        json_file = os.path.join(folder, f"{s}.json")
        limit = args.val_rois if s == "val" else args.max_rois
        if limit:
            with open(json_file, encoding="utf-8") as f:
                doc = json.load(f)
            keep = {im["id"] for im in doc["images"][:limit]}
            register_midog(name, json_file, folder, image_ids=sorted(keep))
        else:
            register_midog(name, json_file, folder)
        names[s] = (name, json_file)
    row = {"run": args.run, "weights": args.weights, "label": args.label, "fold": args.fold,
           "dont_care_radius_um": cfg.TEST.MIDOG.DONT_CARE_RADIUS_UM,
           "max_rois": args.max_rois, "val_rois": args.val_rois,
           "second_stage": bool(args.second_stage), "opts": args.opts, "sets": {}}  # fmt: skip
    record = load_threshold(weights)
    t = time.perf_counter()
    n_val = len(DatasetCatalog.get(names["val"][0]))
    if args.threshold is not None:
        record = {"threshold": args.threshold, "rule": "given (--threshold)"}
    elif record is None or (
        record.get("dataset"),
        record.get("num_images"),
        record.get("dont_care_radius_um"),
    ) != (names["val"][0], n_val, cfg.TEST.MIDOG.DONT_CARE_RADIUS_UM):
        val_dir = os.path.join(args.output_dir or args.run, "composites", args.label or "eval")
        record = calibrate(cfg, model, names["val"][0], weights, os.path.join(val_dir, "val"))
    row["calibration"] = {k: record.get(k) for k in ("threshold", "rule", "expected_f1",
                          "best_f1_threshold", "num_images")}  # fmt: skip
    row["calibration"]["seconds"] = round(time.perf_counter() - t, 1)
    threshold = float(record["threshold"])
    rng = np.random.default_rng(0)
    for s in args.sets:
        out_dir = os.path.join(args.output_dir or args.run, "composites", args.label or "eval", s)
        t = time.perf_counter()
        res = score_dataset(cfg, model, names[s][0], out_dir, threshold)["midog"]
        sec = time.perf_counter() - t
        rows = per_roi(*names[s], os.path.join(out_dir, "midog_points.json"), threshold,
                       cfg.TEST.MIDOG.RADIUS_UM, args.max_rois,
                       cfg.TEST.MIDOG.DONT_CARE_RADIUS_UM)  # fmt: skip
        summary = summarize(rows, rng)
        assert summary["TP"] == res["TP"] and summary["FP"] == res["FP"], (summary, res)
        px = summary["area_mm2"] / (0.25e-3) ** 2
        summary.update(AP50=res["AP50_points"], best_F1=res["best_F1"], seconds=round(sec, 1),
                       mpx_per_s=round(px / 1e6 / sec, 3))  # fmt: skip
        row["sets"][s] = summary
        print(f"{s}: F1 {summary['F1']:.3f} {np.round(summary['F1_ci95'], 3).tolist()} recall "
              f"{summary['recall']:.3f} FP/mm² {summary['FP_per_mm2']:.2f} (tumor "
              f"{summary['FP_per_mm2_tumor']:.2f}, context {summary['FP_per_mm2_context']:.2f}) "
              f"at {threshold:.2f}; {sec:.0f} s, {summary['mpx_per_s']:.2f} Mpx/s")  # fmt: skip
    if args.windows:
        # The study's windows: each figure in a 256-px canvas of evaluation context. Same
        # scanners as the composites' sets (held_out: the held-out scanner's test crops; the
        # composites also use its validation crops).
        placed = domain_evaluation_sets(cfg, seed=0, size=256)
        for s in args.sets:
            samples = placed["in_domain" if s == "in_domain" else "held_out"]
            det = predict_points(model, [p.image for p in samples], cfg.INPUT.FORMAT)
            g = evaluate_placed(samples, det, threshold)["all"]
            row["sets"][s]["windows"] = {"figures": g["crops"], "recall": g["recall"],
                                         "precision": g["precision"], "F1": g["f1"]}  # fmt: skip
            print(
                f"{s} in windows: recall {g['recall']:.3f} ({g['crops']} figures) against "
                f"{row['sets'][s]['recall']:.3f} on composites, at {threshold:.2f}"
            )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
