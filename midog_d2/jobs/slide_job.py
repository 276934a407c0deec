"""Inference over many slides: the loop over the slides and the summary. Which files are
slides is :mod:`.slide_inputs`, what is written for each :mod:`.slide_outputs` (a table),
the completion markers :mod:`.slide_markers`.

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
import io
import logging
import os
import time
import traceback
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np
from torch import nn

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..checkpoint import file_sha256
from ..fileio.atomic import atomic_write_text
from ..fileio.review import index_html
from ..fileio.slide import MPP_FALLBACK
from ..inference.slide_predictor import SlidePredictor, SlideResult, slide_readout
from .slide_inputs import SLIDE_EXTENSIONS, expand_inputs, is_output, slide_stems
from .slide_markers import (
    MARKER_SUFFIX,
    options_fingerprint,
    read_marker,
    run_binding,
    weights_identity,
    write_marker,
)
from .slide_outputs import (
    NOT_FOR_ASAP,
    OUTPUT_SUFFIXES,
    OUTPUTS,
    SlideOutputContext,
    slide_outputs,
    write_slide_outputs,
)
from .slide_progress import JobProgress, predict_with_progress

# The job's parts live in slide_inputs, slide_markers and slide_outputs; their names are
# also importable from here.
__all__ = [
    "MARKER_SUFFIX",
    "NOT_FOR_ASAP",
    "OUTPUTS",
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

INDEX_PAGE = "index.html"
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
        done = read_marker(output_dir, stem, path, binding, slide_outputs(path))
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
            ctx = SlideOutputContext(
                result, readout, threshold, id_key, threshold_source, weights_sha256, notes
            )
            outputs = write_slide_outputs(ctx, output_dir, stem)
            row = _result_row(path, result, readout, threshold, notes)
            row["seconds"] = time.perf_counter() - start
            marker_row = {k: _fmt(v) for k, v in row.items()}
            write_marker(output_dir, stem, path, binding, outputs, marker_row)
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


def summary_counts(rows: Sequence[Dict[str, Any]]) -> Tuple[int, int, int]:
    """(done, skipped, error) slides in ``rows``."""
    status = [r.get("status") for r in rows]
    return status.count("done"), status.count("skipped"), status.count("error")
