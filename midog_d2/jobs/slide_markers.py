"""Completion markers: ``<stem>.done.json``, written last, binds a slide's outputs to the
weights, the options, the arithmetic and the slide file, so that a rerun skips exactly the
slides whose outputs are complete."""

import hashlib
import json
import logging
import os
from typing import Any, Dict, Optional

from detectron2.config import CfgNode

from ..checkpoint import file_sha256
from ..fileio.atomic import atomic_write_text
from ..inference.predictor import resolve_precision

__all__ = [
    "MARKER_FORMAT",
    "MARKER_SUFFIX",
    "options_fingerprint",
    "read_marker",
    "run_binding",
    "weights_identity",
    "write_marker",
]

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".done.json"
MARKER_FORMAT = 2
# Config keys that change where work goes or how fast, never a result (the weights and the
# threshold are bound by their SHA-256 and resolved value instead of their keys).
_NOT_RESULTS = (
    "OUTPUT_DIR",
    "MODEL.WEIGHTS",
    "TEST.MIDOG.SCORE_THRESHOLD",
    "MODEL.DEVICE",
    "TEST.TILE.BATCH_SIZE",
    "TEST.TILE.READ_WORKERS",
    "TEST.TILE.PREFETCH_BATCHES",
    "DATALOADER",
    "SOLVER",
    "DATASETS.TRAIN",
    "DATASETS.TEST",
    "SEED",
    "CUDNN_BENCHMARK",
    "VIS_PERIOD",
)


def run_binding(cfg: CfgNode, threshold: float, weights_sha256: str) -> Dict[str, str]:
    """What a slide's outputs are bound to: the weights, the options
    (:func:`options_fingerprint`) and the arithmetic: the device type and the precision
    ``TEST.TILE.PRECISION`` resolves to there ("auto" differs between devices)."""
    device = str(cfg.MODEL.DEVICE).split(":")[0]
    return {
        "weights_sha256": weights_sha256,
        "options_sha256": options_fingerprint(cfg, threshold),
        "device": device,
        "precision": resolve_precision(cfg.TEST.TILE.PRECISION, device),
    }


def options_fingerprint(cfg: CfgNode, threshold: float) -> str:
    """SHA-256 of the config keys that change a result (all but :data:`_NOT_RESULTS`) and
    of the operating threshold."""
    flat: Dict[str, Any] = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if any(key == n or key.startswith(n + ".") for n in _NOT_RESULTS):
                continue
            if isinstance(v, CfgNode):
                walk(v, key + ".")
            else:
                flat[key] = list(v) if isinstance(v, tuple) else v

    walk(cfg, "")
    flat["__threshold__"] = float(threshold)
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _slide_identity(path: str) -> Dict[str, int]:
    st = os.stat(path)
    return {"bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def read_marker(
    out_dir: str, stem: str, path: str, binding: Dict[str, str], expected_outputs
) -> Optional[dict]:
    """The summary row of a slide whose outputs in ``out_dir`` are complete for ``binding``
    (weights and options SHA-256), the slide as it is now and ``expected_outputs`` (the
    names of the outputs it should have); None when it must be
    (re)done, with the reason logged."""
    marker = os.path.join(out_dir, stem + MARKER_SUFFIX)
    if not os.path.isfile(marker):
        return None
    try:
        with open(marker, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("format") != MARKER_FORMAT:
            raise ValueError(f"marker format {record.get('format')!r}")
    except (OSError, ValueError) as e:
        logger.info("%s: unreadable completion marker (%s): redoing the slide", marker, e)
        return None
    why = None
    if record.get("binding") != binding:
        why = "made with other weights or options"
    else:
        try:
            if record.get("slide_file") != _slide_identity(path):
                why = "the slide file changed"
        except OSError as e:
            why = f"the slide cannot be checked ({e})"
    if why is None:
        for name, out in (record.get("outputs") or {}).items():
            file = os.path.join(out_dir, out.get("file", ""))
            if not os.path.isfile(file) or file_sha256(file) != out.get("sha256"):
                why = f"its {name} output is missing or changed"
                break
        if set(record.get("outputs") or {}) != set(expected_outputs):
            why = why or "an output is not recorded"
    if why is not None:
        logger.info("%s: outputs in %s are not complete (%s): redoing it", path, out_dir, why)
        return None
    return dict(record["row"])


def write_marker(
    out_dir: str,
    stem: str,
    path: str,
    binding: Dict[str, str],
    outputs: Dict[str, str],
    row: Dict[str, Any],
) -> None:
    """The marker of a slide whose ``outputs`` (name -> path) are written, with its summary
    ``row`` (as written to the summary): written last."""
    record = {
        "format": MARKER_FORMAT,
        "slide": path,
        "slide_file": _slide_identity(path),
        "binding": binding,
        "outputs": {
            name: {"file": os.path.basename(p), "sha256": file_sha256(p)}
            for name, p in outputs.items()
        },
        "row": dict(row),
    }
    atomic_write_text(os.path.join(out_dir, stem + MARKER_SUFFIX), json.dumps(record, indent=1))


def weights_identity(weights: str) -> str:
    """SHA-256 of a weights file (what the completion markers are bound to)."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights!r} is not a file")
    return file_sha256(weights)
