#!/usr/bin/env python
"""Run (or resume) an ablation study on MIDOG data, then tabulate it.

    python tools/run_study.py --study configs/study/paper-ablation-loto.yaml \\
        DATASETS.MIDOG.JSON_FILE datasets/midog++/MIDOGpp.json \\
        DATASETS.MIDOG.IMAGE_ROOT datasets/midog++/images \\
        DATASETS.MIDOG.CSV_FILE datasets/midog++/MIDOGpp_datasets_xvalidation.csv
    python tools/run_study.py --study configs/study/paper-ablation-loto.yaml --summarize

A study file (``midog_d2.jobs.study``) names a base config, folds, cells and seeds; every
(seed, fold, cell) is one training run (:func:`midog_d2.jobs.study.train_and_evaluate`:
train, choose the threshold on ``DATASETS.TEST[0]``, score ``DATASETS.TEST[1]`` with it),
``--jobs`` at a time in fresh processes. Each finished run appends a JSON line to
``--results`` (default ``output/study/<study>.jsonl``); started again, the study runs only
what is missing. Trailing KEY VALUE pairs override every run's config.
"""

import midog_d2  # noqa: F401  # isort: skip  (first: quiets upstream warnings)
import argparse
import functools
import sys

from detectron2.utils.logger import setup_logger

from midog_d2.jobs.study import add_study_arguments, study_command, train_and_evaluate

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
    ("fp_per_mm2", "false det./mm²"),
    ("expected_f1", "expected F1 @ 4.4/mm²"),
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_study_arguments(ap, jobs=1, threads=0)
    args = ap.parse_args(argv)
    setup_logger(name="midog_d2")

    def make_execute(study):
        return functools.partial(
            train_and_evaluate, study.config_file, threads=args.threads, extra_opts=tuple(args.opts)
        )

    return study_command(args, make_execute, SETS, METRICS)


if __name__ == "__main__":
    sys.exit(main())
