"""Detections as the files viewers and spreadsheets read: QuPath GeoJSON, ASAP XML, CSV.

Coordinates are pixels of the slide's level 0, origin top left (midog.md §5), in the frame of
the program that reads them: the CSV and ASAP's XML in OpenSlide's (ASAP does not crop);
QuPath's GeoJSON in the frame QuPath displays, which for a slide that declares
``openslide.bounds-*`` (MIRAX, some SCN and NDPI) starts at the bounds' corner, so ``offset``
is subtracted there. A detection with ``score >= threshold`` is a "mitotic figure", one below
it a "non-mitotic figure" (kept, as in the challenge JSON, so that a reader can choose another
threshold).

* QuPath (0.4+) imports a GeoJSON ``FeatureCollection`` whose Features carry a UUID ``id``, a
  ``Point`` geometry and, inside ``properties``, ``objectType: "detection"``, a
  ``classification`` ``{"name", "color": [r, g, b]}`` and ``measurements`` ``{"score"}``.
  QuPath recognises an object it already holds by its id alone, so the ids are UUIDs derived
  from ``id_key`` (the slide's and the weights' SHA-256) and the point: a rerun writes the same
  ids and re-importing its file replaces the points instead of adding them twice. The frame
  is stated in the collection's foreign member ``midog_d2`` (RFC 7946 §6.1; QuPath ignores it).
* ASAP reads ``<ASAP_Annotations>`` with one ``Dot`` annotation per point in a declared group;
  it has no score field, so the score is in the annotation's ``Name``; the frame is stated in
  an XML comment.

Every writer writes to a temporary name in the target folder and renames it, so a reader
never sees half a file.
"""

import csv
import io
import json
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple
from xml.sax.saxutils import quoteattr

import numpy as np

from ..constants import MITOTIC_NAME, NON_MITOTIC_NAME
from .atomic import atomic_write_text

__all__ = [
    "CLASS_COLORS",
    "detections_to_asap_xml",
    "detections_to_csv",
    "detections_to_geojson",
    "write_asap_xml",
    "write_detections_csv",
    "write_geojson",
]

# Colours of the two classes (RGB): red above the threshold, blue below.
CLASS_COLORS: Dict[str, Tuple[int, int, int]] = {
    MITOTIC_NAME: (220, 20, 60),
    NON_MITOTIC_NAME: (65, 105, 225),
}


def _points(xy: Any, scores: Any) -> Tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(xy) != len(scores):
        raise ValueError(f"{len(xy)} points but {len(scores)} scores")
    bad = ~(np.isfinite(xy).all(axis=1) & np.isfinite(scores))
    if bad.any():
        raise ValueError(f"detection {int(np.flatnonzero(bad)[0])} is not finite")
    return xy, scores


def _name(score: float, threshold: float) -> str:
    return MITOTIC_NAME if score >= threshold else NON_MITOTIC_NAME


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


# The namespace of the GeoJSON ids (uuid5): fixed, so that equal inputs give equal ids.
_ID_NAMESPACE = uuid.UUID("6d1f0c1e-3b7a-5c2e-9f4d-0a1b2c3d4e5f")


def _ids(xy: np.ndarray, id_key: Optional[str]) -> List[str]:
    """A UUID a point: random without ``id_key``, else uuid5 of the key and the point's
    level-0 position (a repeated position gets its occurrence number too)."""
    if id_key is None:
        return [str(uuid.uuid4()) for _ in range(len(xy))]
    seen: Dict[str, int] = {}
    out = []
    for x, y in xy:
        name = f"{id_key}:{x:.2f},{y:.2f}"
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(str(uuid.uuid5(_ID_NAMESPACE, name if k == 0 else f"{name}#{k}")))
    return out


def detections_to_geojson(
    xy: Any,
    scores: Any,
    threshold: float,
    id_key: Optional[str] = None,
    offset: Tuple[float, float] = (0.0, 0.0),
) -> Dict[str, Any]:
    """The QuPath GeoJSON ``FeatureCollection`` of point detections (level-0 pixels, written
    less ``offset``: the corner of the slide's bounds when it declares them): one ``Point``
    Feature each, UUID ids derived from ``id_key`` and the point (random without it)."""
    xy, scores = _points(xy, scores)
    ox, oy = float(offset[0]), float(offset[1])
    features = []
    for uid, (x, y), s in zip(_ids(xy, id_key), xy, scores):
        name = _name(s, threshold)
        features.append(
            {
                "type": "Feature",
                "id": uid,
                "geometry": {"type": "Point", "coordinates": [float(x) - ox, float(y) - oy]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": list(CLASS_COLORS[name])},
                    "measurements": {"score": float(s)},
                },
            }
        )
    frame = "level-0 pixels, origin at the image's top left"
    if ox or oy:
        frame += (
            f" as QuPath shows it (cropped to openslide.bounds: OpenSlide's x - {ox:g}, y - {oy:g})"
        )
    return {"type": "FeatureCollection", "midog_d2": {"frame": frame}, "features": features}


def detections_to_asap_xml(xy: Any, scores: Any, threshold: float) -> str:
    """ASAP's annotation XML: one ``Dot`` a detection in the group of its class (the
    score in its ``Name``), and both groups declared."""
    xy, scores = _points(xy, scores)
    lines = [
        '<?xml version="1.0"?>',
        "<!-- midog_d2: level-0 pixels of the slide as OpenSlide and ASAP read it -->",
        "<ASAP_Annotations>",
        "\t<Annotations>",
    ]
    for i, ((x, y), s) in enumerate(zip(xy, scores)):
        name = _name(s, threshold)
        lines += [
            f"\t\t<Annotation Name={quoteattr(f'{name} {i} ({s:.3f})')} Type=\"Dot\" "
            f"PartOfGroup={quoteattr(name)} Color={quoteattr(_hex(CLASS_COLORS[name]))}>",
            "\t\t\t<Coordinates>",
            f'\t\t\t\t<Coordinate Order="0" X="{x:.2f}" Y="{y:.2f}" />',
            "\t\t\t</Coordinates>",
            "\t\t</Annotation>",
        ]
    lines += ["\t</Annotations>", "\t<AnnotationGroups>"]
    for name, rgb in CLASS_COLORS.items():
        lines += [
            f'\t\t<Group Name={quoteattr(name)} PartOfGroup="None" Color={quoteattr(_hex(rgb))}>',
            "\t\t\t<Attributes />",
            "\t\t</Group>",
        ]
    lines += ["\t</AnnotationGroups>", "</ASAP_Annotations>"]
    return "\n".join(lines) + "\n"


def detections_to_csv(xy: Any, scores: Any, threshold: float) -> str:
    """CSV text: ``x,y,score,label`` a detection (level-0 pixels)."""
    xy, scores = _points(xy, scores)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["x", "y", "score", "label"])
    for (x, y), s in zip(xy, scores):
        w.writerow([f"{x:.2f}", f"{y:.2f}", f"{s:.6f}", _name(s, threshold)])
    return buf.getvalue()


def write_geojson(path: str, xy: Any, scores: Any, threshold: float, **kw: Any) -> None:
    """:func:`detections_to_geojson` written atomically to ``path``."""
    atomic_write_text(path, json.dumps(detections_to_geojson(xy, scores, threshold, **kw)))


def write_asap_xml(path: str, xy: Any, scores: Any, threshold: float) -> None:
    """:func:`detections_to_asap_xml` written atomically to ``path``."""
    atomic_write_text(path, detections_to_asap_xml(xy, scores, threshold))


def write_detections_csv(path: str, xy: Any, scores: Any, threshold: float) -> None:
    """:func:`detections_to_csv` written atomically to ``path``."""
    atomic_write_text(path, detections_to_csv(xy, scores, threshold))
