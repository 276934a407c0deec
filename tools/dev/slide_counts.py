#!/usr/bin/env python
"""Counts per mm² of tissue at several thresholds, from an ``infer_slides.py`` output folder.

    .venv/bin/python tools/dev/slide_counts.py output/slides_none_xr0 --thresholds 0.56 0.77 0.9

``infer_slides.py`` writes every detection with its score (``<stem>.csv``) and each slide's
tissue area (``summary.csv``), so one run (with ``MODEL.RETINANET.SCORE_THRESH_TEST`` low)
gives the count at any threshold: one Markdown row a slide and threshold.
"""

import argparse
import csv
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("folder", help="an infer_slides.py --output folder")
    ap.add_argument("--thresholds", type=float, nargs="+", required=True)
    args = ap.parse_args(argv)
    summary = os.path.join(args.folder, "summary.csv")
    try:
        with open(summary, encoding="utf-8") as f:
            slides = [r for r in csv.DictReader(f) if r["status"] == "done"]
    except OSError as e:
        print(f"error: {summary}: {e}", file=sys.stderr)
        return 2
    print("| slide | µm/px | tissue mm² | threshold | count | per mm² |")
    print("|---|--:|--:|--:|--:|--:|")
    for s in slides:
        stem = os.path.splitext(os.path.basename(s["slide"]))[0]
        with open(os.path.join(args.folder, stem + ".csv"), encoding="utf-8") as f:
            scores = [float(r["score"]) for r in csv.DictReader(f)]
        area = float(s["tissue_mm2"])
        for t in args.thresholds:
            n = sum(v >= t for v in scores)
            print(f"| {stem} | {s['mpp']} | {area:.2f} | {t:.2f} | {n} | {n / area:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
