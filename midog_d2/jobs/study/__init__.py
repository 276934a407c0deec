"""Ablation studies: cells x folds x seeds of one training recipe, resumable, with paired
effects.

A study file (YAML, read with ``yaml.safe_load``: it cannot run code) names the base config
and what varies::

    config: configs/dev/ScannerStudy-CPU-R18.yaml   # relative to the study file's folder
    seeds: [0, 1, 2]
    folds:                    # name -> config overrides (KEY VALUE list)
      heldout_xr: [DATASETS.REAL_FIGURES.TRAIN_DOMAINS, "['Hamamatsu S360', 'Aperio CS2']"]
    cells:                    # name -> config overrides
      baseline: [MODEL.MULTITASK.DOMAIN_HEAD_ON, "False"]
      all: []
    baseline: baseline        # the cell whose domain gap is reported
    effects:                  # name -> [cell with the component, cell without it]
      domain head: [domain, baseline]
    reuse:                    # cell -> cell whose trained detector it starts from
      all+gate: all

Every (seed, fold, cell) is one run: the base config, the fold's overrides, the cell's,
then ``SEED`` and ``OUTPUT_DIR``. The same seeds serve every cell, so two cells compare
run for run (paired). Runs go in seed-major order, so a study stopped early holds whole
seeds.

A cell listed under ``reuse`` trains its detector exactly as its base cell does (it differs
only at inference, like a gate, or in a part trained after the detector, like the second
stage): its run loads the base run's ``model_final.pth`` (same fold and seed) instead of
training the detector again, and only when that file is missing trains it itself. Within a
seed those cells run after every other run, so their bases are done by then; the pairing
is then exact, the detector the same weights. Each finished run appends one JSON line (cell, fold, seed, config, metrics, wall
time) to the results file, written and fsynced at once; a study started again skips the
runs already there, so a killed study loses at most the runs in progress.

What a run does is the caller's ``execute(run, output_dir) -> metrics`` (a picklable
function: it runs in a fresh process, ``jobs`` at a time); :func:`train_and_evaluate` is the
one for MIDOG data (``tools/run_study.py``).

The parts: the study file (:mod:`.spec`), running and resuming (:mod:`.runner`), statistics
(:mod:`.stats`), Markdown (:mod:`.tables`), the commands (:mod:`.command`) and the MIDOG run
(:mod:`.midog`).
"""

from .command import add_study_arguments, study_command
from .midog import train_and_evaluate
from .runner import completed_runs, read_results, reused_weights, run_study
from .spec import Study, StudyRun, load_study
from .stats import paired_effect, summarize_study
from .tables import markdown_summary, study_tables, write_markdown_section

__all__ = [
    "add_study_arguments",
    "study_command",
    "Study",
    "StudyRun",
    "completed_runs",
    "load_study",
    "markdown_summary",
    "paired_effect",
    "read_results",
    "reused_weights",
    "run_study",
    "study_tables",
    "summarize_study",
    "train_and_evaluate",
    "write_markdown_section",
]
