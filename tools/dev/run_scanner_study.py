#!/usr/bin/env python
"""Run (or resume) the leave-one-scanner-out study on real pixels, then tabulate it.

    # reduced, two runs at once on one thread each (about 4 h on two cores; resumable)
    .venv/bin/python tools/dev/run_scanner_study.py --study configs/dev/study/scanner-loso-cpu.yaml
    # fine-tuning to a new scanner (after the source study has trained the source model)
    .venv/bin/python tools/dev/run_scanner_study.py --study configs/dev/study/scanner-source-cpu.yaml
    .venv/bin/python tools/dev/run_scanner_study.py --finetune \\
        --study configs/dev/study/scanner-finetune-cpu.yaml
    # the tables only, from the results file (and into docs/results.md between its markers)
    .venv/bin/python tools/dev/run_scanner_study.py --study configs/dev/study/scanner-loso-cpu.yaml \
        --summarize --results-md docs/results.md

Each finished run appends a row to ``--results`` (default ``docs/study/<study>.jsonl``); a
study started again runs only what is missing, so kill it whenever. The crops are converted
first when the config's split files do not exist (``--crops``, split by slide 0.6 / 0.2 /
0.2, seed 0). Runs: :func:`midog_d2.datagen.scanner_study.train_and_score`; the runner and
the statistics: :mod:`midog_d2.engine.study`.
"""

import argparse
import functools
import logging
import os
import sys

from detectron2.utils.logger import setup_logger

from midog_d2.datagen import setup_datagen_cfg
from midog_d2.datagen.real_figures import convert_real_figures
from midog_d2.datagen.scanner_study import finetune_and_score, train_and_score
from midog_d2.engine.study import (
    load_study,
    read_results,
    run_study,
    study_tables,
    write_markdown_section,
)

# (row key, what it holds) of the two scored sets: the study's, the fine-tuning runs'.
SETS = {
    "study": (
        ("held_out", "**Held-out scanner** (test slides of the scanner never trained on)"),
        ("in_domain", "**In-domain** (test slides of the training scanners)"),
    ),
    "finetune": (
        ("new", "**New scanner** (its test slides; threshold from its validation slides)"),
        ("old", "**Old scanners** (their test slides, at the same threshold)"),
    ),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--study", required=True, help="study file (YAML)")
    ap.add_argument("--results", default="", help="JSON-lines results file")
    ap.add_argument("--output-root", default="", help="folder for the runs' outputs")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--limit", type=int, default=0, help="start at most N new runs (0: all)")
    ap.add_argument("--eval-size", type=int, default=256, help="placed-crop canvas side (px)")
    ap.add_argument(
        "--crops", default="../shared/data/real/ami-br-midog21", help="crops to convert"
    )
    ap.add_argument("--summarize", action="store_true", help="only print the tables")
    ap.add_argument(
        "--finetune",
        action="store_true",
        help="fine-tuning runs (finetune_and_score: new / old scanners) instead of study runs",
    )
    ap.add_argument("--results-md", default="", help="also write the tables into this file")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = ap.parse_args(argv)
    setup_logger(name="midog_d2")
    log = logging.getLogger("midog_d2")
    try:
        study = load_study(args.study)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = os.path.splitext(os.path.basename(args.study))[0]
    results = args.results or os.path.join("docs", "study", f"{stem}.jsonl")
    if not args.summarize:
        cfg = setup_datagen_cfg(study.config_file, args.opts)
        rf = cfg.DATASETS.REAL_FIGURES
        if not all(os.path.exists(p) for p in (rf.TRAIN_JSON, rf.VAL_JSON, rf.TEST_JSON)):
            out = os.path.dirname(rf.TRAIN_JSON)
            prefix = os.path.basename(rf.TRAIN_JSON).rsplit("_train.json", 1)[0]
            log.info("Converting %s into %s (prefix %s)", args.crops, out, prefix)
            convert_real_figures(args.crops, out, fractions=(0.6, 0.2, 0.2), seed=0, prefix=prefix)
        execute = functools.partial(
            finetune_and_score if args.finetune else train_and_score,
            study.config_file,
            threads=args.threads,
            eval_size=args.eval_size,
            extra_opts=tuple(args.opts),
        )
        run_study(
            study,
            results,
            args.output_root or os.path.join("output", "study", stem),
            execute,
            jobs=args.jobs,
            limit=args.limit,
        )
    text = study_tables(
        study, read_results(results), SETS["finetune" if args.finetune else "study"]
    )
    print(text)
    if args.results_md:
        write_markdown_section(args.results_md, stem, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
