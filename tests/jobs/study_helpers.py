"""Run functions for the study-runner tests: module level, so that the runner's fresh
processes can import them (imported as ``study_helpers``)."""

import json
import os
import time


def record_run(run, output_dir):
    """Log the run to ``$STUDY_LOG`` and return metrics derived from the cell and seed."""
    with open(os.environ["STUDY_LOG"], "a") as f:
        f.write(json.dumps([run.cell, run.fold, run.seed]) + "\n")
    base = {"a": 0.5, "b": 0.6}.get(run.cell, 0.4)
    return {"held_out": {"f1": base + 0.01 * run.seed}, "in_domain": {"f1": base + 0.1}}


def first_fast_then_hang(run, output_dir):
    """The first run returns at once; any other hangs until killed."""
    with open(os.environ["STUDY_LOG"], "a") as f:
        f.write(json.dumps([run.cell, run.fold, run.seed]) + "\n")
    if (run.cell, run.seed) != ("a", 0):
        time.sleep(3600)
    return {"held_out": {"f1": 0.5}, "in_domain": {"f1": 0.6}}


def fail_on_b(run, output_dir):
    if run.cell == "b":
        raise RuntimeError("cell b always fails")
    return record_run(run, output_dir)
