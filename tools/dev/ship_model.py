#!/usr/bin/env python
"""Make a trained run the model that ships with the project (midog_d2/model_zoo/<name>/):

    .venv/bin/python tools/dev/ship_model.py --run output/reference/cs2_seed0 \\
        --calibration composites_heldout_cs2_val datasets/composites/heldout_cs2/val.json \\
        datasets/composites/heldout_cs2

Writes ``model_fp16.pth`` (the run's ``model_final.pth``, floating tensors at fp16, nothing
else: no optimizer, no iteration), ``config.yaml`` (the run's config with the product's keys
only, ``MODEL.WEIGHTS`` naming the shipped file by its ``midog-d2://`` path) and, chosen on the
calibration set with the fp16 weights as they load, ``model_fp16.pth.threshold.json`` (bound to
the file's SHA-256). Refuses weights over ``--max-mb`` (30). Commit a new version only when it
is measurably better (docs/model_card.md).
"""

import argparse
import io
import json
import os
import sys

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from midog_d2.checkpoint import load_model_weights, load_torch_weights  # noqa: E402
from midog_d2.checkpoint.shipped import SHIPPED_PREFIX, SHIPPED_ROOT  # noqa: E402
from midog_d2.data.register import register_from_config  # noqa: E402
from midog_d2.engine import MidogTrainer, setup_cfg  # noqa: E402
from midog_d2.engine.protocol import calibrate
from midog_d2.fileio.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from midog_d2.inference import prepare_for_inference  # noqa: E402


def half_state(path: str) -> dict:
    """The model state of a checkpoint with floating tensors at fp16 (loaded safely)."""
    state = load_torch_weights(path)
    model = state.get("model", state)
    return {
        k: (v.half() if torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in model.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True, help="run folder: config.yaml, model_final.pth")
    ap.add_argument("--weights", default="model_final.pth")
    ap.add_argument("--name", default="reference")
    ap.add_argument(
        "--calibration",
        nargs=3,
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        required=True,
        help="the whole-ROI validation set the threshold is chosen on",
    )
    ap.add_argument("--max-mb", type=float, default=30.0)
    ap.add_argument(
        "--eval-tile",
        type=int,
        default=0,
        help="tile size of the calibration run only (a BatchNorm model scores alike in any)",
    )
    ap.add_argument(
        "--eval-precision",
        default="",
        choices=("", "auto", "fp32", "bf16"),
        help="arithmetic of the calibration run only (bf16: the fast measuring stick, scores "
        "within 0.002 of fp32, docs/results.md 'Evaluation speed')",
    )
    ap.add_argument("opts", nargs="*", help="config overrides for the shipped config")
    args = ap.parse_args(argv)
    out = os.path.join(SHIPPED_ROOT, args.name)
    os.makedirs(out, exist_ok=True)
    weights = os.path.join(out, "model_fp16.pth")
    buf = io.BytesIO()
    torch.save({"model": half_state(os.path.join(args.run, args.weights))}, buf)
    size_mb = buf.tell() / 2**20
    if size_mb > args.max_mb:
        print(
            f"error: {size_mb:.1f} MB of fp16 weights, over --max-mb {args.max_mb}", file=sys.stderr
        )
        return 2
    atomic_write_bytes(weights, buf.getvalue())
    uri = f"{SHIPPED_PREFIX}{args.name}/model_fp16.pth"
    cfg = setup_cfg(
        os.path.join(args.run, "config.yaml"),
        ["MODEL.WEIGHTS", uri, "OUTPUT_DIR", "./output/shipped", *args.opts],
        ignore_development_keys=True,
    )
    atomic_write_text(os.path.join(out, "config.yaml"), cfg.dump())
    name, json_file, root = args.calibration
    run_cfg = cfg.clone()
    run_cfg.defrost()
    run_cfg.MODEL.DEVICE = "cpu"
    run_cfg.MODEL.WEIGHTS = weights
    run_cfg.DATASETS.MIDOG.EXTRA = [[name, json_file, root]]
    run_cfg.DATALOADER.NUM_WORKERS = 0
    if args.eval_tile:  # the tiled predictor scales the detection caps with it
        run_cfg.TEST.TILE.SIZE = args.eval_tile
        run_cfg.TEST.TILE.BATCH_SIZE = 1
    if args.eval_precision:
        run_cfg.TEST.TILE.PRECISION = args.eval_precision
    run_cfg.freeze()
    register_from_config(run_cfg)
    model = MidogTrainer.build_model(run_cfg)
    load_model_weights(run_cfg, model, weights)
    prepare_for_inference(model, run_cfg)
    record = calibrate(run_cfg, model, name, weights)
    print(json.dumps({"weights": weights, "mb": round(size_mb, 2), **record}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
