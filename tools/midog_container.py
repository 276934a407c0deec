#!/usr/bin/env python
"""The MIDOG challenge's algorithm container: ROIs in, the challenge's points JSON out.

    python tools/midog_container.py --config-file model/config.yaml \\
        MODEL.WEIGHTS model/model_final.pth
    # on a machine outside the container:
    python tools/midog_container.py --config-file CFG --input-dir rois/ \\
        --output out/mitotic-figures.json MODEL.WEIGHTS w.pth

Reads every ``.tif``, ``.tiff`` and ``.mha`` in ``--input-dir`` (default the challenge's
/input/images/histopathology-roi-cropout), runs the model over each whole ROI (no tissue
mask: ROIs are tissue; ``TEST.TISSUE.ENABLED True`` turns it on) at the threshold stored
with the weights (``--threshold`` overrides it), and writes ``--output`` (default
/output/mitotic-figures.json): "Points of interest" in millimetres from the image's own
spacing, points below the threshold named "non-mitotic figure" (midog_d2.fileio.challenge).
A job has one ROI; with several, each gets ``<stem>.mitotic-figures.json`` beside
``--output``. The Dockerfile at the repository's root runs this with the weights baked in.
Exit code 1 when an ROI could not be read (the others are written).
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)

import argparse
import json
import logging
import sys
import tempfile

from detectron2.utils.logger import setup_logger

from midog_d2.checkpoint import WeightsError
from midog_d2.engine import deploy
from midog_d2.fileio import atomic_write_text, challenge
from midog_d2.fileio.slide import slide_resolution
from midog_d2.inference.slide_predictor import SlidePredictor

logger = logging.getLogger("midog_d2.midog_container")


def parse_args(argv=None) -> argparse.Namespace:
    ap = deploy.deployment_parser(__doc__, "the model's config", default_config=False)
    ap.add_argument("--input-dir", default=challenge.CHALLENGE_INPUT, help="folder of the ROIs")
    ap.add_argument("--output", default=challenge.CHALLENGE_OUTPUT, help="the points JSON to write")
    return ap.parse_intermixed_args(argv)


def build(args: argparse.Namespace):
    """The config, the model (weights loaded, eval mode) and the threshold with its source,
    or SystemExit with one sentence."""
    try:
        # ROIs are tissue throughout: no tissue mask unless the overrides ask for one
        opts = deploy.deployment_opts(
            args.opts, args.threshold, defaults=["TEST.TISSUE.ENABLED", "False"]
        )
        cfg = deploy.deployment_cfg(args.config_file, opts)
        return cfg, *deploy.load_deployed_model(cfg)
    except (FileNotFoundError, ValueError, WeightsError) as e:
        raise SystemExit(f"error: {e}")


def predict_roi(predictor: SlidePredictor, path: str, threshold: float, workdir: str) -> dict:
    """The challenge JSON of one ROI (:func:`midog_d2.fileio.challenge.challenge_points`)."""
    if path.lower().endswith(".mha"):
        readable, _, to_mm = challenge.mha_as_tiff(path, workdir)
    else:
        readable = path
        to_mm = challenge.tiff_to_mm(
            slide_resolution(readable, predictor.fallback_mpp, predictor.mpp)[0]
        )
    result = predictor.predict(readable)
    return challenge.challenge_points(result.xy, result.scores, threshold, to_mm)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="midog_d2")
    try:
        inputs = challenge.challenge_inputs(args.input_dir)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}")
    cfg, model, threshold, source = build(args)
    logger.info("%d ROI(s); threshold %.3f (%s)", len(inputs), threshold, source)
    predictor = SlidePredictor(cfg, model)
    failed = 0
    with tempfile.TemporaryDirectory() as workdir:
        for path, out in challenge.output_paths(inputs, args.output):
            try:
                points = predict_roi(predictor, path, threshold, workdir)
            except (OSError, ValueError) as e:
                logger.error("%s: failed: %s", path, e)
                failed += 1
                continue
            atomic_write_text(out, json.dumps(points))
            n = sum(p["name"] == "mitotic figure" for p in points["points"])
            logger.info(
                "%s: %d mitotic figures (%d points) -> %s", path, n, len(points["points"]), out
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
