#!/usr/bin/env python
"""Train or evaluate midog-d2 models with Detectron2's conventions.

    python tools/train_net.py --config-file configs/Base-MultiTask-RetinaNet.yaml \
        DATASETS.MIDOG.JSON_FILE datasets/midog++/MIDOGpp.json \
        DATASETS.MIDOG.IMAGE_ROOT datasets/midog++/images
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 8
"""

from detectron2.engine import default_argument_parser, launch

from midog_d2.checkpoint import MidogCheckpointer
from midog_d2.engine import MidogTrainer, setup_cfg


def main(args):
    cfg = setup_cfg(args.config_file, args.opts, args)
    if args.eval_only:
        model = MidogTrainer.build_model(cfg)
        MidogCheckpointer.from_config(cfg, model, cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return MidogTrainer.test(cfg, model)
    trainer = MidogTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
