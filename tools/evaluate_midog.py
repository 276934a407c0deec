#!/usr/bin/env python
"""Score predictions against MIDOG ground truth with the challenge's protocol.

    python tools/evaluate_midog.py --ground-truth MIDOGpp.json \\
        --predictions output/inference/coco_instances_results.json [--threshold 0.64] \\
        [--radius-um 7.5] [--mpp 0.25] [--use-point-names] [--output metrics.json]

``--predictions`` is Detectron2's ``coco_instances_results.json`` or MIDOG "Multiple
points" JSON (one file, a file mapping image names/ids to point objects, or a
directory of per-image files); see midog_d2.fileio.points and
docs/evaluation.md. Never-annotated images of the ground truth are not scored.
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import json
import sys
from pathlib import Path

from midog_d2.evaluation import evaluate_prediction_file, format_results_table
from midog_d2.fileio import json_safe

SUMMARY_KEYS = (
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
    "threshold",
    "best_f1",
    "best_threshold",
    "ap50",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ground-truth", required=True, help="MIDOG / MIDOG++ annotation JSON")
    p.add_argument("--predictions", required=True, help="prediction JSON file or directory")
    p.add_argument("--radius-um", type=float, default=7.5, help="hit radius in µm (default 7.5)")
    p.add_argument(
        "--mpp", type=float, default=0.25, help="µm per pixel of the images (default 0.25)"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="score threshold for TP/FP/FN/F1 (default: every prediction)",
    )
    p.add_argument(
        "--use-point-names",
        action="store_true",
        help="without --threshold, count only the points a MIDOG points file names "
        "'mitotic figure' (the challenge's rule)",
    )
    p.add_argument(
        "--pred-category-id",
        type=int,
        default=None,
        help="category_id of the mitotic figure in a coco results file with several classes",
    )
    p.add_argument("--output", default=None, help="write the metrics JSON here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = evaluate_prediction_file(
        args.ground_truth,
        args.predictions,
        radius_um=args.radius_um,
        mpp=args.mpp,
        threshold=args.threshold,
        pred_category_id=args.pred_category_id,
        use_point_names=args.use_point_names,
    )
    # Whole ROIs: their own density; the rates carry the result to 4.4 figures per mm².
    density = ("figures_per_mm2", "fp_per_mm2", "expected_f1", "density_threshold")
    table = {"all": {k: result[k] for k in SUMMARY_KEYS + density if k in result}}
    for tumor, t in result["per_tumor"].items():
        table[tumor] = {k: t[k] for k in ("tp", "fp", "fn", "f1", "best_f1", "ap50")}
    print(format_results_table(table))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(json_safe(result), f, indent=1)
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
