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
0.2, seed 0). Runs: :func:`midog_dev.scanner_study.train_and_score`; the runner and
the statistics: :mod:`midog_d2.jobs.study`.
"""

import argparse
import functools
import logging
import os
import sys

# midog_dev (development data) is not installed with midog_d2: import the checkout's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from detectron2.utils.logger import setup_logger

from midog_d2.jobs.study import add_study_arguments, study_command
from midog_dev import setup_datagen_cfg
from midog_dev.real_figures import convert_real_figures
from midog_dev.scanner_study import finetune_and_score, train_and_score

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


# The same runs at the mitotic density of real tissue: at the threshold chosen for 4.4
# figures per mm² on the validation crops (midog_dev.scanner_study.score_set).
DENSITY_METRICS = (
    ("density_recall", "recall"),
    ("density_fp_per_mm2", "false det./mm² (crops)"),
    ("density_expected_f1", "expected F1 @ 4.4/mm²"),
    ("best_expected_f1", "best expected F1"),
    ("fp_per_mm2", "false det./mm² @ in-window thr"),
    ("expected_f1", "expected F1 @ in-window thr"),
)
DENSITY_HEADING = (
    "**At real density** (threshold: best F1 expected at 4.4 figures/mm² on the validation "
    "crops; false detections per mm² of the crops' own tissue; the in-window threshold's "
    "figures for comparison):"
)


TILE_TABLE = (
    "**Unseen evaluation tiles** (the 6 histolab tiles no run trains on, 0.242 mm² at 0.25 "
    "µm/px: every detection counts as false):",
    (("density_fp_per_mm2", "false det./mm² @ density thr"), ("fp_per_mm2", "@ in-window thr")),
    (("tiles", "Evaluation tiles"),),
)


def pooled_density_text(study, rows) -> str:
    """Each cell's false detections pooled over its runs (their count over all the tissue
    searched, with an exact Poisson interval: one run searches 0.04 to 0.07 mm² of crop
    tissue, where 1 false detection is 15 to 25 per mm²), the recall pooled over the runs'
    figures, and the F1 expected at 4.4 figures/mm² from both."""
    from midog_d2.evaluation.prevalence import expected_f1, rate_interval

    if not any("density_false_detections" in (r.get("held_out") or {}) for r in rows):
        return ""
    lines = [
        "",
        "**Pooled over the runs** (false detections at the density threshold: their total "
        "over all the tissue searched, 95 % Poisson interval; recall over all the figures; "
        "expected F1 at 4.4/mm² from both, and at the interval's ends):",
        "",
        "| set | cell | runs | recall | false det. / mm² searched | false det./mm² [95 % CI] "
        "| expected F1 @ 4.4/mm² [CI] | tiles: false det./mm² [95 % CI] |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for key, name in (("held_out", "held-out"), ("in_domain", "in-domain")):
        for cell in study.cells:
            mine = [r for r in rows if r["cell"] == cell and "density_false_detections" in r[key]]
            if not mine:
                continue
            fp = sum(int(r[key]["density_false_detections"]) for r in mine)
            area = sum(float(r[key]["window_area_mm2"]) for r in mine)
            crops = sum(int(r[key]["crops"]) for r in mine)
            recall = sum(float(r[key]["density_recall"]) * int(r[key]["crops"]) for r in mine)
            recall /= crops
            rate, lo, hi = rate_interval(fp, area)
            f1s = [expected_f1(recall, f, 4.4) for f in (rate, hi, lo)]
            t_fp = sum(
                round(float(r["tiles"]["density_fp_per_mm2"]) * float(r["tiles"]["area_mm2"]))
                for r in mine
            )
            t_area = sum(float(r["tiles"]["area_mm2"]) for r in mine)
            t = rate_interval(t_fp, t_area)
            lines.append(
                f"| {name} | {cell} | {len(mine)} | {recall:.3f} | {fp} / {area:.3f} | "
                f"{rate:.1f} [{lo:.1f}, {hi:.1f}] | {f1s[0]:.3f} [{f1s[1]:.3f}, {f1s[2]:.3f}] | "
                f"{t[0]:.1f} [{t[1]:.1f}, {t[2]:.1f}] |"
            )
    return "\n".join(lines) + "\n"


def convert_if_missing(cfg, crops: str) -> None:
    """Convert ``crops`` (split by slide 0.6 / 0.2 / 0.2, seed 0) when any of the config's
    split files is missing."""
    rf = cfg.DATASETS.REAL_FIGURES
    if all(os.path.exists(p) for p in (rf.TRAIN_JSON, rf.VAL_JSON, rf.TEST_JSON)):
        return
    out = os.path.dirname(rf.TRAIN_JSON)
    prefix = os.path.basename(rf.TRAIN_JSON).rsplit("_train.json", 1)[0]
    logging.getLogger("midog_d2").info("Converting %s into %s (prefix %s)", crops, out, prefix)
    convert_real_figures(crops, out, fractions=(0.6, 0.2, 0.2), seed=0, prefix=prefix)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_study_arguments(ap, jobs=2, threads=1)
    ap.add_argument("--eval-size", type=int, default=256, help="placed-crop canvas side (px)")
    ap.add_argument(
        "--crops", default="../shared/data/real/ami-br-midog21", help="crops to convert"
    )
    ap.add_argument(
        "--finetune",
        action="store_true",
        help="fine-tuning runs (finetune_and_score: new / old scanners) instead of study runs",
    )
    args = ap.parse_args(argv)
    setup_logger(name="midog_d2")

    def make_execute(study):
        convert_if_missing(setup_datagen_cfg(study.config_file, args.opts), args.crops)
        return functools.partial(
            finetune_and_score if args.finetune else train_and_score,
            study.config_file,
            threads=args.threads,
            eval_size=args.eval_size,
            extra_opts=tuple(args.opts),
        )

    sets = SETS["finetune" if args.finetune else "study"]
    return study_command(
        args,
        make_execute,
        sets,
        results_dir=os.path.join("docs", "study"),
        more_tables=[(DENSITY_HEADING, DENSITY_METRICS), TILE_TABLE] if not args.finetune else [],
        extra_text=None if args.finetune else pooled_density_text,
    )


if __name__ == "__main__":
    sys.exit(main())
