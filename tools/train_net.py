#!/usr/bin/env python
"""Train or evaluate midog-d2 models with Detectron2's conventions.

    python tools/train_net.py --config-file configs/Base-MultiTask-RetinaNet.yaml \
        DATASETS.MIDOG.JSON_FILE datasets/midog++/MIDOGpp.json \
        DATASETS.MIDOG.IMAGE_ROOT datasets/midog++/images
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 8

``--eval-only`` refuses weights that leave part of the model unloaded (missing or
differently shaped parameters would be scored at their random initialisation) unless
``--allow-partial-weights`` is given.
"""

from detectron2.engine import default_argument_parser, launch

from midog_d2.checkpoint import MidogCheckpointer, WeightsError, load_model_weights
from midog_d2.engine import MidogTrainer, setup_cfg


def main(args):
    cfg = setup_cfg(args.config_file, args.opts, args)
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
        return MidogTrainer.test(cfg, model)
    trainer = MidogTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


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
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
