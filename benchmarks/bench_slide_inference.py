#!/usr/bin/env python
"""Whole-slide inference: pipeline efficiency, SAHI, memory, bf16 (docs/benchmarks.md).

    make bench-deps   # SAHI, for the comparison
    python benchmarks/bench_slide_inference.py --config-file configs/dev/Demo-CPU-R18.yaml \\
        --weights output/demo/model_final.pth [--roi-size 7000 5000] [--slide-size 30000 30000]
        [--repeats 3] [--threads 2] [--work-dir output/bench_slides] [--skip-sahi-slide]

Generates (once, kept in --work-dir) an all-tissue ROI and a pyramidal slide with 40%
tissue from the demo's generated images (``midog_dev.generated_slides``: real tissue, real
mitotic figures, their ground truth), then, with the same weights, interleaved over
``--repeats`` rounds:

* **pipeline**: ``SlidePredictor.predict`` end to end (thumbnail, tissue mask, reading,
  model, merging), as tools/infer_slides.py runs it; tissue megapixels per second;
* **model only**: ``predict_images`` on tiles already in memory (the same tiles, the same
  batch size; on the slide a sample of them): the rate the pipeline cannot beat.
  Efficiency = pipeline tiles/s ÷ model-only tiles/s;
* **readers** (ROI): the pipeline with 1 and 3 reading threads (``TEST.TILE.READ_WORKERS``,
  default 2), and with every tile read through OpenSlide instead of the direct tile reader;
* **SAHI**: ``get_sliced_prediction`` with SAHI's Detectron2 wrapper around the same model
  (same tile size and overlap, the image handed over decoded), its default merging;
* **fp32**: the pipeline at ``TEST.TILE.PRECISION fp32`` (ROI), against the default
  ("auto": bf16 on a CPU with native bf16); and the model-only rate of fp32 with the
  weights in the default (contiguous) memory format, against the pipeline's settings
  (channels-last, ``TEST.TILE.CHANNELS_LAST``). SAHI gets the same weights as Detectron2
  builds them (contiguous, fp32): what a SAHI user runs.

F1 of each against the ground truth at the weights' stored threshold (and the best F1 over
thresholds); the share of fp32 detections (at the threshold) that bf16 reproduces within
the scoring radius. Peak resident memory of the pipeline on the slide and on one of twice
its area, each in a fresh process. Writes ``--out`` (JSON; ``--parts`` run now add to what
it holds, so a long benchmark runs in pieces) and prints the summary.
"""

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np
import torch

from detectron2.modeling import build_model

from midog_d2.checkpoint import MidogCheckpointer, resolve_score_threshold
from midog_d2.engine import setup_cfg
from midog_d2.evaluation import ImagePoints, evaluate_points
from midog_d2.fileio import clear_cache, read_region_scaled
from midog_d2.fileio import slide as slide_module
from midog_d2.fileio import slide_dimensions
from midog_d2.inference import SlidePredictor, predict_images, resolve_precision
from midog_dev.generated_slides import blocks_from_midog, write_generated_slide

RADIUS_UM = 7.5


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", default="configs/dev/Demo-CPU-R18.yaml")
    ap.add_argument("--weights", default="output/demo/model_final.pth")
    ap.add_argument("--data-json", default="output/demo/data/synthetic_midog.json")
    ap.add_argument("--data-root", default="output/demo/data")
    ap.add_argument("--roi-size", type=int, nargs=2, default=(7000, 5000))
    ap.add_argument("--slide-size", type=int, nargs=2, default=(30000, 30000))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-sample", type=int, default=48, help="tiles timed model-only")
    ap.add_argument("--work-dir", default="output/bench_slides")
    ap.add_argument("--skip-sahi-slide", action="store_true", help="SAHI on the ROI only")
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=("roi", "slide", "memory"),
        default=("roi", "slide", "memory"),
        help="what to run now; results add to --out",
    )
    ap.add_argument("--out", default="output/bench_slides/results.json")
    ap.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    return ap.parse_args(argv)


def load(args, *extra, device="cpu"):
    cfg = setup_cfg(
        args.config_file,
        ["MODEL.WEIGHTS", args.weights, "MODEL.DEVICE", device, *args.opts, *extra],
    )
    model = build_model(cfg)
    MidogCheckpointer.from_config(cfg, model).load(args.weights)
    return cfg, model.eval()


def make_data(args):
    os.makedirs(args.work_dir, exist_ok=True)
    out = {}
    blocks = None
    for name, size, fraction in [
        ("roi", args.roi_size, 1.0),
        ("slide", args.slide_size, 0.4),
        ("slide2x", (int(args.slide_size[0] * 2**0.5), int(args.slide_size[1] * 2**0.5)), 0.4),
    ]:
        path = os.path.join(args.work_dir, f"{name}_{size[0]}x{size[1]}.tif")
        truth = path + ".truth.npy"
        if not (os.path.isfile(path) and os.path.isfile(truth)):
            blocks = blocks or blocks_from_midog(args.data_json, args.data_root, 1024)
            g = write_generated_slide(path, tuple(size), blocks, tissue_fraction=fraction)
            np.save(truth, g.figures)
        out[name] = (path, np.load(truth))
    return out


def f1s(xy, scores, truth, threshold, mpp=0.25):
    img = ImagePoints(gt=truth, pred=xy, scores=scores, mpp=mpp)
    r = evaluate_points([img], RADIUS_UM, threshold)
    return {"f1": r["f1"], "best_f1": r["best_f1"], "n": int((scores >= threshold).sum())}


def with_keys(cfg, **keys):
    """A copy of ``cfg`` with TEST.TILE keys changed."""
    c = cfg.clone()
    c.defrost()
    for k, v in keys.items():
        setattr(c.TEST.TILE, k, v)
    return c


def run_pipeline(cfg, model, path, direct=True):
    """``direct=False``: every read through OpenSlide, as before the direct JPEG reader."""
    clear_cache()
    tiled_tiff = slide_module._tiled_tiff
    if not direct:
        slide_module._tiled_tiff = lambda *a: None
    try:
        if cfg.MODEL.DEVICE.startswith("cuda"):
            torch.cuda.synchronize()  # time this run, not GPU work still queued
        t = time.perf_counter()
        res = SlidePredictor(cfg, model).predict(path)
        sec = time.perf_counter() - t
    finally:
        slide_module._tiled_tiff = tiled_tiff
    tissue_mpx = res.tissue_mm2 / (res.mpp / 1000.0) ** 2 / 1e6
    return res, {"seconds": sec, "tiles": res.tiles_read, "tissue_mpx_s": tissue_mpx / sec}


def run_model_only(cfg, model, path, tiles, scale, precision=None):
    pixels = [read_region_scaled(path, x, y, w, h, scale) for x, y, w, h in tiles]
    precision = precision or resolve_precision(cfg.TEST.TILE.PRECISION, cfg.MODEL.DEVICE)
    sync = torch.cuda.synchronize if cfg.MODEL.DEVICE.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    predict_images(model, pixels, cfg.INPUT.FORMAT, cfg.TEST.TILE.BATCH_SIZE, precision)
    sync()
    sec = time.perf_counter() - t
    return {"seconds": sec, "tiles": len(tiles), "tiles_s": len(tiles) / sec}


def sahi_model(cfg, model, threshold):
    from sahi.models.detectron2 import Detectron2DetectionModel

    class Wrapped(Detectron2DetectionModel):
        """SAHI's Detectron2 wrapper around our already-loaded model (its own loader would
        rebuild the config without midog-d2's keys)."""

        def load_model(self):
            from detectron2.engine import DefaultPredictor

            c = cfg.clone()
            c.defrost()
            # tiles are fed at their own size, as the pipeline feeds them
            c.INPUT.MIN_SIZE_TEST = c.INPUT.MAX_SIZE_TEST = cfg.TEST.TILE.SIZE
            pred = DefaultPredictor.__new__(DefaultPredictor)
            pred.cfg, pred.model = c, model
            from detectron2.data import transforms as T

            pred.aug = T.ResizeShortestEdge([c.INPUT.MIN_SIZE_TEST] * 2, c.INPUT.MAX_SIZE_TEST)
            pred.input_format = c.INPUT.FORMAT
            self.model = pred
            self.category_mapping = {"0": "mitotic figure", "1": "hard negative"}
            self.category_names = list(self.category_mapping.values())

    return Wrapped(
        confidence_threshold=cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
        device=cfg.MODEL.DEVICE,
        load_at_init=True,
    )


def run_sahi(cfg, model, path, threshold):
    from sahi.predict import get_sliced_prediction

    w, h = slide_dimensions(path)
    image = read_region_scaled(path, 0, 0, w, h, 1.0)  # handed over decoded: not timed
    det = sahi_model(cfg, model, threshold)
    size, overlap = cfg.TEST.TILE.SIZE, cfg.TEST.TILE.OVERLAP
    t = time.perf_counter()
    result = get_sliced_prediction(
        image,
        det,
        slice_height=size,
        slice_width=size,
        overlap_height_ratio=overlap / size,
        overlap_width_ratio=overlap / size,
        perform_standard_pred=False,
        verbose=0,
    )
    sec = time.perf_counter() - t
    preds = [p for p in result.object_prediction_list if p.category.id == 0]
    xy = np.array(
        [[(p.bbox.minx + p.bbox.maxx) / 2, (p.bbox.miny + p.bbox.maxy) / 2] for p in preds]
    ).reshape(-1, 2)
    scores = np.array([p.score.value for p in preds])
    del image
    return xy, scores, {"seconds": sec}


def memory_child(args):
    """Run the pipeline once in this (fresh) process; print the peak RSS in MB."""
    torch.set_num_threads(args.threads)
    cfg, model = load(args)
    SlidePredictor(cfg, model).predict(args.memory_child)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": peak_kb / 1024.0}))


def peak_memory(args, path):
    cmd = [sys.executable, __file__, "--memory-child", path, "--config-file", args.config_file]
    cmd += ["--weights", args.weights, "--threads", str(args.threads), *args.opts]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def bench_image(args, cfg, cfg32, model, plain, name, path, truth, threshold, rows, quality):
    """One round on one image: pipeline, model only (same tiles; a sample on the slide),
    fp32 pipeline and fp32 contiguous model only (ROI), SAHI."""
    res, m = run_pipeline(cfg, model, path)
    rows[f"{name}_pipe"].append(m)
    quality[f"{name}_pipe"] = f1s(res.xy, res.scores, truth, threshold)
    tiles = res.read_tiles
    if len(tiles) > args.model_sample:
        rng = np.random.default_rng(len(rows[f"{name}_pipe"]))
        tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), args.model_sample, False))]
    rows[f"{name}_model"].append(run_model_only(cfg, model, path, tiles, res.scale))
    if name == "roi":
        # Reading threads, and the direct JPEG tile reader against OpenSlide's.
        for workers in (1, 3):
            _, mw = run_pipeline(with_keys(cfg, READ_WORKERS=workers), model, path)
            rows[f"roi_pipe_{workers}_readers"].append(mw)
        _, mo = run_pipeline(cfg, model, path, direct=False)
        rows["roi_pipe_openslide"].append(mo)
        res32, m32 = run_pipeline(cfg32, model, path)
        rows["roi_fp32"].append(m32)
        quality["roi_fp32"] = f1s(res32.xy, res32.scores, truth, threshold)
        fp32 = res32.xy[res32.scores >= threshold]
        dflt = res.xy[res.scores >= threshold]
        agree = ImagePoints(gt=fp32, pred=dflt, scores=np.ones(len(dflt)))
        r = evaluate_points([agree], RADIUS_UM)
        quality["default_reproduces_fp32"] = r["recall"]
        quality["default_precision_vs_fp32"] = r["precision"]
        rows["roi_model_fp32_contiguous"].append(
            run_model_only(cfg, plain, path, tiles, res.scale, "fp32")
        )
    if name == "roi" or not args.skip_sahi_slide:
        xy, sc, ms = run_sahi(cfg, plain, path, threshold)
        rows[f"{name}_sahi"].append(ms)
        quality[f"{name}_sahi"] = f1s(xy, sc, truth, threshold)


def summarize(summary):
    rows = summary["runs"]
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in rows.items() if v}
    summary["median_seconds"] = med
    for name in ("roi", "slide"):
        pipe = rows.get(f"{name}_pipe") or []
        if not pipe:
            continue
        tiles_s = statistics.median(x["tiles"] / x["seconds"] for x in pipe)
        model_s = statistics.median(x["tiles_s"] for x in rows[f"{name}_model"])
        summary[f"{name}_efficiency"] = tiles_s / model_s
        summary[f"{name}_tissue_mpx_s"] = statistics.median(x["tissue_mpx_s"] for x in pipe)
        if rows.get(f"{name}_sahi"):
            summary[f"{name}_sahi_ratio"] = med[f"{name}_sahi"] / med[f"{name}_pipe"]
        for variant in ("1_readers", "3_readers", "openslide"):
            runs = rows.get(f"{name}_pipe_{variant}") or []
            if runs:
                v_s = statistics.median(x["tiles"] / x["seconds"] for x in runs)
                summary[f"{name}_efficiency_{variant}"] = v_s / model_s
    if rows.get("roi_fp32"):
        summary["default_over_fp32_pipeline"] = med["roi_fp32"] / med["roi_pipe"]
    if rows.get("roi_model_fp32_contiguous"):
        summary["default_over_fp32_contiguous_model"] = (
            med["roi_model_fp32_contiguous"] / med["roi_model"]
        )
    return summary


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    torch.set_num_threads(args.threads)
    data = make_data(args)
    cfg, model = load(args)
    cfg32, _ = load(args, "TEST.TILE.PRECISION", "fp32")
    plain = copy.deepcopy(model)  # before SlidePredictor makes ``model`` channels-last
    threshold, source = resolve_score_threshold(cfg)
    # Parts add to the results file, so that a long benchmark runs in pieces.
    summary = {"runs": {}, "quality": {}}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            summary = json.load(f)
    keys = ("pipe", "model", "sahi", "fp32", "model_fp32_contiguous")
    keys += ("pipe_1_readers", "pipe_3_readers", "pipe_openslide")
    for part in args.parts:
        if part in ("roi", "slide"):
            for k in keys:
                summary["runs"][f"{part}_{k}"] = []
    rows, quality = summary["runs"], summary["quality"]
    for r in range(args.repeats):
        for name in [p for p in ("roi", "slide") if p in args.parts]:
            path, truth = data[name]
            bench_image(args, cfg, cfg32, model, plain, name, path, truth, threshold, rows, quality)
        print(f"round {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    summary.update(
        precision=resolve_precision(cfg.TEST.TILE.PRECISION, "cpu"),
        channels_last=bool(cfg.TEST.TILE.CHANNELS_LAST),
        threshold=threshold,
        threshold_source=source,
        threads=args.threads,
        repeats=args.repeats,
        sizes={k: list(slide_dimensions(p)) for k, (p, _) in data.items()},
        command=" ".join([os.path.basename(sys.executable), *sys.argv]),
    )
    if "memory" in args.parts:
        summary["peak_rss_mb"] = {
            "slide": peak_memory(args, data["slide"][0]),
            "slide2x": peak_memory(args, data["slide2x"][0]),
        }
    summarize(summary)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
