"""Ablation studies: cells x folds x seeds of one training recipe, resumable, with paired
effects.

A study file (YAML, read with ``yaml.safe_load``: it cannot run code) names the base config
and what varies::

    config: configs/dev/ScannerStudy-CPU-R18.yaml   # relative to the study file's folder
    seeds: [0, 1, 2]
    folds:                    # name -> config overrides (KEY VALUE list)
      heldout_xr: [DATASETS.REAL_FIGURES.TRAIN_DOMAINS, "['Hamamatsu S360', 'Aperio CS2']"]
    cells:                    # name -> config overrides
      baseline: [MODEL.MULTITASK.TUMOR_HEAD_ON, "False"]
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
"""

import argparse
import concurrent.futures as cf
import json
import logging
import math
import multiprocessing
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

__all__ = [
    "add_study_arguments",
    "begin_run",
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

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyRun:
    """One training run of a study."""

    cell: str
    fold: str
    seed: int
    opts: Tuple[str, ...]  # fold's overrides, then the cell's, then SEED
    base: Optional[str] = None  # name of the run whose trained detector this one reuses

    @property
    def key(self) -> Tuple[str, str, int]:
        return (self.cell, self.fold, self.seed)

    @property
    def name(self) -> str:
        return f"{self.cell}__{self.fold}__seed{self.seed}"


@dataclass
class Study:
    """A parsed study file."""

    path: str
    config_file: str  # absolute
    seeds: List[int]
    folds: Dict[str, List[str]]
    cells: Dict[str, List[str]]
    baseline: Optional[str] = None
    effects: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    reuse: Dict[str, str] = field(default_factory=dict)  # cell -> base cell

    def runs(self) -> List[StudyRun]:
        """Every run, seed-major (then fold, then cell in file order); within a seed the
        cells that reuse a base cell's detector come after all the others."""
        runs = []
        for seed in self.seeds:
            for reusing in (False, True):
                for fold, fopts in self.folds.items():
                    for cell, copts in self.cells.items():
                        if (cell in self.reuse) != reusing:
                            continue
                        base = self.reuse.get(cell)
                        runs.append(
                            StudyRun(
                                cell,
                                fold,
                                seed,
                                tuple(fopts) + tuple(copts) + ("SEED", str(seed)),
                                base=f"{base}__{fold}__seed{seed}" if base else None,
                            )
                        )
        return runs


def _opts(path: str, where: str, value: Any) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) % 2:
        raise ValueError(f"{path}: {where} must be a list of KEY VALUE pairs, got {value!r}")
    return [str(v) for v in value]


def load_study(path: str) -> Study:
    """Parse and check a study file (ValueError naming the file and the entry)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study file is a mapping (config, seeds, folds, cells)")
    unknown = sorted(
        set(raw) - {"config", "seeds", "folds", "cells", "baseline", "effects", "reuse"}
    )
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}")
    for key in ("config", "seeds", "cells"):
        if key not in raw:
            raise ValueError(f"{path}: '{key}' missing")
    config = os.path.join(os.path.dirname(os.path.abspath(path)), str(raw["config"]))
    if not os.path.isfile(config):
        raise ValueError(f"{path}: config {raw['config']!r} not found ({config})")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{path}: seeds repeat: {seeds}")
    folds = raw.get("folds") or {"all": []}
    cells = raw["cells"]
    for what, table in (("folds", folds), ("cells", cells)):
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{path}: {what} must be a non-empty mapping name -> overrides")
    study = Study(
        path=os.path.abspath(path),
        config_file=config,
        seeds=seeds,
        folds={str(k): _opts(path, f"fold {k!r}", v) for k, v in folds.items()},
        cells={str(k): _opts(path, f"cell {k!r}", v) for k, v in cells.items()},
        baseline=raw.get("baseline"),
    )
    if study.baseline is not None and study.baseline not in study.cells:
        raise ValueError(f"{path}: baseline {study.baseline!r} is not a cell")
    for name, pair in (raw.get("effects") or {}).items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in cells for p in pair)):
            raise ValueError(
                f"{path}: effect {name!r} must be [cell with, cell without], two cells; got "
                f"{pair!r}"
            )
        study.effects[str(name)] = (pair[0], pair[1])
    reuse = raw.get("reuse") or {}
    if not isinstance(reuse, dict):
        raise ValueError(f"{path}: reuse must be a mapping cell -> base cell, got {reuse!r}")
    for cell, base in reuse.items():
        if cell not in cells or base not in cells or cell == base:
            raise ValueError(
                f"{path}: reuse {cell!r}: {base!r} must name two different cells of the study"
            )
        if base in reuse:
            raise ValueError(f"{path}: reuse {cell!r}: its base {base!r} reuses another cell")
        study.reuse[str(cell)] = str(base)
    return study


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


# ----------------------------------------------------------------------------- summaries


def _get(row: Dict[str, Any], metric: str) -> float:
    """``row``'s value at a dotted path ("held_out.f1"); NaN when absent."""
    v: Any = row
    for part in metric.split("."):
        if not isinstance(v, dict) or part not in v:
            return float("nan")
        v = v[part]
    return float(v) if v is not None else float("nan")


def _mean_sd(values: Sequence[float]) -> Tuple[float, float, int]:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return float("nan"), float("nan"), 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return m, sd, len(v)


def paired_effect(diffs: Sequence[float], n_boot: int = 10000, seed: int = 0) -> Dict[str, float]:
    """Mean of paired differences with a 95 % percentile-bootstrap interval (resampling the
    pairs, seeded), how many pairs are positive / negative, and the two-sided sign-test
    p-value (ties dropped)."""
    d = [x for x in diffs if not math.isnan(x)]
    out = {"n": len(d), "mean": float("nan"), "lo": float("nan"), "hi": float("nan")}
    if not d:
        return {**out, "positive": 0, "negative": 0, "sign_p": float("nan")}
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(d, k=len(d))) / len(d) for _ in range(n_boot))
    pos, neg = sum(x > 0 for x in d), sum(x < 0 for x in d)
    n, k = pos + neg, min(pos, neg)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {
        "n": len(d),
        "mean": sum(d) / len(d),
        "lo": means[int(0.025 * (n_boot - 1))],
        "hi": means[int(math.ceil(0.975 * (n_boot - 1)))],
        "positive": pos,
        "negative": neg,
        "sign_p": p,
    }


def summarize_study(
    study: Study, rows: Sequence[Dict[str, Any]], metrics: Sequence[str]
) -> Dict[str, Any]:
    """Per cell: mean, sd and n of each ``metrics`` path over its (fold, seed) runs; the
    baseline's domain gap per metric name present as both ``in_domain.X`` and
    ``held_out.X`` (paired in-domain minus held-out); each effect's paired difference
    (:func:`paired_effect`, pairs matched on fold and seed). Rows of cells or folds the
    study does not name are left out."""
    rows = [r for r in rows if r["cell"] in study.cells and r["fold"] in study.folds]
    by_cell: Dict[str, List[Dict[str, Any]]] = {c: [] for c in study.cells}
    for r in rows:
        by_cell[r["cell"]].append(r)
    cells = {}
    for c, rs in by_cell.items():
        cells[c] = {"runs": len(rs), **{m: _mean_sd([_get(r, m) for r in rs]) for m in metrics}}
        cells[c]["wall_s"] = _mean_sd([_get(r, "wall_s") for r in rs])
    out: Dict[str, Any] = {"cells": cells, "effects": {}, "gap": {}}
    if study.baseline:
        for m in metrics:
            if m.startswith("held_out."):
                name = m[len("held_out.") :]
                if f"in_domain.{name}" in metrics:
                    diffs = [
                        _get(r, f"in_domain.{name}") - _get(r, m) for r in by_cell[study.baseline]
                    ]
                    out["gap"][name] = paired_effect(diffs)
    index = {(r["cell"], r["fold"], int(r["seed"])): r for r in rows}
    for name, (with_c, without_c) in study.effects.items():
        out["effects"][name] = {}
        for m in metrics:
            diffs = [
                _get(index[(with_c, f, s)], m) - _get(index[(without_c, f, s)], m)
                for (c, f, s) in index
                if c == with_c and (without_c, f, s) in index
            ]
            out["effects"][name][m] = paired_effect(diffs)
    return out


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _cell_lines(
    summary: Dict[str, Any], metrics: Sequence[str], labels: Dict[str, str]
) -> List[str]:
    lines = ["| cell | runs | " + " | ".join(labels.get(m, m) for m in metrics) + " | s/run |"]
    lines.append("|---|--:|" + "--:|" * (len(metrics) + 1))
    for c, s in summary["cells"].items():
        vals = [f"{_fmt(s[m][0])} ± {_fmt(s[m][1])}" if s[m][2] else "–" for m in metrics]
        lines.append(
            f"| {c} | {s['runs']} | " + " | ".join(vals) + f" | {_fmt(s['wall_s'][0], 0)} |"
        )
    return lines


def _gap_and_effect_lines(
    study: Study, summary: Dict[str, Any], metrics: Sequence[str], labels: Dict[str, str]
) -> List[str]:
    """The gap and effect tables, each after a blank line (none when empty)."""
    lines: List[str] = []
    if summary["gap"]:
        lines += ["", f"Domain gap of `{study.baseline}` (in-domain minus held-out, paired):", ""]
        lines.append("| metric | gap | 95 % CI | runs | in-domain higher / lower |")
        lines.append("|---|--:|--:|--:|--:|")
        for name, e in summary["gap"].items():
            lines.append(
                f"| {labels.get('held_out.' + name, name)} | {_fmt(e['mean'])} | "
                f"[{_fmt(e['lo'])}, {_fmt(e['hi'])}] | {e['n']} | {e['positive']} / {e['negative']} |"
            )
    if summary["effects"]:
        lines += [
            "",
            "Paired effects (with minus without, matched on fold and seed; "
            "mean [95 % bootstrap CI], pairs up / down):",
            "",
        ]
        lines.append("| effect | " + " | ".join(labels.get(m, m) for m in metrics) + " |")
        lines.append("|---|" + "--:|" * len(metrics))
        for name, per_metric in summary["effects"].items():
            with_c, without_c = study.effects[name]
            vals = []
            for m in metrics:
                e = per_metric[m]
                vals.append(
                    f"{_fmt(e['mean'])} [{_fmt(e['lo'])}, {_fmt(e['hi'])}] {e['positive']}/{e['negative']}"
                    if e["n"]
                    else "–"
                )
            lines.append(f"| {name} (`{with_c}` − `{without_c}`) | " + " | ".join(vals) + " |")
    return lines


def markdown_summary(
    study: Study, summary: Dict[str, Any], metrics: Sequence[str], labels: Dict[str, str]
) -> str:
    """Markdown tables of :func:`summarize_study`: cells (mean ± sd, n), the baseline's
    domain gap and the effects (mean [95 % CI], positive/negative pairs)."""
    lines = _cell_lines(summary, metrics, labels)
    lines += _gap_and_effect_lines(study, summary, metrics, labels)
    return "\n".join(lines) + "\n"


METRICS = (
    ("f1", "F1 @ val thr"),
    ("best_f1", "best F1"),
    ("ap50", "AP50"),
    ("recall", "recall"),
    ("rank1", "rank-1"),
    ("fp_per_crop", "false det./crop"),
)


def _metrics_present(rows: Sequence[Dict[str, Any]], sets: Sequence[Tuple[str, str]]) -> set:
    """The metric names some row holds in one of ``sets``."""
    return {m for r in rows for key, _ in sets for m in (r.get(key) or {})}


def study_tables(
    study: Study,
    rows: Sequence[Dict[str, Any]],
    sets: Sequence[Tuple[str, str]],
    metrics: Sequence[Tuple[str, str]] = METRICS,
    header: bool = True,
) -> str:
    """The study's markdown: a cell table for each scored set (``sets``: (row key, title)),
    the baseline's domain gap and the paired effects on the first set. ``metrics``:
    (name, column label); metrics no row has are left out. ``header``: the line that says
    how many runs the tables hold."""
    present = _metrics_present(rows, sets)
    metrics = [(m, label) for m, label in metrics if m in present] or list(metrics)
    labels = {f"{k}.{m}": label for k, _ in sets for m, label in metrics}
    per_set = [[f"{k}.{m}" for m, _ in metrics] for k, _ in sets]
    summary = summarize_study(study, rows, [m for ms in per_set for m in ms])
    first = per_set[0]
    effects = {k: {m: v[m] for m in first} for k, v in summary["effects"].items()}
    rest_lines = _gap_and_effect_lines(
        study, {"gap": summary["gap"], "effects": effects}, first, labels
    )
    rest = "\n".join(rest_lines) + "\n" if rest_lines else ""
    folds = sorted({r["fold"] for r in rows if r["fold"] in study.folds})
    seeds = sorted({int(r["seed"]) for r in rows if r["fold"] in study.folds})
    n = sum(1 for r in rows if r["cell"] in study.cells and r["fold"] in study.folds)
    text = (
        f"{n} of {len(study.runs())} runs ({len(study.cells)} cells x {len(study.folds)} "
        f"folds x {len(study.seeds)} seeds; done so far: folds {folds}, seeds {seeds}); "
        "mean ± sd over folds and seeds.\n"
        if header
        else ""
    )
    for (key, title), ms in zip(sets, per_set):
        text += f"\n{title}:\n\n" + "\n".join(_cell_lines(summary, ms, labels)) + "\n"
    if any("fp_per_" in m for m, _ in metrics):
        rest += "\n(False detections: lower is better, so there a negative effect helps.)\n"
    return text + rest


def write_markdown_section(path: str, name: str, text: str) -> None:
    """Replace the text between ``<!-- BEGIN study: name -->`` and ``<!-- END study: name
    -->`` in ``path`` (ValueError when the markers are not there); written to a temporary
    name, then renamed."""
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    begin, end = f"<!-- BEGIN study: {name} -->", f"<!-- END study: {name} -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise ValueError(f"{path}: markers {begin!r} ... {end!r} not found")
    doc = pattern.sub(lambda _: f"{begin}\n{text}{end}", doc)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the commands


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
        if {m for m, _ in group} & _metrics_present(rows, group_sets):
            text += f"\n{heading}\n" + study_tables(study, rows, group_sets, group, header=False)
    if extra_text is not None:
        text += extra_text(study, rows)
    print(text)
    if args.results_md:
        write_markdown_section(args.results_md, stem, text)
    return 0


def begin_run(cfg, output_dir: str) -> None:
    """What every study run does before training: its config saved as
    ``output_dir/config.yaml``, every RNG seeded with ``cfg.SEED``."""
    from detectron2.utils.env import seed_all_rng

    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    seed_all_rng(cfg.SEED)


# ----------------------------------------------------------------------------- MIDOG runs


def _midog_scores(result: Dict[str, Any]) -> Dict[str, Any]:
    """The study's names for one dataset's evaluator results (fractions; COCO AP50 in %)."""
    m = result.get("midog", {})
    out = {
        "f1": m.get("F1"),
        "precision": m.get("precision"),
        "recall": m.get("recall"),
        "threshold": m.get("threshold"),
        "best_f1": m.get("best_F1"),
        "best_threshold": m.get("best_threshold"),
        "ap50": m.get("AP50_points"),
        "num_images": m.get("num_images"),
        "fp_per_mm2": m.get("FP_per_mm2"),
        "figures_per_mm2": m.get("figures_per_mm2"),
        "expected_f1": m.get("expected_F1"),
        "density_threshold": m.get("density_threshold"),
        "density_f1": m.get("density_F1"),
    }
    if "bbox" in result:
        out["coco_ap50"] = result["bbox"].get("AP50")
    return out


def train_and_evaluate(
    config_file: str,
    run: StudyRun,
    output_dir: str,
    threads: int = 0,
    extra_opts: Sequence[str] = (),
) -> Dict[str, Any]:
    """
    One study run on MIDOG data: ``config_file`` + ``run.opts`` + ``extra_opts``, trained by
    :class:`~midog_d2.engine.MidogTrainer` into ``output_dir``, then scored by the domain
    protocol (:func:`midog_d2.evaluation.protocol.evaluate_domains`): the first
    ``DATASETS.TEST`` entry (in-domain validation) fixes the threshold, stored beside
    ``model_final.pth``; ``in_domain`` holds its scores, ``held_out`` those of the second
    entry (the held-out domain) and ``datasets`` every entry's. ``threads`` > 0 sets torch's
    thread count. A run with a base (``reuse``) loads its trained weights instead of
    training (:func:`reused_weights`).
    """
    import torch

    from ..checkpoint import load_model_weights, save_threshold
    from ..evaluation.protocol import evaluate_domains, operating_threshold
    from .trainer import MidogTrainer, setup_cfg

    if threads > 0:
        torch.set_num_threads(threads)
    os.makedirs(output_dir, exist_ok=True)
    cfg = setup_cfg(config_file, list(run.opts) + list(extra_opts) + ["OUTPUT_DIR", output_dir])
    if len(cfg.DATASETS.TEST) < 2:
        raise ValueError(
            f"{config_file}: a study run needs DATASETS.TEST = (in-domain validation, held-out "
            f"domain, ...), got {tuple(cfg.DATASETS.TEST)}"
        )
    begin_run(cfg, output_dir)
    reused = reused_weights(run, output_dir)
    trainer = MidogTrainer(cfg)
    if reused:
        load_model_weights(cfg, trainer.model, reused, untrained=("second_stage.",))
        trainer.checkpointer.save("model_final")  # the run's own copy carries its threshold
    else:
        trainer.resume_or_load(resume=False)
        trainer.train()
    results = evaluate_domains(cfg, trainer.model, os.path.join(output_dir, "inference"))
    scores = {name: _midog_scores(r) for name, r in results.items()}
    val, held = cfg.DATASETS.TEST[0], cfg.DATASETS.TEST[1]
    threshold, rule = operating_threshold(results[val]["midog"])
    weights = os.path.join(output_dir, "model_final.pth")
    if os.path.isfile(weights) and threshold is not None and math.isfinite(threshold):
        save_threshold(
            weights,
            threshold,
            dataset=val,
            rule=rule,
            best_f1_threshold=scores[val]["best_threshold"],
            best_f1=scores[val]["best_f1"],
        )
    return {
        "threshold": threshold,
        "in_domain": scores[val],
        "held_out": scores[held],
        "datasets": scores,
        "iterations": cfg.SOLVER.MAX_ITER,
        **({"reused": reused} if reused else {}),
    }
