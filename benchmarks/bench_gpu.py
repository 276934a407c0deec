#!/usr/bin/env python
"""The GPU figures of docs/benchmarks.md in one run: whole-slide inference at fp32, fp16 and
bf16, the model alone, SAHI, and the training step rate of the paper's R-50 config.

    make bench-deps                                  # SAHI, for the comparison
    python benchmarks/bench_gpu.py [--weights W.pth] [--out output/bench_gpu/results.json]
    python benchmarks/bench_gpu.py --cpu-smoke       # the same steps, shrunk, on the CPU

Made to finish in under 10 minutes on one H100-class GPU with 16 cores, from nothing but
this checkout (no data, no weights): it draws tissue blocks with the project's generator
(``midog_dev``; no files needed), writes a 7,000 x 5,000 all-tissue ROI and a
30,000 x 30,000 slide with 40% tissue as JPEG-tiled pyramidal TIFFs (as scanners write
them), then

1. **trains**: ``--train-steps`` Adam steps of ``--config-file`` (default the paper's R-50
   config) at batch ``--train-batch`` (16, the paper's) on 512-px patches of the ROI, fp32
   as the config trains; steps/s and patches/s after ``--warmup`` steps, peak GPU memory.
   Without ``--weights`` the model starts from random weights (no ImageNet weights on a
   machine without internet), so its detections are only good for timing and for
   comparing arithmetic; with ``--weights`` the trained model is timed and compared;
2. **infers**, on the ROI and the slide, ``SlidePredictor.predict`` end to end from the TIFF
   (thumbnail, tissue mask, reading threads, model, merging) at fp32, fp16 and bf16
   (``TEST.TILE.PRECISION``), one round each, after a warm-up on the ROI: seconds, tiles/s,
   and each precision's detections against fp32's (share of fp32 detections reproduced
   within 7.5 µm, and the reverse), at the threshold where fp32 has its best F1 against the
   ground truth (random weights: fp32's median score). On the ROI also the model alone on the same tiles already in memory
   (efficiency = pipeline ÷ model-only tiles/s) and SAHI's sliced prediction with the same
   weights (fp32, as SAHI runs them).

``--cpu-smoke`` runs every step on the CPU with an R-18 model, a 1,536 x 1,024 ROI, a
4,096 x 4,096 slide, 3 training steps at batch 2 and bf16 for fp16 (fp16 needs CUDA): it
proves the script runs where no GPU is (tests/inference/test_bench_gpu.py runs it), its figures are not GPU
figures. Writes one JSON (``--out``) and prints it.
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np
import torch

import midog_d2  # noqa: F401  # isort: skip  (registers the model; filters warnings)
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from midog_d2.checkpoint import MidogCheckpointer
from midog_d2.engine import setup_cfg
from midog_d2.evaluation import ImagePoints, evaluate_points
from midog_d2.fileio import read_region, read_region_scaled
from midog_d2.fileio.images import rgb_to_format, to_chw_tensor
from midog_d2.inference import predict_images
from midog_d2.solver import build_optimizer
from midog_dev.generated_slides import SlideBlock, write_generated_slide
from midog_dev.synthetic_domains import SCANNERS, TUMOR_TYPES
from midog_dev.synthetic_render import render_image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_slide_inference import run_pipeline, run_sahi, with_keys  # noqa: E402

RADIUS_UM = 7.5
BOX = 50  # px: MIDOG's box around a mitotic figure at 0.25 µm/px


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", default=None, help="default: the paper's R-50 config")
    ap.add_argument("--weights", default="", help="a trained checkpoint (default: random)")
    ap.add_argument("--cpu-smoke", action="store_true", help="shrunk, on the CPU")
    ap.add_argument("--roi-size", type=int, nargs=2, default=None)
    ap.add_argument("--slide-size", type=int, nargs=2, default=None)
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--train-batch", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--model-sample", type=int, default=None, help="ROI tiles timed model-only")
    ap.add_argument("--skip-sahi", action="store_true")
    ap.add_argument("--work-dir", default="output/bench_gpu")
    ap.add_argument("--out", default="output/bench_gpu/results.json")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    defaults = {
        "config_file": (
            "configs/dev/Demo-CPU-R18.yaml" if smoke else "configs/Base-MultiTask-RetinaNet.yaml"
        ),
        "roi_size": (1536, 1024) if smoke else (7000, 5000),
        "slide_size": (4096, 4096) if smoke else (30000, 30000),
        "train_steps": 3 if smoke else 30,
        "train_batch": 2 if smoke else 16,
        "warmup": 1 if smoke else 5,
        "model_sample": 8 if smoke else 64,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not smoke and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --cpu-smoke to check the script on the CPU")
    args.device = "cpu" if smoke else "cuda"
    args.precisions = ("fp32", "bf16") if smoke else ("fp32", "fp16", "bf16")
    return args


def drawn_blocks(block: int, count: int = 4, seed: int = 0):
    """``count`` drawn H&E-like squares with mitotic figures (no files needed)."""
    rng = np.random.default_rng(seed)
    names = list(TUMOR_TYPES)
    blocks = []
    for k in range(count):
        rgb, cells = render_image(
            TUMOR_TYPES[names[k % len(names)]],
            SCANNERS[next(iter(SCANNERS))],
            (block, block),
            0.25,
            rng,
            num_mitoses=6,
            num_imposters=6,
        )
        figures = np.array([(c.x, c.y) for c in cells if c.category_id == 1], np.float64)
        blocks.append(SlideBlock(rgb, figures.reshape(-1, 2)))
    return blocks


def make_data(args):
    os.makedirs(args.work_dir, exist_ok=True)
    blocks, out = None, {}
    for name, size, fraction in (("roi", args.roi_size, 1.0), ("slide", args.slide_size, 0.4)):
        path = os.path.join(args.work_dir, f"{name}_{size[0]}x{size[1]}.tif")
        truth = path + ".truth.npy"
        if not (os.path.isfile(path) and os.path.isfile(truth)):
            blocks = blocks or drawn_blocks(1024)
            t = time.perf_counter()
            g = write_generated_slide(path, tuple(size), blocks, tissue_fraction=fraction)
            np.save(truth, g.figures)
            print(f"wrote {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        out[name] = (path, np.load(truth))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_rate(args, cfg, model, roi_path, truth):
    """Adam steps on ROI patches at the config's arithmetic: steps/s, patches/s, peak memory."""
    size, n = 512, args.train_batch
    rng = np.random.default_rng(0)
    w, h = args.roi_size
    batch = []
    for i in range(n):
        x, y = int(rng.integers(0, w - size)), int(rng.integers(0, h - size))
        rgb = read_region(roi_path, x, y, size, size)
        inside = truth[
            (truth[:, 0] >= x)
            & (truth[:, 0] < x + size)
            & (truth[:, 1] >= y)
            & (truth[:, 1] < y + size)
        ] - (x, y)
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(
            torch.as_tensor(np.concatenate([inside - BOX / 2, inside + BOX / 2], 1)).float()
        )
        inst.gt_classes = torch.zeros(len(inside), dtype=torch.int64)
        image = to_chw_tensor(rgb_to_format(rgb, cfg.INPUT.FORMAT))
        batch.append({"image": image, "instances": inst, "domain_label": i % 2})
    model.train()
    optimizer = build_optimizer(cfg, model)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    with EventStorage(0):
        for step in range(args.warmup + args.train_steps):
            sync(args.device)
            t = time.perf_counter()
            losses = model(batch)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync(args.device)
            if step >= args.warmup:
                times.append(time.perf_counter() - t)
    model.eval()
    step_s = statistics.median(times)
    out = {"batch": n, "steps": len(times), "median_step_s": step_s, "patches_s": n / step_s}
    if args.device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def pipeline(cfg, model, path, precision):
    """bench_slide_inference's timed pipeline run at ``precision``, with tiles/s."""
    res, m = run_pipeline(with_keys(cfg, PRECISION=precision), model, path)
    return res, {"seconds": m["seconds"], "tiles": m["tiles"], "tiles_s": m["tiles"] / m["seconds"]}


def best_threshold(res, truth):
    r = evaluate_points(
        [ImagePoints(gt=truth, pred=res.xy, scores=res.scores, mpp=0.25)], RADIUS_UM
    )
    return float(r.get("best_threshold", 0.5)), float(r["best_f1"])


def agreement(ref, res, threshold):
    """How many of fp32's detections at ``threshold`` ``res`` reproduces within the scoring
    radius, and how many of its own are fp32's."""
    a = ref.xy[ref.scores >= threshold]
    b = res.xy[res.scores >= threshold]
    if len(a) == 0 or len(b) == 0:  # nothing to compare (an untrained model may find nothing)
        return {"reproduces_fp32": None, "of_it_fp32": None, "n_fp32": len(a), "n": len(b)}
    r = evaluate_points([ImagePoints(gt=a, pred=b, scores=np.ones(len(b)), mpp=0.25)], RADIUS_UM)
    return {
        "reproduces_fp32": r["recall"],
        "of_it_fp32": r["precision"],
        "n_fp32": len(a),
        "n": len(b),
    }


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    t_all = time.perf_counter()
    data = make_data(args)
    cfg = setup_cfg(
        args.config_file,
        ["MODEL.WEIGHTS", args.weights, "MODEL.DEVICE", args.device, *args.opts],
    )
    model = build_model(cfg)
    if args.weights:
        MidogCheckpointer.from_config(cfg, model).load(args.weights)
    roi_path, roi_truth = data["roi"]
    summary = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cpu_smoke": args.cpu_smoke,
        "config_file": args.config_file,
        "weights": args.weights or "random initialisation (timing and arithmetic only)",
        "sizes": {"roi": list(args.roi_size), "slide": list(args.slide_size)},
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    summary["train"] = train_rate(args, cfg, model, roi_path, roi_truth)
    print(f"train: {summary['train']}", file=sys.stderr, flush=True)
    plain = copy.deepcopy(model)  # contiguous fp32, as SAHI runs it
    # Warm-up: channels-last weights, each precision's kernels and cuDNN's choices.
    warm, _ = pipeline(cfg, model, roi_path, "fp32")
    warm_tiles = [read_region_scaled(roi_path, *t, warm.scale) for t in warm.read_tiles[:4]]
    for precision in args.precisions:
        predict_images(model, warm_tiles, cfg.INPUT.FORMAT, cfg.TEST.TILE.BATCH_SIZE, precision)
    for name, (path, truth) in data.items():
        part, ref = {}, None
        for precision in args.precisions:
            res, m = pipeline(cfg, model, path, precision)
            if precision == "fp32":
                ref = res
                threshold, f1 = best_threshold(res, truth)
                part["fp32_best_f1"], part["fp32_best_f1_threshold"] = f1, threshold
                # Random weights score near their prior and rarely reach a best-F1 threshold:
                # compare their upper half of detections instead.
                if not args.weights and len(res.scores):
                    threshold = float(np.median(res.scores))
                part["threshold"] = threshold
            else:
                m.update(agreement(ref, res, part["threshold"]))
            part[precision] = m
            print(f"{name} {precision}: {m}", file=sys.stderr, flush=True)
        if name == "roi":
            tiles = ref.read_tiles[: args.model_sample]
            pixels = [read_region_scaled(path, *t, ref.scale) for t in tiles]
            for precision in args.precisions:
                sync(args.device)
                t = time.perf_counter()
                predict_images(model, pixels, cfg.INPUT.FORMAT, cfg.TEST.TILE.BATCH_SIZE, precision)
                sync(args.device)
                rate = len(pixels) / (time.perf_counter() - t)
                part[precision]["model_only_tiles_s"] = rate
                part[precision]["efficiency"] = part[precision]["tiles_s"] / rate
            if not args.skip_sahi:
                part["sahi_fp32"] = sahi(cfg, plain, path)
                part["speedup_over_sahi"] = {
                    p: part["sahi_fp32"]["seconds"] / part[p]["seconds"] for p in args.precisions
                }
        summary[name] = part
    summary["wall_s"] = time.perf_counter() - t_all
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


def sahi(cfg, model, path):
    """SAHI's sliced prediction of the whole ROI (decoded before timing), as in
    bench_slide_inference.py."""
    xy, scores, m = run_sahi(cfg, model, path, 0.0)
    m["detections"] = len(xy)
    return m


if __name__ == "__main__":
    sys.exit(main())
