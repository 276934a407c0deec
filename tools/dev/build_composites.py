#!/usr/bin/env python
"""Build the composite ROIs of the leave-one-scanner-out folds once, as files the product reads
(tiled TIFFs with µm/px tags and a MIDOG-style JSON each; ``midog_dev.composites.build_roi_set``):

    .venv/bin/python tools/dev/build_composites.py --output datasets/composites
    .venv/bin/python tools/train_net.py --config-file configs/dev/Reference-CPU-R18.yaml --eval-only \\
        DATASETS.MIDOG.EXTRA "[['composites_heldout_cs2_held_out', \\
        'datasets/composites/heldout_cs2/held_out.json', 'datasets/composites/heldout_cs2']]" ...

Per fold (the scanner never trained on, H, and the two training scanners, T), three sets at
``--density`` figures per mm² (MIDOG++'s median, 4.4), each with at most ``--max-figures``
counted figures:

* ``val``: T's validation crops (where ``tools/calibrate_threshold.py`` chooses the threshold);
* ``in_domain``: T's test crops (held-out slides of the training scanners);
* ``held_out``: H's validation and test crops (no run of the fold trains on any crop of H).

Their tumor tissue is tiled from the same set's crops (whole, in fresh transforms; their own
figures don't-care zones), their context from the evaluation tiles no run trains on. Writes
``<output>/<fold>/<set>_NNNN.tiff``, ``<set>.json`` and ``<output>/manifest.json``.
"""

import argparse
import json
import os
import sys
import time

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from midog_d2.constants import MIDOGPP_DENSITY
from midog_d2.fileio.atomic import atomic_write_text
from midog_dev import setup_datagen_cfg
from midog_dev.canvas import context_tile_names, real_figure_split, select_domains
from midog_dev.composites import build_roi_set, write_roi_set
from midog_dev.context import load_context_tiles

SCANNERS = ("Hamamatsu XR", "Hamamatsu S360", "Aperio CS2")
FOLDS = {
    "heldout_xr": "Hamamatsu XR",
    "heldout_s360": "Hamamatsu S360",
    "heldout_cs2": "Aperio CS2",
}
SETS = ("val", "in_domain", "held_out")


def fold_sets(cfg, held_out: str):
    """{set: crop dicts} of one fold."""
    field = cfg.MODEL.MULTITASK.DOMAIN_FIELD
    train = [s for s in SCANNERS if s != held_out]
    val, test = real_figure_split(cfg, "val"), real_figure_split(cfg, "test")
    return {
        "val": select_domains(val, field, train),
        "in_domain": select_domains(test, field, train),
        "held_out": select_domains(val + test, field, [held_out]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", default="configs/dev/Reference-CPU-R18.yaml")
    ap.add_argument("--output", default="datasets/composites")
    ap.add_argument("--folds", nargs="+", default=list(FOLDS), choices=list(FOLDS))
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--density", type=float, default=MIDOGPP_DENSITY)
    ap.add_argument("--max-figures", type=int, default=160)
    ap.add_argument("--tumor-fraction", type=float, default=0.5)
    ap.add_argument("--side", type=int, default=8, help="blocks of 256 px a side (8: 2048 px)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = setup_datagen_cfg(args.config_file, [])
    _, eval_names = context_tile_names(cfg)
    tiles = load_context_tiles(cfg.DATASETS.REAL_FIGURES.TILE_DIR, eval_names)
    manifest_path = os.path.join(args.output, "manifest.json")
    manifest = {}
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    for fold in args.folds:
        sets = fold_sets(cfg, FOLDS[fold])
        for k, name in enumerate(args.sets):
            t0 = time.perf_counter()
            crops = sets[name]
            rois = build_roi_set(
                crops,
                crops,
                tiles,
                args.density,
                seed=args.seed + 101 * k,
                side=args.side,
                tumor_fraction=args.tumor_fraction,
                max_figures=args.max_figures,
            )
            out_dir = os.path.join(args.output, fold)
            meta = {
                "fold": fold,
                "set": name,
                "density_asked": args.density,
                "seed": args.seed + 101 * k,
                "tumor_fraction": args.tumor_fraction,
                "crops_available": len(crops),
            }
            path = write_roi_set(rois, out_dir, name, domain=FOLDS[fold] if name == "held_out"
                                 else "", meta=meta)  # fmt: skip
            side_mm = rois[0].image.shape[0] * 0.25e-3
            area = len(rois) * side_mm**2
            figures = sum(len(r.figures) for r in rois)
            manifest[f"composites_{fold}_{name}"] = dict(
                meta,
                json_file=path,
                image_root=out_dir,
                images=len(rois),
                figures=figures,
                dont_care=sum(len(r.ignore) for r in rois),
                area_mm2=round(area, 4),
                figures_per_mm2=round(figures / area, 3),
                seconds=round(time.perf_counter() - t0, 1),
            )
            took = time.perf_counter() - t0
            print(f"{fold}/{name}: {len(rois)} ROIs, {figures} figures in {area:.1f} mm² "
                  f"({figures / area:.2f}/mm²), {took:.0f} s", flush=True)  # fmt: skip
            atomic_write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
