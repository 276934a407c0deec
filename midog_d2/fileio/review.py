"""Review pages: what a pathologist opens to check a slide's count, from disk, without a viewer.

``<stem>.html`` holds everything it shows (images inlined as data URIs: no server, no
network, no file beside it): the slide's numbers with their units and where they came from,
the overlay with a clickable ring on each detection, a gallery of every detection at or
above the threshold (highest score first, a crop of about 60 µm at full resolution with
its score and level-0 position) and of the candidates just below it. ``index.html`` lists
the slides of a run. Each number a test or a reader may look up carries ``data-field``; a
small inline script decodes every image of the page again, counts those that loaded
(``data-images-ok``, ``data-images-bad`` on ``<body>``) and says so on the page when one did
not.
"""

import base64
import html
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["GalleryItem", "image_data_uri", "index_html", "review_html"]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em}
.file{color:#666;font-size:.9em;word-break:break-all}
table{border-collapse:collapse} td,th{padding:.25em .8em;text-align:left;vertical-align:top}
table.numbers th{font-weight:600;color:#444} tr:nth-child(even){background:#f4f4f4}
.note{color:#a04000} #overlay svg{display:block;max-width:100%;max-height:min(90vh,1100px);width:auto;height:auto}
#overlay circle{fill:transparent;stroke:none;cursor:pointer}
#overlay circle:hover{stroke:#00e0ff;stroke-width:3}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:164px} figure img{width:160px;height:160px;border:2px solid #ccc}
figure:target img{border-color:#00a0ff}
figcaption{font-size:.78em;color:#333} .below figure img{border-style:dashed}
#image-check{display:none;background:#fdd;padding:.5em}
"""

_SCRIPT = """
(function(){var srcs=[],i,imgs=document.images,svg=document.querySelectorAll('svg image');
for(i=0;i<imgs.length;i++)srcs.push(imgs[i].getAttribute('src'));
for(i=0;i<svg.length;i++)srcs.push(svg[i].getAttribute('href'));
var ok=0,bad=0,left=srcs.length;
function done(){document.body.setAttribute('data-images-ok',ok);
document.body.setAttribute('data-images-bad',bad);
if(bad){var e=document.getElementById('image-check');e.style.display='block';
e.textContent=bad+' image(s) of this page did not load.';}}
if(!left)done();
srcs.forEach(function(s){var im=new Image();
im.onload=function(){ok++;if(!--left)done();};
im.onerror=function(){bad++;if(!--left)done();};im.src=s;});})();
"""


@dataclass(frozen=True)
class GalleryItem:
    """One detection of the gallery: its rank, score, level-0 position and crop (RGB)."""

    rank: int
    score: float
    x: float
    y: float
    crop: np.ndarray


def image_data_uri(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> str:
    """``rgb`` (H, W, 3 uint8) as a ``data:`` URI (JPEG or PNG)."""
    bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
    ext, params = (".png", []) if fmt == "png" else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ValueError("could not encode an image of the review page")
    mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "–" if not np.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def _gallery(items: Sequence[GalleryItem], css: str) -> str:
    figs = []
    for it in items:
        figs.append(
            f'<figure id="d{it.rank}"><img src="{image_data_uri(it.crop)}" '
            f'alt="detection {it.rank}, score {it.score:.3f}">'
            f"<figcaption>#{it.rank} · score {it.score:.3f}<br>"
            f"x {it.x:.0f}, y {it.y:.0f} px</figcaption></figure>"
        )
    return f'<div class="gallery {css}">' + "".join(figs) + "</div>"


def review_html(
    title: str,
    slide_path: str,
    numbers: Sequence[Tuple[str, str, Any]],
    notes: Sequence[str],
    overlay_rgb: np.ndarray,
    rings: Sequence[Tuple[float, float, int]],
    ring_radius: float,
    above: Sequence[GalleryItem],
    n_above: int,
    below: Sequence[GalleryItem],
    n_below: int,
) -> str:
    """A slide's review page. ``numbers``: (label, field name, value) rows; ``rings``:
    (x, y) in overlay pixels and the gallery rank each links to; ``above``/``below``: the
    gallery items shown of ``n_above`` detections at or above the threshold and of the
    ``n_below`` candidates below it."""
    h, w = overlay_rgb.shape[:2]
    rows = "".join(
        f'<tr><th>{_e(label)}</th><td data-field="{_e(field)}">{_e(_fmt(value))}</td></tr>'
        for label, field, value in numbers
    )
    note_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    circles = "".join(
        f'<a href="#d{rank}"><circle cx="{x:.1f}" cy="{y:.1f}" r="{ring_radius:.1f}">'
        f"<title>#{rank}</title></circle></a>"
        for x, y, rank in rings
    )
    shown = f"all {n_above}" if len(above) == n_above else f"the first {len(above)} of {n_above}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{_e(title)} · mitotic figures · midog-d2</title><style>{_STYLE}</style></head>
<body>
<div id="image-check"></div>
<h1>{_e(title)}</h1><p class="file">{_e(slide_path)}</p>
<table class="numbers">{rows}</table>{note_html}
<h2>The slide</h2>
<p>Red rings: detections at or above the threshold (click one for its crop); green: the tissue
analysed; yellow: the hotspot window.</p>
<div id="overlay"><svg viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">
<image href="{image_data_uri(overlay_rgb)}" width="{w}" height="{h}"/>{circles}</svg></div>
<h2>Mitotic figures: {shown}, highest score first</h2>
{_gallery(above, "above")}
<h2>Candidates just below the threshold: {len(below)} of {n_below}</h2>
{_gallery(below, "below")}
<script>{_SCRIPT}</script>
</body></html>
"""


def index_html(rows: Sequence[Dict[str, Any]], pages: Dict[str, Optional[str]]) -> str:
    """The run's ``index.html``: one row a slide (``summary.csv``'s rows) with a link to its
    review page (``pages``: slide path -> page file name, None for a failed slide)."""
    cols = (
        ("count", "mitotic figures"),
        ("count_per_mm2", "per mm² of tissue"),
        ("tissue_mm2", "tissue mm²"),
        ("hotspot_count", "hotspot count"),
        ("hotspot_per_mm2", "hotspot per mm² of tissue"),
        ("mpp", "µm/px"),
        ("mpp_source", "µm/px from"),
        ("threshold", "threshold"),
        ("status", "status"),
        ("message", "notes"),
    )
    head = "<tr><th>slide</th>" + "".join(f"<th>{_e(c)}</th>" for _, c in cols) + "</tr>"
    body = []
    for r in rows:
        name = os.path.basename(str(r.get("slide", "")))
        page = pages.get(r.get("slide"))
        link = f'<a href="{_e(page)}">{_e(name)}</a>' if page else _e(name)
        cells = "".join(f'<td data-field="{k}">{_e(_fmt(r.get(k, "")))}</td>' for k, _ in cols)
        body.append(f'<tr data-slide="{_e(name)}"><td>{link}</td>{cells}</tr>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>midog-d2: slides</title>
<style>{_STYLE}</style></head><body>
<h1>Mitotic figures: {len(rows)} slides</h1>
<table>{head}{"".join(body)}</table>
</body></html>
"""
