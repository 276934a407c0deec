#!/usr/bin/env python
"""Patches per second of one training-mapper worker (MidogPatchMapper), single thread.

    python benchmarks/bench_mapper.py [--config-file configs/Base-MultiTask-RetinaNet.yaml]
        [--compression zlib|none] [--mpp 0.25] [--image PATH] [--patches 200] [--runs 5] [--hed]
        [--openslide]

Reads 512-px patches with the config's augmentation (flips + ColorJitter; ``--hed``
adds HED stain augmentation) from a 7000 x 5000 px tiled TIFF (256-px tiles,
``--mpp`` µm/px, default 0.25 = INPUT.MODEL_MPP: no resampling; 0.5 reads every
patch enlarged 2x from 256 level-0 px) with MIDOG-like cell annotations,
generated once (kept at --image and reused). Reports the median over ``--runs`` runs of
``--patches`` patches,
the CPU time per patch (less sensitive to other load on the machine), and the
medians of the stages (region read, augmentation) for profiling.
Target: >= 100 patches/s.
"""

import argparse
import os
import statistics
import time

import cv2
import numpy as np
import tifffile
import torch

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from midog_d2 import add_midog_config
from midog_d2.data import MidogPatchMapper
from midog_d2.data.stain import RGB_FROM_HED
from midog_d2.fileio import read_region_scaled
from midog_d2.fileio import slide as slide_module

WIDTH, HEIGHT, TILE = 7000, 5000, 256


def make_image(path: str, compression: str, mpp: float) -> None:
    """H&E-like pixels: smooth stain fields plus fine noise (compresses like tissue, not like a
    flat fill)."""
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 1, size=(HEIGHT // 16 + 1, WIDTH // 16 + 1, 3)).astype(np.float32)
    conc = cv2.resize(low, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    conc *= np.array([0.9, 0.7, 0.02], np.float32)
    od = cv2.transform(conc, RGB_FROM_HED.T.astype(np.float32))
    rgb = 256 * np.exp(-od) - 1 + rng.normal(0, 4, size=(HEIGHT, WIDTH, 1)).astype(np.float32)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    res = 1e4 / mpp
    tifffile.imwrite(
        path,
        rgb,
        tile=(TILE, TILE),
        photometric="rgb",
        compression=None if compression == "none" else compression,
        resolution=(res, res),
        resolutionunit="CENTIMETER",
    )


def make_dict(path: str):
    rng = np.random.default_rng(1)
    annotations = []
    for i, (x, y) in enumerate(rng.uniform([25, 25], [WIDTH - 25, HEIGHT - 25], size=(80, 2))):
        annotations.append(
            {
                "bbox": [x - 25, y - 25, x + 25, y + 25],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": i % 2,
            }
        )
    return {
        "file_name": path,
        "image_id": 1,
        "width": WIDTH,
        "height": HEIGHT,
        "tumor_type": "human breast cancer",
        "domain_label": 0,
        "labelled": True,
        "annotations": annotations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="configs/Base-MultiTask-RetinaNet.yaml")
    parser.add_argument(
        "--image",
        default="",
        help="the test image (default: $TMPDIR/midog_bench_7000x5000_<compression>.tiff)",
    )
    parser.add_argument(
        "--compression", default="zlib", choices=["zlib", "none"], help="zlib = deflate"
    )
    parser.add_argument("--mpp", type=float, default=0.25, help="µm/px of the test image")
    parser.add_argument("--patches", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hed", action="store_true", help="also HED stain augmentation")
    parser.add_argument(
        "--openslide",
        action="store_true",
        help="read through OpenSlide instead of the direct tile reader (for comparison)",
    )
    args = parser.parse_args()

    # One data-loader worker is one single-threaded process.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    args.image = args.image or os.path.join(
        os.environ.get("TMPDIR", "/tmp"),
        f"midog_bench_{WIDTH}x{HEIGHT}_{args.compression}"
        + ("" if args.mpp == 0.25 else f"_{args.mpp}mpp")
        + ".tiff",
    )
    if not os.path.isfile(args.image):
        print(
            f"writing {args.image} ({WIDTH} x {HEIGHT}, {TILE}-px tiles, {args.compression}) ...",
            flush=True,
        )
        make_image(args.image, args.compression, args.mpp)

    print(
        f"{args.image}: {os.path.getsize(args.image) / (WIDTH * HEIGHT * 3):.0%} of the raw pixel "
        "bytes"
    )
    if args.openslide:
        slide_module._tiled_tiff = lambda path: None  # every read goes through OpenSlide
    print(
        "reader: "
        f"{'OpenSlide' if slide_module._tiled_tiff(args.image) is None else 'direct tile reader'}"
    )

    cfg = get_cfg()
    add_midog_config(cfg)
    cfg.merge_from_file(args.config_file)
    if args.hed:
        cfg.INPUT.HED.ENABLED = True
    mapper = MidogPatchMapper(cfg, is_train=True)
    d = make_dict(args.image)
    s = cfg.INPUT.PATCH.SIZE
    scale = mapper.scale(args.image)
    print(
        f"augmentations: {mapper.augmentations}; patches read at scale {scale:g} (INPUT.MODEL_MPP "
        f"{cfg.INPUT.MODEL_MPP}, image {args.mpp} µm/px)"
    )

    np.random.seed(0)
    for _ in range(20):  # warm-up: open the slide, fill OpenSlide's tile cache a little
        mapper(d)
    rates, cpu, reads, augs = [], [], [], []
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.patches):
            mapper(d)
        rates.append(args.patches / (time.perf_counter() - t0))
        cpu.append((time.process_time() - c0) / args.patches * 1e3)
        # Stages, on the same kind of windows: the region read alone, the augmentations alone.
        windows = [mapper.sample_window(d, scale=scale)[:2] for _ in range(args.patches)]
        t0 = time.perf_counter()
        patches = [read_region_scaled(args.image, x, y, s, s, scale) for x, y in windows]
        reads.append((time.perf_counter() - t0) / args.patches * 1e3)
        patches = [
            cv2.cvtColor(p, cv2.COLOR_RGB2BGR) if mapper.image_format == "BGR" else p
            for p in patches
        ]
        t0 = time.perf_counter()
        for p in patches:
            mapper.augmentations(T.AugInput(p, boxes=np.zeros((0, 4), np.float32)))
        augs.append((time.perf_counter() - t0) / args.patches * 1e3)
    print(f"patches/s per run: {[round(r, 1) for r in rates]}")
    print(
        f"median: {statistics.median(rates):.1f} patches/s; per patch {statistics.median(cpu):.2f} "
        "ms of CPU time "
        f"(stages, wall: read_region {statistics.median(reads):.2f} ms, "
        f"augmentation {statistics.median(augs):.2f} ms)"
    )


if __name__ == "__main__":
    main()
