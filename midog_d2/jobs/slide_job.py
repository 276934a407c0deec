"""Inference over many slides: inputs, per-slide outputs, completion markers and the summary.

For each slide ``DIR/<stem>`` gets the challenge JSON (``.midog.json``), QuPath GeoJSON
(``.geojson``), a CSV (``.csv``), ASAP XML (``.asap.xml``; not for PNG and JPEG, which ASAP
cannot open) and an overlay (``.overlay.png``), each written atomically, then
``<stem>.done.json``: the completion marker, written last and bound to the weights' SHA-256,
the options (every config key that changes a result, and the threshold), the precision and
device the model ran at, the slide file's size and modification time and each output's
SHA-256. A rerun skips a slide whose marker matches all of that and redoes any other, so a
job killed mid-way loses at most the slide in progress. The tool's own outputs are never
taken for slides, even when ``DIR`` is an input folder. With several processes
(Detectron2's ``launch``) each rank takes every world-size-th slide; rank 0 gathers the rows
and writes ``summary.csv`` and ``index.html``, which links every slide's review page
(``<stem>.html``).
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
from ..fileio.atomic import atomic_write_bytes, atomic_write_text
from ..fileio.exports import write_asap_xml, write_detections_csv, write_geojson
from ..fileio.points import points_to_json
from ..fileio.review import index_html
from ..fileio.slide import MPP_FALLBACK, slide_bounds
from ..inference.predictor import resolve_precision
from ..inference.slide_predictor import SlidePredictor, SlideResult, slide_readout
from ..utils.visualizer import draw_slide_overlay
from .slide_pages import overlay_lines, review_page
from .slide_progress import JobProgress, predict_with_progress

__all__ = [
    "MARKER_SUFFIX",
    "NOT_FOR_ASAP",
    "OUTPUT_SUFFIXES",
    "SLIDE_EXTENSIONS",
    "SUMMARY_COLUMNS",
    "expand_inputs",
    "gather_rows",
    "infer_slides",
    "is_output",
    "options_fingerprint",
    "read_marker",
    "run_binding",
    "slide_outputs",
    "slide_stems",
    "summary_counts",
    "weights_identity",
    "write_index",
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
    "review": ".html",
}
# Images ASAP (OpenSlide and its own TIFF readers) cannot open: no ASAP XML for them.
NOT_FOR_ASAP = (".png", ".jpg", ".jpeg")
INDEX_PAGE = "index.html"
MARKER_SUFFIX = ".done.json"
MARKER_FORMAT = 2
SUMMARY_COLUMNS = (
    "slide",
    "status",
    "message",
    "width",
    "height",
    "mpp",
    "mpp_source",
    "tiles_read",
    "tiles_total",
    "tissue_mm2",
    "candidates",
    "count",
    "count_per_mm2",
    "hotspot_count",
    "hotspot_per_mm2",
    "hotspot_area_mm2",
    "hotspot_tissue_mm2",
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


def is_output(path: str) -> bool:
    """Whether ``path`` is named like one of this tool's outputs (an overlay PNG, ...)."""
    name = os.path.basename(path).lower()
    return name.endswith(tuple(OUTPUT_SUFFIXES.values()) + (MARKER_SUFFIX,))


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """The slide files named by ``inputs``: files as given, folders' files with a
    :data:`SLIDE_EXTENSIONS` suffix (not recursing: a MIRAX slide's data folder holds no
    slide), glob patterns' matches; sorted within each input, duplicates dropped; the
    tool's own outputs (:func:`is_output`) left out of folders and patterns, and an error
    when named. An input that names nothing is an error."""
    found: List[str] = []
    seen = set()
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(
                os.path.join(item, n)
                for n in os.listdir(item)
                if n.lower().endswith(SLIDE_EXTENSIONS)
                and not is_output(n)
                and os.path.isfile(os.path.join(item, n))
            )
            if not names:
                raise FileNotFoundError(
                    f"{item}: a folder with no slide in it (looked for {', '.join(SLIDE_EXTENSIONS)})"
                )
        elif os.path.isfile(item):
            if is_output(item):
                raise ValueError(f"{item}: an output of tools/infer_slides.py, not a slide")
            names = [item]
        elif glob.has_magic(item):
            names = sorted(
                p for p in glob.glob(item, recursive=True) if os.path.isfile(p) and not is_output(p)
            )
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


def slide_outputs(path: str) -> Dict[str, str]:
    """The outputs (name -> suffix, of :data:`OUTPUT_SUFFIXES`) written for the slide
    ``path``: all, but no ASAP XML for an image ASAP cannot open."""
    out = dict(OUTPUT_SUFFIXES)
    if path.lower().endswith(NOT_FOR_ASAP):
        del out["asap"]
    return out


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
        if set(record.get("outputs") or {}) != set(slide_outputs(path)):
            why = why or "an output is not recorded"
    if why is not None:
        logger.info("%s: outputs in %s are not complete (%s): redoing it", path, out_dir, why)
        return None
    return dict(record["row"])


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not np.isfinite(v) else round(v, 6)
    return v


def _notes(path: str, result: SlideResult, readout, hotspot_area: float) -> List[str]:
    """What a reader of the numbers must know: assumed units, a clipped hotspot window,
    an output left out."""
    notes = []
    if result.mpp_source == MPP_FALLBACK:
        notes.append(
            f"µm/px not in the file: ASSUMED {result.mpp:g} (DATASETS.MIDOG.FALLBACK_MPP; "
            "--mpp sets it), so every mm and mm² is too"
        )
    hs = readout.hotspot
    if hs is not None and hs.clipped:
        notes.append(
            f"the image is smaller than the {hotspot_area:g} mm² hotspot window: the window "
            f"is the image's width or height, {hs.area_mm2:.3g} mm² ({hs.tissue_mm2:.3g} mm² "
            "of tissue)"
        )
    if "asap" not in slide_outputs(path):
        notes.append(f"no ASAP XML: ASAP cannot open {os.path.splitext(path)[1]} images")
    return notes


def _result_row(
    path: str, result: SlideResult, readout, threshold: float, notes: Sequence[str]
) -> Dict[str, Any]:
    hs = readout.hotspot
    return {
        "slide": path,
        "status": "done",
        "message": "; ".join(notes),
        "width": result.width,
        "height": result.height,
        "mpp": result.mpp,
        "mpp_source": result.mpp_source,
        "tiles_read": result.tiles_read,
        "tiles_total": result.tiles_total,
        "tissue_mm2": readout.tissue_mm2,
        "candidates": int(len(result.scores)),
        "count": readout.count,
        "count_per_mm2": readout.per_mm2,
        "hotspot_count": hs.count if hs else 0,
        "hotspot_per_mm2": hs.per_mm2 if hs else 0.0,
        "hotspot_area_mm2": hs.area_mm2 if hs else "",
        "hotspot_tissue_mm2": hs.tissue_mm2 if hs else "",
        "hotspot_x0": hs.x0 if hs else "",
        "hotspot_y0": hs.y0 if hs else "",
        "hotspot_x1": hs.x1 if hs else "",
        "hotspot_y1": hs.y1 if hs else "",
        "threshold": threshold,
        "seconds": result.seconds,
    }


def write_slide_outputs(
    result: SlideResult,
    readout,
    out_dir: str,
    stem: str,
    threshold: float,
    id_key: Optional[str] = None,
    threshold_source: str = "",
    weights_sha256: str = "",
    notes: Sequence[str] = (),
) -> Dict[str, str]:
    """The slide's files (:func:`slide_outputs`), each atomically; name -> path. The
    GeoJSON is in QuPath's frame of the slide (its bounds' corner subtracted when it
    declares them), its ids derived from ``id_key`` (the slide's and the weights' SHA-256)
    and each point."""
    paths = {k: os.path.join(out_dir, stem + s) for k, s in slide_outputs(result.path).items()}
    points = points_to_json(result.xy, result.scores, result.mpp, threshold)
    atomic_write_text(paths["midog"], json.dumps(points, indent=1))
    bounds = slide_bounds(result.path)
    write_geojson(
        paths["geojson"],
        result.xy,
        result.scores,
        threshold,
        id_key=id_key,
        offset=bounds[:2] if bounds else (0, 0),
    )
    write_detections_csv(paths["csv"], result.xy, result.scores, threshold)
    if "asap" in paths:
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
        mpp=result.mpp,
        title=os.path.basename(result.path),
        lines=overlay_lines(result, readout),
    )
    ok, png = cv2.imencode(".png", overlay)
    if not ok:
        raise RuntimeError(f"could not encode the overlay of {result.path}")
    atomic_write_bytes(paths["overlay"], png.tobytes())
    page = review_page(
        result, readout, threshold, overlay[:, :, ::-1], threshold_source, weights_sha256, notes
    )
    atomic_write_text(paths["review"], page)
    return paths


def write_index(rows: Sequence[Dict[str, Any]], out_dir: str) -> str:
    """``out_dir/index.html`` over the slides of ``rows`` (summary rows), each linked to its
    review page when it has one; returns its path."""
    stems = slide_stems([r["slide"] for r in rows])
    pages = {
        r["slide"]: (
            stems[r["slide"]] + OUTPUT_SUFFIXES["review"]
            if r.get("status") in ("done", "skipped")
            else None
        )
        for r in rows
    }
    path = os.path.join(out_dir, INDEX_PAGE)
    atomic_write_text(path, index_html(rows, pages))
    return path


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
    threshold_source: str = "",
) -> List[Dict[str, Any]]:
    """
    Run ``model`` (eval mode, weights loaded) over this rank's share of the slides
    ``inputs`` (already expanded: :func:`expand_inputs`), writing each slide's outputs
    into ``output_dir``; returns this rank's summary rows, in input order. A slide whose
    outputs are complete for these weights and options is skipped; one that fails is
    reported (``status`` "error" and the message) and the others go on.
    """
    stems = slide_stems(inputs)
    binding = run_binding(cfg, threshold, weights_sha256)
    predictor = SlidePredictor(cfg, model)
    area, aspect = cfg.TEST.HOTSPOT.AREA_MM2, cfg.TEST.HOTSPOT.ASPECT
    os.makedirs(output_dir, exist_ok=True)
    rows = []
    mine = list(inputs)[rank::world_size]
    job = JobProgress(len(mine))
    for k, path in enumerate(mine, start=1):
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
            id_key = f"{file_sha256(path)}:{weights_sha256}"
            result = predict_with_progress(
                predictor, path, f"[{k}/{len(mine)}] {stem}", job, progress
            )
            readout = slide_readout(result, threshold, area, aspect)
            notes = _notes(path, result, readout, area)
            outputs = write_slide_outputs(
                result,
                readout,
                output_dir,
                stem,
                threshold,
                id_key,
                threshold_source,
                weights_sha256,
                notes,
            )
            row = _result_row(path, result, readout, threshold, notes)
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
            # One line on the console; the traceback goes to the log file (DEBUG).
            logger.error("%s: failed: %s: %s", path, type(e).__name__, e)
            logger.debug("%s: traceback\n%s", path, traceback.format_exc())
            row = {c: "" for c in SUMMARY_COLUMNS}
            row.update(
                slide=path,
                status="error",
                message=f"{type(e).__name__}: {e}",
                seconds=time.perf_counter() - start,
            )
        rows.append({c: _fmt(v) for c, v in row.items()})
        job.slide_done()
    return rows


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
