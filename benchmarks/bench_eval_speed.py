#!/usr/bin/env python
"""Whole-ROI evaluation speed: the product's evaluation path (``score_dataset``: the
TiledPredictor and the evaluators that ``train_net.py --eval-only`` runs) over the first
``--rois`` composite ROIs, in Mpx of image per second, for several settings, interleaved over
``--rounds`` rounds (medians):

    python benchmarks/bench_eval_speed.py --run output/reference/cs2_seed0 \\
        --json datasets/composites/heldout_cs2/held_out.json --rois 4 --rounds 3

Settings: 512-px tiles as before (batch 8, the weights as trained, fp32), and 2048-px tiles
(batch 1) with BatchNorm folded + channels-last (``prepare_for_inference``), at fp32 and at
bf16 (``TEST.TILE.PRECISION``; native on CPUs with AVX512-BF16 or AMX). A BatchNorm model
scores a cell alike in any input size (``benchmarks/bench_parity.py``), so the tile size is
free to choose for speed. Besides the time, each setting's TP / FP / FN at 0.5 and its
detections' agreement with the setting before's (scores of the same cells) show what the
arithmetic changes. Writes ``--output`` (JSON).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
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

# name: (tile size, batch, folded + channels-last, precision)
SETTINGS = {
    "512 px, as trained, fp32": (512, 8, False, "fp32"),
    "2048 px, folded + channels-last, fp32": (2048, 1, True, "fp32"),
    "2048 px, folded + channels-last, bf16": (2048, 1, True, "bf16"),
}


def score_agreement(ref: dict, other: dict, floor: float = 0.3, radius_mm: float = 0.0075):
    """How ``other``'s detections scoring >= ``floor`` (midog_points.json) agree with
    ``ref``'s: the share with a ``ref`` detection within ``radius_mm``, and the absolute
    score differences of those pairs (nearest neighbour)."""
    diffs, n = [], 0
    for image, doc in other.items():
        theirs = [p for p in doc["points"] if p["probability"] >= floor]
        ours = ref.get(image, {}).get("points", [])
        n += len(theirs)
        if not theirs or not ours:
            continue
        a = np.array([p["point"][:2] for p in theirs])
        b = np.array([p["point"][:2] for p in ours])
        d = np.linalg.norm(a[:, None] - b[None], axis=2)
        j = d.argmin(axis=1)
        near = d[np.arange(len(a)), j] <= radius_mm
        pa = np.array([p["probability"] for p in theirs])[near]
        pb = np.array([p["probability"] for p in ours])[j[near]]
        diffs.extend(np.abs(pa - pb).tolist())
    return {
        "compared": n,
        "matched": len(diffs) / n if n else float("nan"),
        "median_abs_diff": float(np.median(diffs)) if diffs else float("nan"),
        "max_abs_diff": float(np.max(diffs)) if diffs else float("nan"),
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
    ap.add_argument("--config-file", default="", help="default: the run's config.yaml")
    ap.add_argument("opts", nargs="*", help="config overrides")
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
    for name, (size, batch, fast, precision) in SETTINGS.items():
        cfg = setup_datagen_cfg(
            args.config_file or os.path.join(args.run, "config.yaml"),
            ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu", "TEST.TILE.SIZE", str(size),
             "TEST.TILE.BATCH_SIZE", str(batch), "TEST.MIDOG.SCORE_THRESHOLD", "0.5",
             "TEST.TILE.PRECISION", precision, "DATALOADER.NUM_WORKERS", "0", *args.opts],
        )  # fmt: skip
        model = MidogTrainer.build_model(cfg)
        load_model_weights(cfg, model, weights)
        model.eval()
        if fast:
            prepare_for_inference(model, cfg)
        models[name] = (cfg, model)
    times = {name: [] for name in SETTINGS}
    results = {}
    scratch = tempfile.mkdtemp(prefix="bench_eval_speed_")
    points = {}
    for _ in range(args.rounds):
        for k, (name, (cfg, model)) in enumerate(models.items()):
            out_dir = os.path.join(scratch, str(k))
            t = time.perf_counter()
            res = score_dataset(cfg, model, "bench_eval_speed", out_dir)["midog"]
            times[name].append(time.perf_counter() - t)
            results[name] = {k: res[k] for k in ("TP", "FP", "FN")}
            with open(os.path.join(out_dir, "midog_points.json"), encoding="utf-8") as f:
                points[name] = json.load(f)
    report = {"rois": len(images), "mpx": mpx, "threads": args.threads, "settings": {},
              "agreement_with": "the setting before"}  # fmt: skip
    print(f"{len(images)} ROIs, {mpx:.1f} Mpx, {args.threads} threads, {args.rounds} rounds")
    print(
        "| setting | median s | Mpx/s | TP / FP / FN at 0.5 | its detections ≥ 0.3 found "
        "by the row above | median / max abs score difference |\n|---|--:|--:|---|--:|---|"
    )
    names = list(SETTINGS)
    for k, name in enumerate(names):
        med = statistics.median(times[name])
        agree = score_agreement(points[names[max(k - 1, 0)]], points[name])
        report["settings"][name] = {"seconds": times[name], "median_s": med,
                                    "mpx_per_s": mpx / med, **results[name], **agree}  # fmt: skip
        r = results[name]
        print(f"| {name} | {med:.1f} | {mpx / med:.2f} | {r['TP']} / {r['FP']} / {r['FN']} | "
              f"{agree['matched']:.3f} | {agree['median_abs_diff']:.4f} / "
              f"{agree['max_abs_diff']:.4f} |")  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        atomic_write_text(args.output, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
