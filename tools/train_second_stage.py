#!/usr/bin/env python
"""Train the second stage (a candidate classifier that re-scores the detector's detections)
on a trained detector, and save both in one checkpoint.

    python tools/train_second_stage.py --config-file CFG MODEL.WEIGHTS output/model_final.pth \\
        MODEL.SECOND_STAGE.ON True OUTPUT_DIR output/second_stage
    python tools/calibrate_threshold.py --config-file output/second_stage/config.yaml \\
        MODEL.WEIGHTS output/second_stage/model_second_stage.pth

The detector (``MODEL.WEIGHTS``; its ``second_stage`` weights may be missing, and are
replaced when present) stays frozen. Its candidates on ``MODEL.SECOND_STAGE.CANDIDATE_BATCHES``
batches of the training loader (``DATASETS.TRAIN``, the trainer's patches and augmentation)
are labelled by the ground truth, imposters against mitotic figures, and the classifier is
trained on them (``MODEL.SECOND_STAGE.*``, ``midog_d2.engine.second_stage``). Writes
``OUTPUT_DIR/model_second_stage.pth`` (detector and second stage) and ``config.yaml`` (the
config with the second stage on). Scores change: calibrate the threshold again.
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import json
import os
import sys

from detectron2.utils.env import seed_all_rng

from midog_d2.checkpoint import MidogCheckpointer, WeightsError, load_model_weights
from midog_d2.engine import MidogTrainer, setup_cfg
from midog_d2.engine.second_stage import train_second_stage
from midog_d2.fileio.atomic import atomic_write_text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", required=True)
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (MODEL.WEIGHTS ...)")
    args = ap.parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    if not cfg.MODEL.SECOND_STAGE.ON:
        print("error: MODEL.SECOND_STAGE.ON is False: nothing to train", file=sys.stderr)
        return 2
    # As Detectron2's default_setup: SEED >= 0 makes the candidates (the loader's draws) repeat.
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    model = MidogTrainer.build_model(cfg)
    try:
        load_model_weights(cfg, model, cfg.MODEL.WEIGHTS, untrained=("second_stage.",))
        stats = train_second_stage(cfg, model, iter(MidogTrainer.build_train_loader(cfg)))
    except (WeightsError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    MidogCheckpointer.from_config(cfg, model, cfg.OUTPUT_DIR).save("model_second_stage")
    atomic_write_text(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), cfg.dump())
    weights = os.path.join(cfg.OUTPUT_DIR, "model_second_stage.pth")
    print(json.dumps({**stats, "weights": weights}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
