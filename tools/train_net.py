#!/usr/bin/env python
"""Train or evaluate midog-d2 models with Detectron2's conventions.

    python tools/train_net.py --config-file configs/Base-MultiTask-RetinaNet.yaml \
        DATASETS.MIDOG.JSON_FILE datasets/midog++/MIDOGpp.json \
        DATASETS.MIDOG.IMAGE_ROOT datasets/midog++/images
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 8
    python tools/train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes

With ``MODEL.SECOND_STAGE.ON`` one command trains the whole model: the detector, then the
second stage on the detector's candidates in the training inputs (both saved in
``OUTPUT_DIR/model_final.pth``), then, with ``TEST.MIDOG.CALIBRATION_DATASET`` (a whole-ROI
validation set), the operating threshold stored beside it; ``DATASETS.TEST`` is then scored
with both (``midog_d2.engine.runs.train_model``). ``--resume`` continues from the last
checkpoint on the same schedule and skips what is already done.
``tools/train_second_stage.py`` retrains a second stage alone.

``--eval-only`` refuses weights that leave part of the model unloaded (missing or
differently shaped parameters would be scored at their random initialisation) unless
``--allow-partial-weights`` is given.
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import logging
import os

import torch

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

from midog_d2.checkpoint import (
    MidogCheckpointer,
    WeightsError,
    last_good_checkpoint,
    load_model_weights,
)
from midog_d2.engine import MidogTrainer, setup_cfg
from midog_d2.engine.runs import train_model
from midog_d2.inference import prepare_for_inference

logger = logging.getLogger("midog_d2.train_net")


def main(args):
    try:
        cfg = setup_cfg(args.config_file, args.opts, args)
    except (ValueError, FileNotFoundError) as e:  # config and data errors name their file
        raise SystemExit(f"error: {e}")
    except OSError as e:  # default_setup creates OUTPUT_DIR and writes config.yaml in it
        raise SystemExit(f"error: cannot write the output folder (OUTPUT_DIR): {e}")
    if comm.get_world_size() > 1 and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        # CPU processes (gloo) share the cores instead of each taking all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    if args.eval_only:
        model = MidogTrainer.build_model(cfg)
        path = cfg.MODEL.WEIGHTS
        if args.resume:
            tagged = MidogCheckpointer(model, cfg.OUTPUT_DIR)
            if tagged.has_checkpoint():
                path = tagged.get_checkpoint_file()
        try:
            load_model_weights(cfg, model, path, allow_partial=args.allow_partial_weights)
        except (WeightsError, FileNotFoundError) as e:
            raise SystemExit(f"error: --eval-only: {e}")
        prepare_for_inference(model, cfg)  # BatchNorm folded, channels-last: same scores
        return MidogTrainer.test(cfg, model)
    try:
        trainer = MidogTrainer(cfg)
    except (ValueError, FileNotFoundError) as e:
        # the data's own errors name the file and the problem; the traceback goes to the log
        logger.debug("cannot build the trainer", exc_info=True)
        raise SystemExit(f"error: {e}")
    try:
        return train_model(cfg, trainer, resume=args.resume)
    except FloatingPointError as e:
        # Detectron2 stops before the optimizer step of a non-finite loss, and the
        # checkpointer refuses non-finite weights: the last checkpoint is a good one.
        first = str(e).strip().splitlines()[0]
        raise SystemExit(
            f"error: training stopped at iteration {trainer.iter}: {first}; resume from "
            f"{last_good_checkpoint(cfg.OUTPUT_DIR)} with --resume (a lower SOLVER.BASE_LR "
            "or SOLVER.CLIP_GRADIENTS may keep it finite)"
        )


def check_processes(args) -> None:
    """One sentence, before any process starts, when --num-gpus cannot be honoured."""
    if args.num_gpus <= 1:
        return
    try:
        device = str(setup_cfg(args.config_file, args.opts).MODEL.DEVICE)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.startswith("cuda") and gpus < args.num_gpus:
        raise SystemExit(
            f"error: --num-gpus {args.num_gpus} with MODEL.DEVICE {device}, but this machine "
            f"has {gpus} CUDA GPU(s); to train with {args.num_gpus} CPU processes (gloo) add "
            "MODEL.DEVICE cpu"
        )


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="--eval-only with weights that leave parameters at their initialisation",
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    check_processes(args)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
