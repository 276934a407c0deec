#!/usr/bin/env python
"""Find mitotic figures in whole slides and ROIs.

    python tools/infer_slides.py --config-file CFG --input PATH [PATH ...] --output DIR \\
        MODEL.WEIGHTS output/model_final.pth [KEY VALUE ...]
    python tools/infer_slides.py --input PATH --output DIR   # the shipped reference model

Without ``--config-file`` (and ``--exported``) the model that ships with the project runs
(``midog-d2://reference/``: its config, fp16 weights and stored threshold; what it is and is
not good for: docs/model_card.md), and the log says so.

Inputs are files, folders (their slides, not recursing) or glob patterns: any OpenSlide
format, tiled TIFF ROIs, PNG/JPEG. Per slide DIR gets ``<stem>.midog.json`` (challenge
points in mm), ``<stem>.geojson`` (QuPath, in the frame QuPath shows the slide in),
``<stem>.asap.xml`` (ASAP; not for PNG/JPEG, which ASAP cannot open), ``<stem>.csv`` and
``<stem>.overlay.png`` and ``<stem>.html`` (a review page that opens from disk: the numbers,
the overlay, a crop of every detection), then the completion marker ``<stem>.done.json``;
DIR/index.html links every slide's page; DIR/summary.csv holds
one row a slide (µm/px and where it came from, tissue area, count, count/mm², hotspot,
seconds, status, notes) and DIR/log.txt the run (log.txt.rank1, ... those of the other
processes). A rerun skips slides whose outputs are complete for the same weights, options,
device and precision; a slide that cannot be read is one line on the console and a row in the
summary (its traceback in the log), and the others go on (exit code 1).

µm/px: each file's own; for a file without (a PNG, some SVS) DATASETS.MIDOG.FALLBACK_MPP
(0.25) is ASSUMED and summary.csv says so; ``--mpp`` sets it for every slide of the run.
The threshold stored with the weights (tools/calibrate_threshold.py) is used, ``--threshold``
overrides it. The GPU is used when there is one unless ``MODEL.DEVICE`` is given.
``--num-gpus N`` runs N processes per machine (GPUs, or CPU processes with gloo), each taking
every N-th slide; ``--num-machines``/``--machine-rank``/``--dist-url`` as in train_net.py.
Options may come before or after the KEY VALUE overrides. The ``config.yaml`` that training
saved beside the weights runs as it is, that of a development tool too (its extra keys are
ignored).
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import csv
import logging
import os
import sys

import torch

from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from midog_d2.checkpoint import (
    REFERENCE_WEIGHTS,
    WeightsError,
    reference_model,
    resolve_score_threshold,
)
from midog_d2.engine.deploy import (
    deployment_cfg,
    deployment_opts,
    deployment_parser,
    load_deployed_model,
)
from midog_d2.engine.trainer import split_overrides
from midog_d2.inference.torchscript import TorchScriptDetector, load_torchscript_meta
from midog_d2.jobs.slide_job import (
    expand_inputs,
    gather_rows,
    infer_slides,
    slide_stems,
    summary_counts,
    weights_identity,
    write_index,
    write_summary,
)

logger = logging.getLogger("midog_d2.infer_slides")


def parse_args(argv=None) -> argparse.Namespace:
    ap = deployment_parser(
        __doc__,
        "the model's config (default: the shipped reference model, docs/model_card.md)",
        default_config=True,
    )
    ap.add_argument("--input", required=True, nargs="+", help="slide files, folders or globs")
    ap.add_argument("--output", required=True, help="output folder")
    ap.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="µm per pixel of every slide, whatever its file says (TEST.SLIDE_MPP); without "
        "it, a file that has none is ASSUMED at DATASETS.MIDOG.FALLBACK_MPP",
    )
    ap.add_argument(
        "--exported",
        default=None,
        metavar="FILE",
        help="run a TorchScript export (tools/export_model.py) instead of MODEL.WEIGHTS; "
        "loading one runs its code: only exports you trust",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="weights that leave parameters at their initialisation",
    )
    ap.add_argument("--num-gpus", type=int, default=1, help="processes per machine")
    ap.add_argument("--num-machines", type=int, default=1)
    ap.add_argument("--machine-rank", type=int, default=0)
    ap.add_argument("--dist-url", default="auto")
    # options before or after the overrides; an unknown one is refused (argparse's line)
    args = ap.parse_intermixed_args(argv)
    args.input, args.opts = split_overrides(args.input, args.opts)
    if not args.input:
        ap.error("--input names no slide")
    return args


def _opts(args: argparse.Namespace) -> list:
    opts = deployment_opts(args.opts, args.threshold, args.mpp)
    if args.exported:
        # the export's own tile size and input format; it was made for fp32
        meta = load_torchscript_meta(args.exported)
        opts += ["TEST.TILE.SIZE", str(meta["tile_size"]), "INPUT.FORMAT", meta["input_format"]]
        opts += ["TEST.TILE.PRECISION", "fp32"]
        if args.threshold is None:
            opts += ["TEST.MIDOG.SCORE_THRESHOLD", str(meta["threshold"])]
    return opts


def check_args(args: argparse.Namespace):
    """The config, the slides and the weights' SHA-256, or SystemExit with one sentence."""
    if args.exported and not args.config_file:
        raise SystemExit("error: --exported needs the --config-file it was exported from")
    if args.num_gpus < 1:
        raise SystemExit(f"error: --num-gpus must be >= 1, got {args.num_gpus}")
    try:
        cfg = _cfg(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    if not args.config_file:
        print(
            f"no --config-file: running the shipped reference model {REFERENCE_WEIGHTS} "
            "(docs/model_card.md says what it is and is not good for)",
            file=sys.stderr,
        )
    if not cfg.MODEL.WEIGHTS and not args.exported:
        raise SystemExit(
            "error: MODEL.WEIGHTS is empty: name the trained weights to run (or leave out "
            "--config-file to run the shipped reference model)"
        )
    try:
        inputs = expand_inputs(args.input)
        slide_stems(inputs)
        if args.exported:
            sha = weights_identity(args.exported)
        else:
            sha = weights_identity(cfg.MODEL.WEIGHTS)
            # once, before any process starts: weights that load completely and safely
            load_deployed_model(cfg, allow_partial=args.allow_partial_weights)
    except (FileNotFoundError, ValueError, WeightsError) as e:
        raise SystemExit(f"error: {e}")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise SystemExit(f"error: --output {args.output} exists and is not a folder")
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: cannot create the --output folder {args.output}: {e}")
    if not os.access(args.output, os.W_OK | os.X_OK):
        raise SystemExit(f"error: the --output folder {args.output} is not writable")
    return cfg, inputs, sha


def _config_file(args: argparse.Namespace) -> str:
    """``--config-file``, or the shipped reference model's (FileNotFoundError when the
    checkout lacks it)."""
    return args.config_file or reference_model()[0]


def _cfg(args: argparse.Namespace):
    return deployment_cfg(_config_file(args), _opts(args))


def worker(args: argparse.Namespace, inputs: list, sha: str) -> None:
    rank, world = comm.get_rank(), comm.get_world_size()
    os.makedirs(args.output, exist_ok=True)
    log = os.path.join(args.output, "log.txt")
    for name, abbrev in (("midog_d2", None), ("detectron2", "d2")):
        lg = setup_logger(output=log, distributed_rank=rank, name=name, abbrev_name=abbrev)
        # tracebacks (DEBUG) go to the log file only; the console gets one line a slide
        for h in lg.handlers:
            if getattr(h, "stream", None) is sys.stdout:
                h.setLevel(logging.INFO)
    cfg = _cfg(args)
    if world > 1 and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        # Processes share the cores instead of each taking all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    if args.exported:
        model = TorchScriptDetector(args.exported, str(cfg.MODEL.DEVICE)).eval()
        threshold, source = resolve_score_threshold(cfg)
        if args.threshold is None:
            source = f"stored in the export {args.exported}"
    else:
        model, threshold, source = load_deployed_model(cfg, allow_partial=True)  # checked before
    if comm.is_main_process():
        if not args.config_file:
            logger.info("model: the shipped reference model %s", REFERENCE_WEIGHTS)
        logger.info(
            "%d slides, %d processes; threshold %.3f (%s)", len(inputs), world, threshold, source
        )
    rows = infer_slides(
        cfg,
        model,
        inputs,
        args.output,
        threshold,
        sha,
        rank=rank,
        world_size=world,
        progress=not args.no_progress and comm.is_main_process(),
        threshold_source=source,
    )
    rows = gather_rows(rows, inputs)
    if comm.is_main_process():
        write_summary(rows, os.path.join(args.output, "summary.csv"))
        write_index(rows, args.output)
        done, skipped, failed = summary_counts(rows)
        logger.info(
            "summary: %d done, %d skipped (complete), %d failed -> %s",
            done,
            skipped,
            failed,
            os.path.join(args.output, "summary.csv"),
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    _, inputs, sha = check_args(args)
    launch(
        worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, inputs, sha),
    )
    summary = os.path.join(args.output, "summary.csv")
    if args.machine_rank != 0 or not os.path.isfile(summary):
        return 0
    with open(summary, newline="", encoding="utf-8") as f:
        failed = [r for r in csv.DictReader(f) if r["status"] == "error"]
    for r in failed:
        print(f"failed: {r['slide']}: {r['message']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
