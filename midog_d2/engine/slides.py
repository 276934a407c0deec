"""Inference over many slides: inputs, per-slide outputs, completion markers and the summary.

For each slide ``DIR/<stem>`` gets the challenge JSON (``.midog.json``), QuPath GeoJSON
(``.geojson``), a CSV (``.csv``), ASAP XML (``.asap.xml``) and an overlay (``.overlay.png``),
each written atomically, then ``<stem>.done.json``: the completion marker, written last and
bound to the weights' SHA-256, the options (every config key that changes a result, and the
threshold), the slide file's size and modification time and each output's SHA-256. A rerun
skips a slide whose marker matches all of that and redoes any other, so a job killed mid-way
loses at most the slide in progress. With several processes (Detectron2's ``launch``) each
rank takes every world-size-th slide; rank 0 gathers the rows and writes ``summary.csv``.
"""

import csv
import glob
import hashlib
import io
import json
import logging
import os
import time
import traceback
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from torch import nn

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..checkpoint import file_sha256
from ..inference.slides import SlidePredictor, SlideResult, slide_readout
from ..io.exports import (
    atomic_write_bytes,
    atomic_write_text,
    write_asap_xml,
    write_detections_csv,
    write_geojson,
)
from ..io.points import points_to_json
from ..utils.visualizer import draw_slide_overlay

__all__ = [
    "MARKER_SUFFIX",
    "OUTPUT_SUFFIXES",
    "SLIDE_EXTENSIONS",
    "SUMMARY_COLUMNS",
    "expand_inputs",
    "gather_rows",
    "infer_slides",
    "options_fingerprint",
    "read_marker",
    "slide_stems",
    "summary_counts",
    "weights_identity",
    "write_slide_outputs",
    "write_summary",
]

logger = logging.getLogger(__name__)

# What a folder is searched for (files and globs given by name are taken as they are).
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".png",
    ".jpg",
    ".jpeg",
)
OUTPUT_SUFFIXES = {
    "midog": ".midog.json",
    "geojson": ".geojson",
    "csv": ".csv",
    "asap": ".asap.xml",
    "overlay": ".overlay.png",
}
MARKER_SUFFIX = ".done.json"
MARKER_FORMAT = 1
SUMMARY_COLUMNS = (
    "slide",
    "status",
    "message",
    "width",
    "height",
    "mpp",
    "tiles_read",
    "tiles_total",
    "tissue_mm2",
    "candidates",
    "count",
    "count_per_mm2",
    "hotspot_count",
    "hotspot_per_mm2",
    "hotspot_x0",
    "hotspot_y0",
    "hotspot_x1",
    "hotspot_y1",
    "threshold",
    "seconds",
)
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


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """The slide files named by ``inputs``: files as given, folders' files with a
    :data:`SLIDE_EXTENSIONS` suffix (not recursing: a MIRAX slide's data folder holds no
    slide), glob patterns' matches; sorted within each input, duplicates dropped. An input
    that names nothing is an error."""
    found: List[str] = []
    seen = set()
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(
                os.path.join(item, n)
                for n in os.listdir(item)
                if n.lower().endswith(SLIDE_EXTENSIONS) and os.path.isfile(os.path.join(item, n))
            )
            if not names:
                raise FileNotFoundError(
                    f"{item}: a folder with no slide in it (looked for {', '.join(SLIDE_EXTENSIONS)})"
                )
        elif os.path.isfile(item):
            names = [item]
        elif glob.has_magic(item):
            names = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not names:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
        for n in names:
            key = os.path.abspath(n)
            if key not in seen:
                seen.add(key)
                found.append(n)
    return found


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in SLIDE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def slide_stems(paths: Sequence[str]) -> Dict[str, str]:
    """path -> output stem (the file name without its extension). Two slides with one stem
    would overwrite each other's outputs: an error naming both."""
    stems: Dict[str, str] = {}
    owner: Dict[str, str] = {}
    for p in paths:
        s = _stem(p)
        if s in owner:
            raise ValueError(
                f"{owner[s]} and {p} would both write outputs named {s!r}: "
                "run them into different --output folders"
            )
        owner[s] = p
        stems[p] = s
    return stems


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


def read_marker(out_dir: str, stem: str, path: str, binding: Dict[str, str]) -> Optional[dict]:
    """The summary row of a slide whose outputs in ``out_dir`` are complete for ``binding``
    (weights and options SHA-256) and the slide as it is now; None when it must be
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
        if set(record.get("outputs") or {}) != set(OUTPUT_SUFFIXES):
            why = why or "an output is not recorded"
    if why is not None:
        logger.info("%s: outputs in %s are not complete (%s): redoing it", path, out_dir, why)
        return None
    return dict(record["row"])


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not np.isfinite(v) else round(v, 6)
    return v


def _result_row(path: str, result: SlideResult, readout, threshold: float) -> Dict[str, Any]:
    hs = readout.hotspot
    return {
        "slide": path,
        "status": "done",
        "message": "",
        "width": result.width,
        "height": result.height,
        "mpp": result.mpp,
        "tiles_read": result.tiles_read,
        "tiles_total": result.tiles_total,
        "tissue_mm2": readout.tissue_mm2,
        "candidates": int(len(result.scores)),
        "count": readout.count,
        "count_per_mm2": readout.per_mm2,
        "hotspot_count": hs.count if hs else 0,
        "hotspot_per_mm2": hs.per_mm2 if hs else 0.0,
        "hotspot_x0": hs.x0 if hs else "",
        "hotspot_y0": hs.y0 if hs else "",
        "hotspot_x1": hs.x1 if hs else "",
        "hotspot_y1": hs.y1 if hs else "",
        "threshold": threshold,
        "seconds": result.seconds,
    }


def write_slide_outputs(
    result: SlideResult, readout, out_dir: str, stem: str, threshold: float
) -> Dict[str, str]:
    """The five per-slide files (:data:`OUTPUT_SUFFIXES`), each atomically; name -> path."""
    paths = {k: os.path.join(out_dir, stem + s) for k, s in OUTPUT_SUFFIXES.items()}
    points = points_to_json(result.xy, result.scores, result.mpp, threshold)
    atomic_write_text(paths["midog"], json.dumps(points, indent=1))
    write_geojson(paths["geojson"], result.xy, result.scores, threshold)
    write_detections_csv(paths["csv"], result.xy, result.scores, threshold)
    write_asap_xml(paths["asap"], result.xy, result.scores, threshold)
    hs = readout.hotspot
    overlay = draw_slide_overlay(
        result.thumbnail,
        result.thumb_scale,
        result.xy,
        result.scores,
        threshold,
        result.mask,
        (hs.x0, hs.y0, hs.x1, hs.y1) if hs else None,
        hs.count if hs else 0,
    )
    ok, png = cv2.imencode(".png", overlay)
    if not ok:
        raise RuntimeError(f"could not encode the overlay of {result.path}")
    atomic_write_bytes(paths["overlay"], png.tobytes())
    return paths


def _write_marker(
    out_dir: str,
    stem: str,
    path: str,
    binding: Dict[str, str],
    outputs: Dict[str, str],
    row: Dict[str, Any],
) -> None:
    record = {
        "format": MARKER_FORMAT,
        "slide": path,
        "slide_file": _slide_identity(path),
        "binding": binding,
        "outputs": {
            name: {"file": os.path.basename(p), "sha256": file_sha256(p)}
            for name, p in outputs.items()
        },
        "row": {k: _fmt(v) for k, v in row.items()},
    }
    atomic_write_text(os.path.join(out_dir, stem + MARKER_SUFFIX), json.dumps(record, indent=1))


def infer_slides(
    cfg: CfgNode,
    model: nn.Module,
    inputs: Sequence[str],
    output_dir: str,
    threshold: float,
    weights_sha256: str,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> List[Dict[str, Any]]:
    """
    Run ``model`` (eval mode, weights loaded) over this rank's share of the slides
    ``inputs`` (already expanded: :func:`expand_inputs`), writing each slide's outputs
    into ``output_dir``; returns this rank's summary rows, in input order. A slide whose
    outputs are complete for these weights and options is skipped; one that fails is
    reported (``status`` "error" and the message) and the others go on.
    """
    stems = slide_stems(inputs)
    binding = {
        "weights_sha256": weights_sha256,
        "options_sha256": options_fingerprint(cfg, threshold),
    }
    predictor = SlidePredictor(cfg, model)
    area, aspect = cfg.TEST.HOTSPOT.AREA_MM2, cfg.TEST.HOTSPOT.ASPECT
    os.makedirs(output_dir, exist_ok=True)
    rows = []
    for path in list(inputs)[rank::world_size]:
        stem = stems[path]
        done = read_marker(output_dir, stem, path, binding)
        if done is not None:
            done.update(status="skipped", message="outputs complete from an earlier run")
            logger.info("%s: complete in %s, skipped", path, output_dir)
            rows.append(done)
            continue
        # temporaries of an earlier run killed while writing this slide's outputs
        for tmp in glob.glob(os.path.join(glob.escape(output_dir), f".{glob.escape(stem)}.*.tmp")):
            os.remove(tmp)
        start = time.perf_counter()
        try:
            result = _predict_with_progress(predictor, path, stem, progress)
            readout = slide_readout(result, threshold, area, aspect)
            outputs = write_slide_outputs(result, readout, output_dir, stem, threshold)
            row = _result_row(path, result, readout, threshold)
            row["seconds"] = time.perf_counter() - start
            _write_marker(output_dir, stem, path, binding, outputs, row)
            logger.info(
                "%s: %d mitotic figures (score >= %.3f) in %.2f mm² of tissue, %d of %d tiles, "
                "%.1f s",
                path,
                readout.count,
                threshold,
                readout.tissue_mm2,
                result.tiles_read,
                result.tiles_total,
                row["seconds"],
            )
        except Exception as e:  # one bad slide is reported, the others go on
            logger.error("%s: failed: %s\n%s", path, e, traceback.format_exc())
            row = {c: "" for c in SUMMARY_COLUMNS}
            row.update(
                slide=path,
                status="error",
                message=f"{type(e).__name__}: {e}",
                seconds=time.perf_counter() - start,
            )
        rows.append({k: _fmt(v) for k, v in row.items()})
    return rows


def _predict_with_progress(predictor: SlidePredictor, path: str, stem: str, progress: bool):
    if not progress:
        return predictor.predict(path)
    from tqdm import tqdm

    bar = tqdm(desc=stem, unit="tile", dynamic_ncols=True, leave=True)
    try:
        return predictor.predict(path, progress=bar.update, on_tiles=lambda n: _set_total(bar, n))
    finally:
        bar.close()


def _set_total(bar, n: int) -> None:
    bar.total = n
    bar.refresh()


def gather_rows(rows: List[Dict[str, Any]], inputs: Sequence[str]) -> List[Dict[str, Any]]:
    """Every rank's rows on rank 0 (an empty list on the others), in input order."""
    if comm.get_world_size() == 1:
        everything = [rows]
    else:
        everything = comm.gather(rows, dst=0)
    if not comm.is_main_process():
        return []
    by_slide = {r["slide"]: r for part in everything for r in part}
    return [by_slide[p] for p in inputs if p in by_slide]


def write_summary(rows: Iterable[Dict[str, Any]], path: str) -> None:
    """``summary.csv``: one row a slide, :data:`SUMMARY_COLUMNS`, atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _fmt(r.get(c, "")) for c in SUMMARY_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def weights_identity(weights: str) -> str:
    """SHA-256 of a weights file (what the completion markers are bound to)."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS {weights!r} is not a file")
    return file_sha256(weights)


def summary_counts(rows: Sequence[Dict[str, Any]]) -> Tuple[int, int, int]:
    """(done, skipped, error) slides in ``rows``."""
    status = [r.get("status") for r in rows]
    return status.count("done"), status.count("skipped"), status.count("error")
