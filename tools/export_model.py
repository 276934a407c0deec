#!/usr/bin/env python
"""Export a trained model as one TorchScript file that runs with torch and torchvision alone.

    python tools/export_model.py --config-file output/my_run/config.yaml \\
        --output output/my_run/model.ts [--check tiles/*.png] MODEL.WEIGHTS output/my_run/model_final.pth

The detector and its declared extra outputs (``model.extra_outputs``) are traced batch-wise (any batch size) at the config's tile
size (``TEST.TILE.SIZE``), in fp32 (midog_d2.inference.torchscript). The file holds its tile
size, input format, classes, µm/px, pixel mean and the weights' stored threshold. Then the
export is checked against the Detectron2 model on ``--check`` images (the tile at their top
left; random tiles without), in batches of 1 and 3: the same detections, boxes within
``--box-tol`` px and scores within ``--score-tol``. Exit code 1 when they differ.
Run it with ``tools/infer_slides.py --exported model.ts`` or, without this project:

    import torch, torchvision  # torchvision registers the NMS the graph calls
    model = torch.jit.load("model.ts")
    boxes, scores, classes, image_index, *extras = model(batch)
    # extras: one (N, ...) tensor per output the metadata's "outputs" names (the paper's
    # heads: domain_probs, foreground_prob), in that order
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)

import argparse
import json
import sys

import numpy as np
import torch

from detectron2.modeling import build_model

from midog_d2.checkpoint import (
    WeightsError,
    file_sha256,
    load_model_weights,
    resolve_score_threshold,
)
from midog_d2.engine.trainer import setup_cfg, split_overrides
from midog_d2.fileio.images import read_rgb
from midog_d2.inference.predictor import model_inputs
from midog_d2.inference.torchscript import TorchScriptDetector, save_torchscript


def compare(model, exported, tiles, box_tol: float, score_tol: float) -> dict:
    """The largest box and score differences between ``model`` and ``exported`` on
    ``tiles`` (RGB uint8), in batches of 1 and of 3, and whether the detections match."""
    worst = {"box_px": 0.0, "score": 0.0, "detections": 0, "same": True}
    fmt = exported.meta["input_format"]
    with torch.no_grad():
        for n in (1, 3):
            for i in range(0, len(tiles), n):
                inputs = model_inputs(tiles[i : i + n], fmt)
                for a, b in zip(model(inputs), exported(inputs)):
                    a, b = a["instances"], b["instances"]
                    worst["detections"] += len(a)
                    if len(a) != len(b) or not torch.equal(a.pred_classes, b.pred_classes):
                        worst["same"] = False
                        continue
                    if len(a):
                        db = (a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max().item()
                        ds = (a.scores - b.scores).abs().max().item()
                        worst["box_px"] = max(worst["box_px"], db)
                        worst["score"] = max(worst["score"], ds)
    worst["same"] = worst["same"] and worst["box_px"] <= box_tol and worst["score"] <= score_tol
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", required=True, metavar="FILE")
    ap.add_argument("--output", required=True, help="the TorchScript file to write (.ts)")
    ap.add_argument("--check", nargs="*", default=[], help="images to check the export on")
    ap.add_argument("--box-tol", type=float, default=0.01, help="px")
    ap.add_argument("--score-tol", type=float, default=1e-4)
    ap.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    args = ap.parse_intermixed_args(argv)
    args.check, args.opts = split_overrides(args.check, args.opts)
    opts = list(args.opts)
    if "MODEL.DEVICE" not in opts[0::2]:
        opts += ["MODEL.DEVICE", "cpu"]
    try:
        cfg = setup_cfg(args.config_file, opts, ignore_development_keys=True)
        model = build_model(cfg).eval()
        load_model_weights(cfg, model, cfg.MODEL.WEIGHTS)
        tile = int(cfg.TEST.TILE.SIZE)
        threshold, source = resolve_score_threshold(cfg)
        meta = {
            "input_format": cfg.INPUT.FORMAT,
            "num_classes": int(model.num_classes),
            "domains": list(cfg.MODEL.MULTITASK.DOMAINS),
            "model_mpp": float(cfg.INPUT.MODEL_MPP),
            "threshold": float(threshold),
            "threshold_source": source,
            "weights_sha256": file_sha256(cfg.MODEL.WEIGHTS),
            "precision": "fp32",
        }
        save_torchscript(model, args.output, tile, meta)
        rng = np.random.default_rng(0)
        tiles = [read_rgb(p)[:tile, :tile] for p in args.check] or [
            rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8) for _ in range(3)
        ]
    except (FileNotFoundError, ValueError, WeightsError) as e:
        raise SystemExit(f"error: {e}")
    worst = compare(model, TorchScriptDetector(args.output), tiles, args.box_tol, args.score_tol)
    print(json.dumps({"output": args.output, **meta, "check": {**worst, "images": len(tiles)}}))
    return 0 if worst["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
