#!/usr/bin/env python
"""Write a generated whole slide (pyramidal tiled TIFF) and its ground truth.

    python tools/dev/make_generated_slide.py --json output/demo/data/synthetic_midog.json \\
        --image-root output/demo/data --size 30000 30000 --tissue-fraction 0.4 \\
        --output datasets/generated_slides/slide_30k.tif

The tissue is made of blocks cut from the images of a MIDOG-style dataset (the demo's
generated images by default, with their mitotic figures); the rest is glass. Writes the slide
and ``<slide>.truth.json`` (MIDOG-style JSON of its mitotic figures, for
tools/evaluate_midog.py).
"""

import argparse
import json
import os
import sys
import time

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from midog_dev.generated_slides import blocks_from_midog, write_generated_slide


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", default="output/demo/data/synthetic_midog.json")
    ap.add_argument("--image-root", default="output/demo/data")
    ap.add_argument("--size", type=int, nargs=2, default=(30000, 30000), metavar=("W", "H"))
    ap.add_argument("--tissue-fraction", type=float, default=0.4)
    ap.add_argument("--block", type=int, default=1024, help="side of the tissue blocks, px")
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compression", choices=("jpeg", "deflate"), default="jpeg")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    blocks = blocks_from_midog(args.json, args.image_root, args.block)
    slide = write_generated_slide(
        args.output,
        tuple(args.size),
        blocks,
        mpp=args.mpp,
        tissue_fraction=args.tissue_fraction,
        seed=args.seed,
        compression=args.compression,
    )
    truth = args.output + ".truth.json"
    slide.save_truth(truth)
    info = {
        "slide": slide.path,
        "truth": truth,
        "size": [slide.width, slide.height],
        "figures": int(len(slide.figures)),
        "tissue_fraction": slide.tissue_fraction,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
