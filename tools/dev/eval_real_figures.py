#!/usr/bin/env python
"""Score a model on held-out real figures placed in unseen real H&E context.

    python tools/dev/eval_real_figures.py --config-file configs/RealFigures-CPU-R18.yaml \
        MODEL.WEIGHTS output/real_figures_cpu_r18/model_final.pth
    python tools/dev/eval_real_figures.py --config-file configs/RealFigures-CPU-R18.yaml --baseline-only

The score threshold is the one with the best F1 on the placed *validation* crops; the
figures reported are on the placed *test* crops (and the evaluation context tiles alone).
Writes ``--output`` (JSON) and prints a Markdown table.
"""

import argparse
import json
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

from midog_d2.datagen.canvas import build_placed_crops, context_tile_names, load_context_tiles
from midog_d2.datagen.placed_crops import (
    baseline_rank1,
    chance_rank1,
    evaluate_placed,
    false_detections_per_mm2,
    predict_points,
    select_threshold,
)
from midog_d2.datagen.real_figures import load_real_figures
from midog_d2.engine import MidogTrainer, setup_cfg


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
        "--output", default="", help="JSON file (default: OUTPUT_DIR/placed_crops.json)"
    )
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cfg = setup_cfg(args.config_file, args.opts)
    rf = cfg.DATASETS.REAL_FIGURES
    _, eval_names = context_tile_names(cfg)
    tiles = load_context_tiles(rf.TILE_DIR, eval_names)
    sets = {}
    for split, path, seed in (
        ("val", rf.VAL_JSON, args.seed + 1),
        ("test", rf.TEST_JSON, args.seed),
    ):
        dicts = load_real_figures(path)
        if args.limit:
            dicts = dicts[: args.limit]
        sets[split] = build_placed_crops(dicts, tiles, size=args.size, seed=seed)
        if split == "test":
            # The shortcut check: windows cut around a random other nucleus instead.
            sets["control"] = build_placed_crops(
                dicts, tiles, size=args.size, seed=seed, control=True
            )
            # The same random nuclei in their whole crops: no window says where they are.
            sets["control_whole"] = build_placed_crops(
                dicts, tiles, size=args.size, seed=seed, control=True, whole_crop=True
            )
    result = {
        "eval_tiles": eval_names,
        "size": args.size,
        "seed": args.seed,
        "darkest_blob_rank1": baseline_rank1(sets["test"]),
        "chance_rank1": chance_rank1(sets["test"]),
        "control_set_chance_rank1": chance_rank1(sets["control"]),
        "control_whole_set_chance_rank1": chance_rank1(sets["control_whole"]),
    }
    if not args.baseline_only:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        model = MidogTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        fmt = cfg.INPUT.FORMAT
        det = {k: predict_points(model, [s.image for s in v], fmt) for k, v in sets.items()}
        thr, val_f1 = select_threshold(sets["val"], det["val"])
        tile_det = predict_points(model, [t.image for t in tiles], fmt, batch_size=1)
        result.update(
            weights=cfg.MODEL.WEIGHTS,
            threshold=thr,
            val_f1=val_f1,
            test=evaluate_placed(sets["test"], det["test"], thr),
            # rank-1 on the random-nucleus windows: how often the top detection is
            # the window's (position-only) nucleus rather than anything else
            control_set=evaluate_placed(sets["control"], det["control"], thr),
            control_whole_set=evaluate_placed(sets["control_whole"], det["control_whole"], thr),
            tiles_fp_per_mm2=false_detections_per_mm2(
                tile_det, [t.image.shape[:2] for t in tiles], thr
            ),
            tiles_mm2=sum(t.image.shape[0] * t.image.shape[1] for t in tiles) * 0.25e-3**2,
            tiles_detections={
                t.name: int((sc >= thr).sum()) for t, (_, sc) in zip(tiles, tile_det)
            },
        )
    out = args.output or os.path.join(cfg.OUTPUT_DIR, "placed_crops.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
