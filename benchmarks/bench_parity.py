#!/usr/bin/env python
"""Does a cell's score depend on the input it is read in? (issue 27, part 1)

    python benchmarks/bench_parity.py --json datasets/composites/heldout_cs2/held_out.json \\
        --run output/curve/bn_cs2_seed0 --weights model_0001999.pth --max-figures 60 \\
        --input-statistics MODEL.SECOND_STAGE.ON False

Each run folder's ``config.yaml`` and weights (``--weights``, default ``model_final.pth``);
the counted mitotic figures of a composite ROI file (``tools/dev/build_composites.py``: held-out
real figures in real tissue), each read in windows of ``--sizes`` px cut from its composite
around it (``midog_d2.inference.parity``), its score the best detection within the matching
radius. Prints and writes (``--output``, JSON) per run the median score in each size and the
median and 90th percentile of the absolute score differences between sizes.
"""

import argparse
import json
import os
import sys
import time

import torch

import midog_d2  # noqa: F401  # isort: skip

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from midog_d2.checkpoint import load_model_weights  # noqa: E402
from midog_d2.constants import MITOTIC_FIGURE  # noqa: E402
from midog_d2.data import box_centres, load_midog_json  # noqa: E402
from midog_d2.engine import MidogTrainer  # noqa: E402
from midog_d2.fileio import read_rgb  # noqa: E402
from midog_d2.fileio.atomic import atomic_write_text  # noqa: E402
from midog_d2.inference.parity import parity_summary, scores_across_sizes  # noqa: E402
from midog_dev import setup_datagen_cfg  # noqa: E402


def figures_of(json_file: str, image_root: str, limit: int):
    """(images, points): each counted figure with its composite, the first ``limit``."""
    images, points = [], []
    for d in load_midog_json(json_file, image_root):
        centres = box_centres(d, MITOTIC_FIGURE)
        if not len(centres):
            continue
        rgb = read_rgb(d["file_name"])
        for x, y in centres:
            images.append(rgb)
            points.append((float(x), float(y)))
            if len(points) >= limit:
                return images, points
    return images, points


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", required=True, help="composite ROI file (MIDOG-style JSON)")
    ap.add_argument("--image-root", default="", help="default: the JSON's folder")
    ap.add_argument("--run", action="append", required=True, help="run folder (repeatable)")
    ap.add_argument("--weights", default="model_final.pth", help="file name in each run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[192, 512, 1024])
    ap.add_argument("--max-figures", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("opts", nargs="*", help="config overrides (e.g. MODEL.SECOND_STAGE.ON False)")
    ap.add_argument(
        "--input-statistics",
        action="store_true",
        help="also score each run with BatchNorm normalising by the input's own statistics "
        "(as GroupNorm does): the same weights, the dependence on the input restored",
    )
    ap.add_argument("--output", default="docs/bench/parity.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = args.image_root or os.path.dirname(os.path.abspath(args.json))
    images, points = figures_of(args.json, root, args.max_figures)
    report = {"json": args.json, "figures": len(points), "sizes": args.sizes, "runs": {}}
    for run in args.run:
        weights = os.path.join(run, args.weights)
        cfg = setup_datagen_cfg(
            os.path.join(run, "config.yaml"),
            [
                "MODEL.WEIGHTS",
                weights,
                "MODEL.DEVICE",
                "cpu",
                "MODEL.RETINANET.SCORE_THRESH_TEST",
                "0.01",
                *args.opts,
            ],
        )
        model = MidogTrainer.build_model(cfg)
        load_model_weights(cfg, model, weights)
        model.eval()
        radius = cfg.TEST.MIDOG.RADIUS_UM / cfg.INPUT.MODEL_MPP
        caps = (cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST, cfg.TEST.DETECTIONS_PER_IMAGE)
        for mode in ["running"] + (["input"] if args.input_statistics else []):
            if mode == "input":  # each input normalised by its own statistics, one at a time
                for m in model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.train()
            t = time.perf_counter()
            scores = scores_across_sizes(model, images, points, args.sizes, cfg.INPUT.FORMAT,
                                         radius, batch_size=1, caps_per_512=caps)  # fmt: skip
            summary = parity_summary(scores, args.sizes)
            summary["norm"] = cfg.MODEL.RESNETS.NORM
            summary["statistics"] = mode
            summary["seconds"] = round(time.perf_counter() - t, 1)
            report["runs"][f"{weights} ({mode} statistics)"] = summary
            print(f"{weights} ({summary['norm']}, {mode} statistics): median score per size "
                  f"{[round(v, 3) for v in summary['median_score']]}; |difference| median / "
                  "p90: " + ", ".join(f"{k} {v[0]:.3f} / {v[1]:.3f}" for k, v in summary.items()
                                      if "-" in k), flush=True)  # fmt: skip
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write_text(args.output, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
