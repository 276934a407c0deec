#!/usr/bin/env python
"""Mine imposters (hard negatives) with a trained model and write them into a copy of the
annotation file, for the next training round.

    python tools/mine_imposters.py --config-file configs/... --output MIDOGpp.mined.json \\
        [--dataset midog_train] [--threshold 0.5] MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file configs/... DATASETS.MIDOG.JSON_FILE MIDOGpp.mined.json

Runs the model over the whole images of ``--dataset`` (default ``DATASETS.TRAIN[0]``; tiled,
as evaluation runs it) and keeps the detections scoring ``>= --threshold`` (default: the
operating threshold stored with the weights, ``tools/calibrate_threshold.py``) that lie
farther than ``TEST.MIDOG.RADIUS_UM`` from every annotated cell, mitotic figure or hard
negative, and from a higher-scoring one. Each becomes a "not mitotic figure" annotation of
``DATASETS.MIDOG.JSON_FILE``, flagged ``"mined": true`` with its ``score`` and ``round``;
the experts' annotations are copied unchanged. Training on the output samples them as hard
negatives (``INPUT.PATCH.P_HARD_NEGATIVE``): anchors on them learn "background".
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import json
import sys

from midog_d2.checkpoint import WeightsError, resolve_score_threshold
from midog_d2.data.imposters import MINED_KEY, add_mined_annotations
from midog_d2.engine import setup_cfg
from midog_d2.engine.mining import mine_dataset
from midog_d2.engine.trainer import add_trained_model_arguments, trained_model_and_dataset
from midog_d2.fileio import atomic_write_text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_trained_model_arguments(ap, "images to mine (default: DATASETS.TRAIN[0])")
    ap.add_argument("--output", required=True, help="annotation file to write (MIDOG JSON)")
    ap.add_argument("--threshold", type=float, default=None, help="score of a confident detection")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (MODEL.WEIGHTS ...)")
    args = ap.parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    try:
        model, dataset = trained_model_and_dataset(cfg, args, "TRAIN", "mine with")
        threshold = args.threshold
        if threshold is None:
            threshold, source = resolve_score_threshold(cfg)
            print(f"mining at threshold {threshold:.3f} ({source})", file=sys.stderr)
        with open(cfg.DATASETS.MIDOG.JSON_FILE, encoding="utf-8") as f:
            data = json.load(f)
        mined = mine_dataset(cfg, model, dataset, threshold)
        rounds = [a.get("round", 0) for a in data.get("annotations", []) if a.get(MINED_KEY)]
        out = add_mined_annotations(
            data, mined, cfg.DATASETS.MIDOG.JSON_FILE, round_=max(rounds, default=0) + 1
        )
    except (WeightsError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_text(args.output, json.dumps(out))
    n = sum(len(s) for _, s in mined.values())
    print(json.dumps({"images": len(mined), "imposters": n, "threshold": threshold,
                      "output": args.output}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
