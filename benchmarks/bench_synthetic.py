#!/usr/bin/env python
"""Speed of the synthetic MIDOG-like generator (midog_dev.synthetic), one thread.

    python benchmarks/bench_synthetic.py [--runs 5] [--skip-demo]

Reports medians over ``--runs`` of: rendering one 2048 x 2048 and one 1024 x 1024
image per tumor type (pixels only), writing a 2048-px tiled deflate TIFF, and
generating the whole ``demo`` preset (render + TIFF + JSON + CSV) once.
Targets: a 2048-px image in about 1-2 s; the demo preset well under a minute.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cv2
import numpy as np

from midog_dev.synthetic import (
    PRESETS,
    SCANNERS,
    TUMOR_TYPES,
    generate_dataset,
    render_image,
    write_tiff,
)


def _median_time(fn, runs: int) -> str:
    """Median wall and CPU seconds: CPU time stays honest when other jobs share the cores."""
    wall, cpu = [], []
    for i in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return f"{statistics.median(wall):.2f} / {statistics.median(cpu):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--skip-demo", action="store_true")
    args = p.parse_args()
    cv2.setNumThreads(1)
    scanner = SCANNERS["Aperio CS2"]  # the one with every artefact (blur, noise, JPEG)
    render_image(
        TUMOR_TYPES["human breast cancer"], scanner, (256, 256), 0.25, np.random.default_rng(0)
    )  # warm-up

    print("| tumor type | 1024 px render, wall / CPU s | 2048 px render, wall / CPU s |")
    print("|---|---|---|")
    for name, tumor in TUMOR_TYPES.items():
        t1 = _median_time(
            lambda i: render_image(
                tumor, scanner, (1024, 1024), 0.25, np.random.default_rng(i), 7, 9
            ),
            args.runs,
        )
        t2 = _median_time(
            lambda i: render_image(
                tumor, scanner, (2048, 2048), 0.25, np.random.default_rng(i), 25, 35
            ),
            args.runs,
        )
        print(f"| {name} | {t1} | {t2} |")

    img, _ = render_image(
        TUMOR_TYPES["human breast cancer"], scanner, (2048, 2048), 0.25, np.random.default_rng(0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = _median_time(lambda i: write_tiff(Path(tmp) / "x.tiff", img, 0.25), args.runs)
        size = (Path(tmp) / "x.tiff").stat().st_size / 1e6
        print(f"\nwrite 2048 px deflate TIFF, wall / CPU s: {t} ({size:.1f} MB)")
        if not args.skip_demo:
            spec = PRESETS["demo"]
            t, c = time.perf_counter(), time.process_time()
            out = generate_dataset(Path(tmp) / "demo", spec, seed=0)
            print(
                f"demo preset ({len(out['images'])} images of {spec.image_size[0]} x "
                f"{spec.image_size[1]} px), "
                f"wall / CPU s: {time.perf_counter() - t:.1f} / {time.process_time() - c:.1f}"
            )


if __name__ == "__main__":
    main()
