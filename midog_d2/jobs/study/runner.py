"""Running a study: the results file (one JSON line per finished run), resuming, reuse of
a base run's detector and the process pool."""

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .spec import Study, StudyRun

logger = logging.getLogger(__name__)


def read_results(path: str) -> List[Dict[str, Any]]:
    """The rows of a results file (JSON lines); a last line cut short by a kill is
    ignored, any other malformed line is a ValueError naming the file and line."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # an unterminated last line: the write was killed
                logger.warning("%s: ignoring the cut-off last line %d", path, i)
                continue
            raise ValueError(f"{path}, line {i}: not a JSON object") from None
        if not isinstance(row, dict) or not all(k in row for k in ("cell", "fold", "seed")):
            raise ValueError(f"{path}, line {i}: a result row needs cell, fold and seed")
        rows.append(row)
    return rows


def completed_runs(path: str) -> set:
    """Keys (cell, fold, seed) of the runs a results file holds."""
    return {(r["cell"], r["fold"], int(r["seed"])) for r in read_results(path)}


def _append_row(path: str, row: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # A row that follows a cut-off line must start a line of its own.
    needs_newline = False
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if needs_newline else "") + json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def reused_weights(run: StudyRun, output_dir: str) -> Optional[str]:
    """The trained weights ``run`` starts from instead of training (its base run's
    ``model_final.pth``, beside ``output_dir``), or None: no base, or its weights are gone
    (the run then trains the same detector itself)."""
    base = getattr(run, "base", None)  # runs pickled by an older runner have none
    if not base:
        return None
    path = os.path.join(os.path.dirname(os.path.normpath(output_dir)), base, "model_final.pth")
    if os.path.isfile(path):
        return path
    logger.warning("Run %s: %s is missing, so it trains its detector itself", run.name, path)
    return None


def _run_one(execute: Callable, run: StudyRun, output_dir: str) -> Dict[str, Any]:
    start = time.time()
    metrics = execute(run, output_dir)
    return {"wall_s": round(time.time() - start, 1), **metrics}


def _execute_all(execute, todo, output_root, jobs):
    """(run, metrics or None when it failed) as the runs finish: each in a fresh process,
    ``jobs`` at a time, or one after the other in this process with ``jobs`` 0."""
    if jobs <= 0:
        for r in todo:
            try:
                yield r, _run_one(execute, r, os.path.join(output_root, r.name))
            except Exception as e:  # one failed run must not stop the others
                logger.error("Run %s failed: %s: %s", r.name, type(e).__name__, e)
                yield r, None
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as ex:
        futures = {
            ex.submit(_run_one, execute, r, os.path.join(output_root, r.name)): r for r in todo
        }
        for fut in cf.as_completed(futures):
            r = futures[fut]
            try:
                yield r, fut.result()
            except Exception as e:
                logger.error("Run %s failed: %s: %s", r.name, type(e).__name__, e)
                yield r, None


def run_study(
    study: Study,
    results_file: str,
    output_root: str,
    execute: Callable[[StudyRun, str], Dict[str, Any]],
    jobs: int = 1,
    limit: int = 0,
    only: Optional[Iterable[Tuple[str, str, int]]] = None,
) -> List[Dict[str, Any]]:
    """
    Run the study's runs that ``results_file`` does not hold yet, ``jobs`` at a time, each
    in a fresh process (``execute(run, output_root/<run name>)``; ``jobs`` 0: one after
    the other in this process), appending a row per
    finished run. ``limit`` > 0 stops after that many new runs have been started; ``only``
    restricts to those keys. A run that raises is logged and left for the next start.
    Returns the rows written now.
    """
    done = completed_runs(results_file)
    todo = [r for r in study.runs() if r.key not in done]
    if only is not None:
        keep = set(only)
        todo = [r for r in todo if r.key in keep]
    if limit > 0:
        todo = todo[:limit]
    logger.info(
        "Study %s: %d runs, %d done, %d to run now (%d at a time)",
        study.path,
        len(study.runs()),
        len(done),
        len(todo),
        jobs,
    )
    written = []
    for r, metrics in _execute_all(execute, todo, output_root, jobs):
        if metrics is not None:
            row = {
                "cell": r.cell,
                "fold": r.fold,
                "seed": r.seed,
                "config": os.path.relpath(study.config_file),
                "opts": list(r.opts),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **metrics,
            }
            _append_row(results_file, row)
            written.append(row)
            logger.info("Run %s done in %.0f s", r.name, metrics.get("wall_s", float("nan")))
    return written
