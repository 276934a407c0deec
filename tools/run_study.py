#!/usr/bin/env python
"""Run (or resume) an ablation study on MIDOG data, then tabulate it.

    python tools/run_study.py --study configs/study/paper-ablation-loto.yaml \\
        DATASETS.MIDOG.JSON_FILE datasets/midog++/MIDOGpp.json \\
        DATASETS.MIDOG.IMAGE_ROOT datasets/midog++/images \\
        DATASETS.MIDOG.CSV_FILE datasets/midog++/MIDOGpp_datasets_xvalidation.csv
    python tools/run_study.py --study configs/study/paper-ablation-loto.yaml --summarize

A study file (``midog_d2.engine.study``) names a base config, folds, cells and seeds; every
(seed, fold, cell) is one training run (:func:`midog_d2.engine.study.train_and_evaluate`:
train, choose the threshold on ``DATASETS.TEST[0]``, score ``DATASETS.TEST[1]`` with it),
``--jobs`` at a time in fresh processes. Each finished run appends a JSON line to
``--results`` (default ``output/study/<study>.jsonl``); started again, the study runs only
what is missing. Trailing KEY VALUE pairs override every run's config.
"""

import argparse
import functools
import os
import sys

from detectron2.utils.logger import setup_logger

from midog_d2.engine.study import (
    load_study,
    read_results,
    run_study,
    study_tables,
    train_and_evaluate,
    write_markdown_section,
)

SETS = (
    ("held_out", "**Held-out domain** (DATASETS.TEST[1], at the in-domain threshold)"),
    ("in_domain", "**In-domain validation** (DATASETS.TEST[0])"),
)
METRICS = (
    ("f1", "F1 @ val thr"),
    ("best_f1", "best F1"),
    ("ap50", "AP50 (points)"),
    ("coco_ap50", "AP50 (COCO, %)"),
    ("recall", "recall"),
    ("precision", "precision"),
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--study", required=True, help="study file (YAML)")
    ap.add_argument("--results", default="", help="JSON-lines results file")
    ap.add_argument("--output-root", default="", help="folder for the runs' outputs")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (0: in this process)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: default)")
    ap.add_argument("--limit", type=int, default=0, help="start at most N new runs (0: all)")
    ap.add_argument("--summarize", action="store_true", help="only print the tables")
    ap.add_argument("--results-md", default="", help="also write the tables into this file")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = ap.parse_args(argv)
    setup_logger(name="midog_d2")
    try:
        study = load_study(args.study)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = os.path.splitext(os.path.basename(args.study))[0]
    results = args.results or os.path.join("output", "study", f"{stem}.jsonl")
    if not args.summarize:
        execute = functools.partial(
            train_and_evaluate, study.config_file, threads=args.threads, extra_opts=tuple(args.opts)
        )
        run_study(
            study,
            results,
            args.output_root or os.path.join("output", "study", stem),
            execute,
            jobs=args.jobs,
            limit=args.limit,
        )
    text = study_tables(study, read_results(results), SETS, METRICS)
    print(text)
    if args.results_md:
        write_markdown_section(args.results_md, stem, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
