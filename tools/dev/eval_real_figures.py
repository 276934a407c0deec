#!/usr/bin/env python
"""Score a model on held-out real figures placed in unseen real H&E context.

    python tools/dev/eval_real_figures.py --config-file configs/dev/RealFigures-CPU-R18.yaml \
        MODEL.WEIGHTS output/real_figures_cpu_r18/model_final.pth
    python tools/dev/eval_real_figures.py --config-file configs/dev/RealFigures-CPU-R18.yaml \
        --baseline-only

The score threshold is the one with the best F1 on the placed *validation* crops; the
figures reported are on the placed *test* crops (and the evaluation context tiles alone):
the protocol is :func:`midog_dev.real_figure_eval.evaluate_real_figure_model`.
Writes ``--output`` (JSON) and prints it.
"""

import argparse
import json
import os
import sys

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch

from midog_d2.checkpoint import MidogCheckpointer
from midog_d2.constants import DEFAULT_MPP
from midog_d2.engine import MidogTrainer
from midog_dev import setup_datagen_cfg
from midog_dev.real_figure_eval import evaluate_real_figure_model


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", required=True)
    ap.add_argument(
        "--baseline-only", action="store_true", help="only the darkest-blob and chance baselines"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the placed-crop sets")
    ap.add_argument("--size", type=int, default=256, help="side of each placed-crop canvas (px)")
    ap.add_argument(
        "--limit", type=int, default=0, help="use only the first N crops of each split (0: all)"
    )
    ap.add_argument(
        "--mpp", type=float, default=DEFAULT_MPP, help="µm/px of the context tiles (per mm²)"
    )
    ap.add_argument(
        "--output", default="", help="JSON file (default: OUTPUT_DIR/placed_crops.json)"
    )
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cfg = setup_datagen_cfg(args.config_file, args.opts)
    model = None
    if not args.baseline_only:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        model = MidogTrainer.build_model(cfg)
        MidogCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    result = evaluate_real_figure_model(cfg, model, args.seed, args.size, args.limit, args.mpp)
    out = args.output or os.path.join(cfg.OUTPUT_DIR, "placed_crops.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
