#!/usr/bin/env python
"""Choose the operating threshold on a validation split and store it with the weights.

    python tools/calibrate_threshold.py --config-file configs/... --dataset midog_val \\
        MODEL.WEIGHTS output/model_final.pth [TEST.MIDOG.OPERATING_DENSITY 2.7]

Scores the model on whole images of ``--dataset`` (tiled inference, MIDOG matching), takes
the threshold with the best F1 expected at ``TEST.MIDOG.OPERATING_DENSITY`` mitotic figures
per mm² (default 4.4, MIDOG++'s median; 0: the validation images' own density, i.e. their
plain best F1) from the recall and false detections per mm² measured there (the lowest
among equals) and writes it beside the weights, ``<weights>.threshold.json``, bound to the
weights' SHA-256, with the plain best-F1 threshold of the validation images
(``best_f1_threshold``) beside it. Evaluation (``train_net.py --eval-only``) then uses it
without a flag; ``TEST.MIDOG.SCORE_THRESHOLD x`` overrides it.
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import json
import sys

from midog_d2.checkpoint import WeightsError
from midog_d2.engine import setup_cfg
from midog_d2.engine.protocol import calibrate
from midog_d2.engine.trainer import add_trained_model_arguments, trained_model_and_dataset


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_trained_model_arguments(ap, "validation dataset (default: DATASETS.TEST[0])")
    ap.add_argument("--output-dir", default="", help="evaluator files (default: none written)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (MODEL.WEIGHTS ...)")
    args = ap.parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    try:
        model, dataset = trained_model_and_dataset(cfg, args, "TEST", "calibrate")
    except (ValueError, WeightsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(calibrate(cfg, model, dataset, cfg.MODEL.WEIGHTS, args.output_dir or None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
