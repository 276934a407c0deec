"""Summaries of a study's rows: means, paired effects with bootstrap intervals."""

import logging
import math
import random
from typing import Any, Dict, List, Sequence, Tuple

from .spec import Study

logger = logging.getLogger(__name__)


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
