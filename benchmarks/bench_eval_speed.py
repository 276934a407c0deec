#!/usr/bin/env python
"""Whole-ROI evaluation speed: the product's evaluation path (``score_dataset``: the
TiledPredictor and the evaluators that ``train_net.py --eval-only`` runs) over the first
``--rois`` composite ROIs, in Mpx of image per second, for several settings, interleaved over
``--rounds`` rounds (medians):

    python benchmarks/bench_eval_speed.py --run output/reference/cs2_seed0 \\
        --json datasets/composites/heldout_cs2/held_out.json --rois 4 --rounds 3

Settings: 512-px tiles as before (batch 8), and 2048-px tiles (batch 1), each with the
weights as trained and with BatchNorm folded + channels-last (``prepare_for_inference``).
A BatchNorm model scores a cell alike in any input size (``benchmarks/bench_parity.py``), so
the tile size is free to choose for speed. Writes ``--output`` (JSON).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

import midog_d2  # noqa: F401  # isort: skip

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from midog_d2.checkpoint import load_model_weights  # noqa: E402
from midog_d2.data.register import register_midog  # noqa: E402
from midog_d2.engine import MidogTrainer  # noqa: E402
from midog_d2.engine.protocol import score_dataset  # noqa: E402
from midog_d2.fileio.atomic import atomic_write_text  # noqa: E402
from midog_d2.inference import prepare_for_inference  # noqa: E402
from midog_dev import setup_datagen_cfg  # noqa: E402

SETTINGS = {
    "512 px, as trained": (512, 8, False),
    "512 px, folded + channels-last": (512, 8, True),
    "2048 px, as trained": (2048, 1, False),
    "2048 px, folded + channels-last": (2048, 1, True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True, help="run folder: config.yaml and the weights")
    ap.add_argument("--weights", default="model_final.pth")
    ap.add_argument("--json", required=True)
    ap.add_argument("--rois", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default="docs/bench/eval_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open(args.json, encoding="utf-8") as f:
        doc = json.load(f)
    images = doc["images"][: args.rois]
    mpx = sum(im["width"] * im["height"] for im in images) / 1e6
    register_midog("bench_eval_speed", args.json, os.path.dirname(os.path.abspath(args.json)),
                   image_ids=[im["id"] for im in images])  # fmt: skip
    weights = os.path.join(args.run, args.weights)
    models = {}
    for name, (size, batch, fast) in SETTINGS.items():
        cfg = setup_datagen_cfg(
            os.path.join(args.run, "config.yaml"),
            ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", "TEST.TILE.SIZE", str(size),
             "TEST.TILE.BATCH_SIZE", str(batch), "TEST.MIDOG.SCORE_THRESHOLD", "0.5",
             "DATALOADER.NUM_WORKERS", "0"],
        )  # fmt: skip
        model = MidogTrainer.build_model(cfg)
        load_model_weights(cfg, model, weights)
        model.eval()
        if fast:
            prepare_for_inference(model, cfg)
        models[name] = (cfg, model)
    times = {name: [] for name in SETTINGS}
    results = {}
    for _ in range(args.rounds):
        for name, (cfg, model) in models.items():
            t = time.perf_counter()
            res = score_dataset(cfg, model, "bench_eval_speed")["midog"]
            times[name].append(time.perf_counter() - t)
            results[name] = {k: res[k] for k in ("TP", "FP", "FN")}
    report = {"rois": len(images), "mpx": mpx, "threads": args.threads, "settings": {}}
    print(f"{len(images)} ROIs, {mpx:.1f} Mpx, {args.threads} threads, {args.rounds} rounds")
    print("| setting | median s | Mpx/s | TP / FP / FN at 0.5 |\n|---|--:|--:|---|")
    for name in SETTINGS:
        med = statistics.median(times[name])
        report["settings"][name] = {"seconds": times[name], "median_s": med,
                                    "mpx_per_s": mpx / med, **results[name]}  # fmt: skip
        r = results[name]
        print(f"| {name} | {med:.1f} | {mpx / med:.2f} | {r['TP']} / {r['FP']} / {r['FN']} |")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write_text(args.output, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
