#!/usr/bin/env python
"""Check that every image of a MIDOG annotation file is present and readable.

    python tools/check_dataset.py --json datasets/midog++/MIDOGpp.json \\
        --image-root datasets/midog++/images

Lists every missing or unreadable image (and any whose size differs from the
JSON's) before training starts, and exits with status 1 if there is any; status
2 when the annotation file itself is invalid.
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import sys

from midog_d2.data import load_midog_json
from midog_d2.fileio import check_images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", required=True, help="MIDOG / MIDOG++ annotation JSON")
    parser.add_argument(
        "--image-root", required=True, help="folder holding the images named in the JSON"
    )
    parser.add_argument(
        "--csv", default=None, help="optional MIDOG++ CSV (checked for consistency too)"
    )
    parser.add_argument(
        "--check-boxes",
        choices=("error", "skip"),
        default="error",
        help="bad boxes: fail (default) or skip with a count",
    )
    parser.add_argument(
        "--labelled-only",
        action="store_true",
        help="check only annotated images (by default unlabelled ones are checked too)",
    )
    parser.add_argument(
        "--no-read", action="store_true", help="only open each image, do not decode a region of it"
    )
    args = parser.parse_args(argv)
    try:
        dicts = load_midog_json(
            args.json,
            args.image_root,
            csv_file=args.csv,
            check_boxes=args.check_boxes,
            include_unlabelled=not args.labelled_only,
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = check_images(dicts, read_pixels=not args.no_read)
    for path, problem in problems:
        print(f"{path}: {problem}")
    n = len({d["file_name"] for d in dicts})
    if problems:
        print(f"{len(problems)} of {n} images have problems", file=sys.stderr)
        return 1
    print(f"all {n} images present and readable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
