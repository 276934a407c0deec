"""The study file: what varies (cells, folds, seeds), read without running code."""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

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
