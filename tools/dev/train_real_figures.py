#!/usr/bin/env python
"""Train on the real mitotic-figure crops composed into canvases (midog_dev.canvas).

    OMP_NUM_THREADS=1 nice -n 19 python tools/dev/train_real_figures.py \
        --config-file configs/dev/RealFigures-CPU-R18.yaml
    # the shortcut control: the same training with the box on a random other nucleus
    ... --config-file configs/dev/RealFigures-CPU-R18.yaml INPUT.CANVAS.CONTROL True \
        OUTPUT_DIR output/real_figures_cpu_r18_control
Score a checkpoint with tools/dev/eval_real_figures.py. As tools/train_net.py
(midog_d2.engine.runs.train_model): with MODEL.SECOND_STAGE.ON the second stage follows, and
with TEST.MIDOG.CALIBRATION_DATASET (e.g. a fold's validation composites, registered by
DATASETS.MIDOG.EXTRA) the threshold is chosen there; --resume continues a long training.
"""

import os
import sys

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from detectron2.engine import default_argument_parser, launch

from midog_d2.engine.runs import train_model
from midog_dev import setup_datagen_cfg
from midog_dev.scanner_study import RealFigureTrainer


def main(args):
    cfg = setup_datagen_cfg(args.config_file, args.opts, args)
    return train_model(cfg, RealFigureTrainer(cfg), resume=args.resume)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
