#!/usr/bin/env python
"""Speed of MIDOG scoring and seam merging (figures quoted in docs/evaluation.md).

    .venv/bin/python benchmarks/bench_midog_scoring.py [--repeats 5]

Prints medians over ``--repeats`` runs, as a markdown table.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from midog_d2.evaluation import (  # noqa: E402
    ImagePoints,
    ap50_points,
    count_matches,
    evaluate_points,
    evaluate_prediction_file,
    sweep_thresholds,
)
from midog_d2.evaluation.metrics import SWEEP_THRESHOLDS  # noqa: E402
from midog_d2.inference import suppress_close_points  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def synthetic_images(n_images=100, n_pred=200, n_gt=20, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        gt = rng.uniform(0, 7000, (n_gt, 2))
        near = gt[: n_gt * 3 // 4] + rng.normal(0, 10, (n_gt * 3 // 4, 2))
        pred = np.concatenate([near, rng.uniform(0, 7000, (n_pred - len(near), 2))])
        images.append(ImagePoints(gt, pred, rng.uniform(0, 1, n_pred), mpp=0.25, tumor=str(i % 5)))
    return images


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rows = []
    images = synthetic_images()

    def naive():
        for t in SWEEP_THRESHOLDS:
            for im in images:
                count_matches(im, 7.5, t)

    rows.append(
        (
            "F1 sweep, 100 thresholds (exact, memoised)",
            "100 images x 200 predictions",
            median_time(lambda: sweep_thresholds(images), args.repeats),
        )
    )
    rows.append(
        (
            "F1 sweep, naive: matching rerun per threshold",
            "100 images x 200 predictions",
            median_time(naive, args.repeats),
        )
    )
    rows.append(
        (
            "AP50 on points",
            "100 images x 200 predictions",
            median_time(lambda: ap50_points(images), args.repeats),
        )
    )
    rows.append(
        (
            "evaluate_points (all metrics + 5 tumors)",
            "100 images x 200 predictions",
            median_time(lambda: evaluate_points(images, threshold=0.5), args.repeats),
        )
    )

    rng = np.random.default_rng(0)
    n = (
        88 * 100
    )  # a 7000 x 5000 image: 16 x 11 tiles of 512 px at stride 460, up to 100 detections each
    centres = rng.uniform(0, [7000, 5000], (n, 2))
    scores = rng.uniform(0, 1, n)
    classes = np.zeros(n, dtype=np.int64)
    rows.append(
        (
            "seam merging (suppress_close_points, 25 px)",
            f"{n} detections, one image",
            median_time(
                lambda: suppress_close_points(centres, scores, classes, 25.0), args.repeats
            ),
        )
    )

    gt = SHARED / "data" / "MIDOGpp.json"
    if gt.is_file():
        data = json.loads(gt.read_text())
        preds = [
            {
                "image_id": a["image_id"],
                "category_id": 0,
                "bbox": [a["bbox"][0] + 3, a["bbox"][1], 50, 50],
                "score": float(s),
            }
            for a, s in zip(data["annotations"], rng.uniform(0, 1, len(data["annotations"])))
        ]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "coco_instances_results.json")
            with open(path, "w") as f:
                json.dump(preds, f)
            rows.append(
                (
                    "evaluate_prediction_file (CLI path, incl. JSON loading)",
                    f"MIDOG++: 553 images, {len(preds)} predictions",
                    median_time(
                        lambda: evaluate_prediction_file(gt, path, threshold=0.5),
                        max(1, args.repeats // 2),
                    ),
                )
            )

    print(f"| what | data | median (s), {args.repeats} runs |\n|---|---|---|")
    for what, data_desc, t in rows:
        print(f"| {what} | {data_desc} | {t:.3f} |")


if __name__ == "__main__":
    main()
