"""The study commands' arguments and main (``tools/run_study.py``,
``tools/dev/run_scanner_study.py``)."""

import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .runner import read_results, run_study
from .spec import Study, StudyRun, load_study
from .tables import METRICS, metrics_present, study_tables, write_markdown_section

logger = logging.getLogger(__name__)


def add_study_arguments(parser, jobs: int = 1, threads: int = 0) -> None:
    """The arguments every study command takes (``tools/run_study.py``,
    ``tools/dev/run_scanner_study.py``): ``--study``, ``--results``, ``--output-root``,
    ``--jobs``, ``--threads``, ``--limit``, ``--summarize``, ``--results-md`` and trailing
    config overrides; ``jobs`` and ``threads`` are the defaults."""
    parser.add_argument("--study", required=True, help="study file (YAML)")
    parser.add_argument("--results", default="", help="JSON-lines results file")
    parser.add_argument("--output-root", default="", help="folder for the runs' outputs")
    parser.add_argument("--jobs", type=int, default=jobs, help="runs at once (0: in this process)")
    parser.add_argument(
        "--threads", type=int, default=threads, help="torch threads per run (0: torch's default)"
    )
    parser.add_argument("--limit", type=int, default=0, help="start at most N new runs (0: all)")
    parser.add_argument("--summarize", action="store_true", help="only print the tables")
    parser.add_argument("--results-md", default="", help="also write the tables into this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")


def study_command(
    args,
    make_execute: Callable[[Study], Callable[[StudyRun, str], Dict[str, Any]]],
    sets: Sequence[Tuple[str, str]],
    metrics: Sequence[Tuple[str, str]] = METRICS,
    results_dir: str = os.path.join("output", "study"),
    more_tables: Sequence[Tuple] = (),
    extra_text: Optional[Callable[[Study, List[Dict[str, Any]]], str]] = None,
) -> int:
    """What a study command does with :func:`add_study_arguments`' ``args``: load the study
    (exit status 2 with one line on a bad file), run what is missing with
    ``make_execute(study)`` unless ``--summarize``, print :func:`study_tables` (then, for
    each ``more_tables`` entry (heading, metrics[, sets]), the tables of those metrics, of
    those sets or ``sets``, under that heading, then ``extra_text(study, rows)``) and, with
    ``--results-md``, write them between the study's markers. Results default to ``results_dir/<study>.jsonl``, run
    outputs to ``output/study/<study>/``."""
    try:
        study = load_study(args.study)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stem = os.path.splitext(os.path.basename(args.study))[0]
    results = args.results or os.path.join(results_dir, f"{stem}.jsonl")
    if not args.summarize:
        run_study(
            study,
            results,
            args.output_root or os.path.join("output", "study", stem),
            make_execute(study),
            jobs=args.jobs,
            limit=args.limit,
        )
    rows = read_results(results)
    text = study_tables(study, rows, sets, metrics)
    for heading, group, *other_sets in more_tables:
        group_sets = other_sets[0] if other_sets else sets
        if {m for m, _ in group} & metrics_present(rows, group_sets):
            text += f"\n{heading}\n" + study_tables(study, rows, group_sets, group, header=False)
    if extra_text is not None:
        text += extra_text(study, rows)
    print(text)
    if args.results_md:
        write_markdown_section(args.results_md, stem, text)
    return 0
