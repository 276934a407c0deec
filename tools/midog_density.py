#!/usr/bin/env python
"""Mitotic figures per mm² of the labelled regions of a MIDOG annotation file.

    python tools/midog_density.py --json ../shared/data/MIDOGpp.json [--mpp 0.25] [--output d.json]

Prints one Markdown row per tumor type (and all regions): regions, the median, mean and
quartiles of each region's figures over its width x height, and the hard negatives' median.
The medians of MIDOG++ are ``midog_d2.constants.MIDOGPP_DENSITY`` / ``MIDOGPP_TUMOR_DENSITY``
(the default of ``TEST.MIDOG.OPERATING_DENSITY``; docs/evaluation.md, "At real density").
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import json
import sys

from midog_d2.data.midog import load_midog_json
from midog_d2.evaluation.prevalence import density_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", required=True, help="MIDOG / MIDOG++ annotation JSON")
    ap.add_argument(
        "--mpp", type=float, default=0.25, help="µm/px of regions that carry none (0.25)"
    )
    ap.add_argument("--output", default="", help="also write the table as JSON here")
    args = ap.parse_args(argv)
    try:
        records = load_midog_json(args.json, include_unlabelled=True)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = density_table(records, args.mpp)
    if not table:
        print(f"error: {args.json}: no labelled region", file=sys.stderr)
        return 2
    print("| tumor type | regions | median / mm² | mean | 25-75 % | hard negatives, median |")
    print("|---|--:|--:|--:|--:|--:|")
    for name, t in sorted(table.items(), key=lambda kv: (kv[0] != "all", kv[1]["median"])):
        print(
            f"| {name} | {t['regions']} | {t['median']:.1f} | {t['mean']:.1f} | "
            f"{t['q25']:.1f}-{t['q75']:.1f} | {t['hard_negative_median']:.1f} |"
        )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
