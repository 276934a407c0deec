"""The operating threshold stored beside a checkpoint (``<weights>.threshold.json``), bound
to the weights' SHA-256 so that a threshold never outlives the weights it was chosen for."""

import hashlib
import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

from ..constants import DEFAULT_SCORE_THRESHOLD
from ..fileio.atomic import atomic_write_text
from .shipped import SHIPPED_PREFIX, local_path

logger = logging.getLogger(__name__)


THRESHOLD_SUFFIX = ".threshold.json"

# What a threshold record may say besides the threshold and its weights: one name per
# quantity, whoever writes the record (the calibration tool, the studies, the demo). A study
# row uses the same names for the same quantities (docs/evaluation.md, "Threshold records").
RECORD_FIELDS: Dict[str, str] = {
    "dataset": "the validation set the threshold was chosen on",
    "rule": "how it was chosen",
    "num_images": "validation images scored",
    "density": "figures per mm² the expected F1 is computed at",
    "figures_per_mm2": "the validation set's own density (whole regions)",
    "expected_f1": "the validation set's F1 expected at `density`, at this threshold",
    "best_f1": "the validation set's best F1 as scored (at its own density)",
    "best_f1_threshold": "the threshold of `best_f1`",
    "radius_um": "hit radius (µm) of the scoring",
    "radius_px": "hit radius (px) of figures placed in windows",
    "dont_care_radius_um": "how far a don't-care zone reaches (µm)",
}
# Names earlier records used, read as today's.
RENAMED_FIELDS = {"f1": "best_f1"}


def threshold_record(**fields: Any) -> Dict[str, Any]:
    """A threshold record's fields (:data:`RECORD_FIELDS`), None values left out; the one
    builder every writer goes through (:func:`save_threshold`). A name outside the table is
    an error, so that no writer invents a second name for a quantity."""
    unknown = sorted(set(fields) - set(RECORD_FIELDS))
    if unknown:
        raise ValueError(
            f"threshold record: unknown field(s) {unknown}; the fields are {sorted(RECORD_FIELDS)}"
        )
    return {k: v for k, v in fields.items() if v is not None}


def threshold_file(weights: str) -> str:
    """Where the operating threshold of ``weights`` is stored: beside it, ``<weights>`` +
    ``.threshold.json`` (a ``midog-d2://`` path resolved to the shipped file)."""
    return local_path(weights) + THRESHOLD_SUFFIX


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_threshold(weights: str, threshold: float, **info: Any) -> str:
    """Store ``threshold`` beside ``weights``, bound to the weights' SHA-256 (a JSON file,
    written to a temporary name and renamed). ``info``: what it was chosen on (dataset,
    F1, radius: :func:`threshold_record`). Returns the file's path."""
    threshold = float(threshold)
    if weights.startswith(SHIPPED_PREFIX):
        raise ValueError(
            f"{weights}: the shipped model's threshold is not rewritten in place; copy the "
            "weights to a file of your own and calibrate that"
        )
    if not (0.0 <= threshold <= 1.0):
        raise ValueError(f"operating threshold must be in [0, 1], got {threshold}")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights not found: {weights}")
    record = {
        "threshold": threshold,
        "weights": os.path.basename(weights),
        "weights_sha256": file_sha256(weights),
        **threshold_record(**info),
    }
    path = threshold_file(weights)
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True))
    return path


def load_threshold(weights: str) -> Optional[Dict[str, Any]]:
    """The record :func:`save_threshold` stored for ``weights``, or None when there is none
    or it belongs to other bytes (a warning says so: the weights changed since)."""
    weights = local_path(weights) if weights else weights
    path = threshold_file(weights)
    if not weights or not os.path.isfile(path) or not os.path.isfile(weights):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        value = float(record["threshold"])
        sha = str(record["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a threshold record ({type(e).__name__}: {e})") from None
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{path}: threshold {value} is not in [0, 1]")
    for old, new in RENAMED_FIELDS.items():
        if old in record and new not in record:
            record[new] = record.pop(old)
    if sha != file_sha256(weights):
        logger.warning(
            "%s was stored for other weights (SHA-256 differs from %s): ignored", path, weights
        )
        return None
    return record


def resolve_score_threshold(cfg) -> Tuple[float, str]:
    """The operating threshold and where it came from: ``TEST.MIDOG.SCORE_THRESHOLD`` when
    set (>= 0: "config"), else the one stored beside ``MODEL.WEIGHTS`` ("stored with
    <file>"), else :data:`DEFAULT_SCORE_THRESHOLD` ("default")."""
    value = float(cfg.TEST.MIDOG.SCORE_THRESHOLD)
    if value >= 0:
        return value, "config TEST.MIDOG.SCORE_THRESHOLD"
    record = load_threshold(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else None
    if record is not None:
        return float(record["threshold"]), f"stored with {cfg.MODEL.WEIGHTS}"
    return DEFAULT_SCORE_THRESHOLD, "default (no threshold stored with MODEL.WEIGHTS)"
