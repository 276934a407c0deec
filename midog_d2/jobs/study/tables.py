"""A study's summary as Markdown, written between a results file's markers."""

import logging
import math
import re
from typing import Any, Dict, List, Sequence, Tuple

from ...fileio.atomic import atomic_write_text
from .spec import Study
from .stats import summarize_study

logger = logging.getLogger(__name__)


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


def metrics_present(rows: Sequence[Dict[str, Any]], sets: Sequence[Tuple[str, str]]) -> set:
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
    present = metrics_present(rows, sets)
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
    -->`` in ``path`` (ValueError when the markers are not there), written atomically."""
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    begin, end = f"<!-- BEGIN study: {name} -->", f"<!-- END study: {name} -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise ValueError(f"{path}: markers {begin!r} ... {end!r} not found")
    atomic_write_text(path, pattern.sub(lambda _: f"{begin}\n{text}{end}", doc))
