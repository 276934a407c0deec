"""A slide's outputs, as a table: each row names an output, its file suffix, its writer and the
slides it applies to. A new format is one row plus its writer."""

import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..fileio.atomic import atomic_write_bytes, atomic_write_text
from ..fileio.exports import write_asap_xml, write_detections_csv, write_geojson
from ..fileio.points import points_to_json
from ..fileio.slide import slide_bounds
from ..inference.slide_predictor import SlideResult
from ..utils.visualizer import draw_slide_overlay
from .slide_pages import overlay_lines, review_page

__all__ = [
    "NOT_FOR_ASAP",
    "OUTPUTS",
    "OUTPUT_SUFFIXES",
    "SlideOutput",
    "SlideOutputContext",
    "slide_outputs",
    "write_slide_outputs",
]

# Images ASAP (OpenSlide and its own TIFF readers) cannot open: no ASAP XML for them.
NOT_FOR_ASAP = (".png", ".jpg", ".jpeg")


@dataclass
class SlideOutputContext:
    """What a writer may use: one slide's result and read-out, the operating threshold, the
    GeoJSON ids' key (the slide's and the weights' SHA-256), where the threshold came from,
    the weights' SHA-256 and the notes a reader must see."""

    result: SlideResult
    readout: Any
    threshold: float
    id_key: Optional[str] = None
    threshold_source: str = ""
    weights_sha256: str = ""
    notes: Sequence[str] = ()

    @cached_property
    def overlay(self) -> np.ndarray:
        """The thumbnail overlay (BGR), drawn once for the PNG and the review page."""
        r, hs = self.result, self.readout.hotspot
        return draw_slide_overlay(
            r.thumbnail,
            r.thumb_scale,
            r.xy,
            r.scores,
            self.threshold,
            r.mask,
            (hs.x0, hs.y0, hs.x1, hs.y1) if hs else None,
            hs.count if hs else 0,
            mpp=r.mpp,
            title=os.path.basename(r.path),
            lines=overlay_lines(r, self.readout),
        )


def _midog_json(ctx: SlideOutputContext, path: str) -> None:
    r = ctx.result
    points = points_to_json(r.xy, r.scores, r.mpp, ctx.threshold)
    atomic_write_text(path, json.dumps(points, indent=1))


def _geojson(ctx: SlideOutputContext, path: str) -> None:
    # in QuPath's frame of the slide: its bounds' corner subtracted when it declares them
    r = ctx.result
    bounds = slide_bounds(r.path)
    offset = bounds[:2] if bounds else (0, 0)
    write_geojson(path, r.xy, r.scores, ctx.threshold, id_key=ctx.id_key, offset=offset)


def _csv(ctx: SlideOutputContext, path: str) -> None:
    write_detections_csv(path, ctx.result.xy, ctx.result.scores, ctx.threshold)


def _asap(ctx: SlideOutputContext, path: str) -> None:
    write_asap_xml(path, ctx.result.xy, ctx.result.scores, ctx.threshold)


def _overlay_png(ctx: SlideOutputContext, path: str) -> None:
    ok, png = cv2.imencode(".png", ctx.overlay)
    if not ok:
        raise RuntimeError(f"could not encode the overlay of {ctx.result.path}")
    atomic_write_bytes(path, png.tobytes())


def _review_page(ctx: SlideOutputContext, path: str) -> None:
    page = review_page(
        ctx.result,
        ctx.readout,
        ctx.threshold,
        ctx.overlay[:, :, ::-1],
        ctx.threshold_source,
        ctx.weights_sha256,
        ctx.notes,
    )
    atomic_write_text(path, page)


def _every_slide(path: str) -> bool:
    return True


def _asap_can_open(path: str) -> bool:
    return not path.lower().endswith(NOT_FOR_ASAP)


@dataclass(frozen=True)
class SlideOutput:
    """One row of :data:`OUTPUTS`: ``DIR/<stem><suffix>`` written by ``write(ctx, path)``
    (atomically) for the slides ``applies(slide path)`` accepts."""

    name: str
    suffix: str
    write: Callable[[SlideOutputContext, str], None]
    applies: Callable[[str], bool] = _every_slide


# In the order they are written; the completion marker comes after all of them.
OUTPUTS: Tuple[SlideOutput, ...] = (
    SlideOutput("midog", ".midog.json", _midog_json),
    SlideOutput("geojson", ".geojson", _geojson),
    SlideOutput("csv", ".csv", _csv),
    SlideOutput("asap", ".asap.xml", _asap, _asap_can_open),
    SlideOutput("overlay", ".overlay.png", _overlay_png),
    SlideOutput("review", ".html", _review_page),
)
OUTPUT_SUFFIXES: Dict[str, str] = {o.name: o.suffix for o in OUTPUTS}


def slide_outputs(path: str) -> Dict[str, str]:
    """The outputs (name -> suffix) written for the slide ``path``: the rows of
    :data:`OUTPUTS` that apply to it."""
    return {o.name: o.suffix for o in OUTPUTS if o.applies(path)}


def write_slide_outputs(ctx: SlideOutputContext, out_dir: str, stem: str) -> Dict[str, str]:
    """Every output of :data:`OUTPUTS` that applies to the slide, in the table's order, each
    atomically; name -> path."""
    paths = {}
    for o in OUTPUTS:
        if o.applies(ctx.result.path):
            paths[o.name] = os.path.join(out_dir, stem + o.suffix)
            o.write(ctx, paths[o.name])
    return paths
