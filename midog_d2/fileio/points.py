"""Detection files: the MIDOG challenge's points JSON and Detectron2's COCO results.

Formats:

* MIDOG "Multiple points" JSON (midog.md §3), one object per image, coordinates in
  millimetres (pixel centre × µm/px / 1000). Points named "mitotic figure" are the
  above-threshold detections; "non-mitotic figure" ones are kept for AP only.
  :func:`load_point_predictions` accepts it as

  - a single file holding one such object (its image is the ground truth's only image,
    or the one whose file name/stem equals the file's stem),
  - one JSON object mapping image keys to such objects (or to bare point lists),
  - a directory of per-image files ``<key>.json``;

  an image key is the image's file name (``001.tiff``), its stem (``001``) or its id.
* Detectron2's ``coco_instances_results.json``: a list of
  ``{image_id, category_id, bbox: [x, y, w, h], score}`` (:func:`load_coco_results`).

Scoring them is ``midog_d2.evaluation``'s; this module only reads and writes files.
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

from detectron2.structures import Instances

from ..constants import MITOTIC_FIGURE, MITOTIC_NAME, NON_MITOTIC_NAME

__all__ = [
    "MITOTIC_NAME",
    "NON_MITOTIC_NAME",
    "points_to_json",
    "instances_to_points_json",
    "parse_points_json",
    "load_point_predictions",
    "load_coco_results",
    "detect_prediction_format",
    "json_safe",
]


PathLike = Union[str, os.PathLike]


def points_to_json(
    centres_px: np.ndarray, scores: np.ndarray, mpp: float, threshold: float
) -> Dict[str, Any]:
    """Point detections (level-0 pixels) as a MIDOG "Multiple points" object: mm
    coordinates, points with ``score >= threshold`` named "mitotic figure", the
    others "non-mitotic figure"."""
    mm = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2) * (mpp / 1000.0)
    points = [
        {
            "point": [float(x), float(y), 0],
            "probability": float(s),
            "name": MITOTIC_NAME if s >= threshold else NON_MITOTIC_NAME,
        }
        for (x, y), s in zip(mm, np.asarray(scores, dtype=np.float64).reshape(-1))
    ]
    return {"type": "Multiple points", "points": points, "version": {"major": 1, "minor": 0}}


def instances_to_points_json(
    instances: Instances,
    mpp: float,
    threshold: float,
    mitotic_class: Optional[int] = MITOTIC_FIGURE,
) -> Dict[str, Any]:
    """One image's detections (box centres) as a MIDOG "Multiple points" object
    (:func:`points_to_json`). Detections of another class than ``mitotic_class`` are
    left out (None keeps every class)."""
    boxes = instances.pred_boxes.tensor.detach().cpu().double().numpy().reshape(-1, 4)
    scores = instances.scores.detach().cpu().double().numpy().reshape(-1)
    if mitotic_class is not None and instances.has("pred_classes"):
        keep = instances.pred_classes.detach().cpu().numpy() == mitotic_class
        boxes, scores = boxes[keep], scores[keep]
    return points_to_json((boxes[:, :2] + boxes[:, 2:]) / 2.0, scores, mpp, threshold)


def _read_json(path: PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def parse_points_json(obj: Any, source: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A "Multiple points" object (or a bare list of its points) -> (xy_mm (N, 2),
    probability (N,), named_mitotic (N,) bool). A point without a name counts as
    "mitotic figure" and one without probability as 0.5, as the MIDOG evaluation does;
    ``source`` names the input in errors."""
    if isinstance(obj, Mapping):
        if "points" not in obj or not isinstance(obj["points"], list):
            raise ValueError(f"{source}: a 'Multiple points' object needs a 'points' list")
        points = obj["points"]
    elif isinstance(obj, list):
        points = obj
    else:
        raise ValueError(
            f"{source}: expected a 'Multiple points' object or a list of points, got "
            f"{type(obj).__name__}"
        )
    xy, prob, named = [], [], []
    for i, p in enumerate(points):
        coords = p.get("point") if isinstance(p, Mapping) else None
        try:
            x, y = float(coords[0]), float(coords[1])
            s = float(p.get("probability", 0.5))
        except (TypeError, ValueError, IndexError, KeyError):
            raise ValueError(
                f"{source}: point #{i} {p!r} is not "
                f"{{'point': [x_mm, y_mm, z], 'probability': p, 'name': ...}}"
            ) from None
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(s)):
            raise ValueError(
                f"{source}: point #{i} has a non-finite coordinate or probability: {p!r}"
            )
        name = p.get("name", MITOTIC_NAME)
        if name not in (MITOTIC_NAME, NON_MITOTIC_NAME):
            raise ValueError(
                f"{source}: point #{i} has name {name!r}, expected {MITOTIC_NAME!r} or "
                f"{NON_MITOTIC_NAME!r}"
            )
        xy.append((x, y))
        prob.append(s)
        named.append(name == MITOTIC_NAME)
    return (
        np.asarray(xy, dtype=np.float64).reshape(-1, 2),
        np.asarray(prob, dtype=np.float64),
        np.asarray(named, dtype=bool),
    )


def _is_points_object(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("type") == "Multiple points"


def _is_coco_results(obj: Any) -> bool:
    return isinstance(obj, list) and all(
        isinstance(r, Mapping) and {"image_id", "bbox", "score"} <= set(r) for r in obj
    )


def detect_prediction_format(path: PathLike) -> str:
    """ "coco" (Detectron2 results list), "points" (MIDOG points: file, mapping or
    directory); ValueError naming the file otherwise."""
    if os.path.isdir(path):
        return "points"
    obj = _read_json(path)
    if _is_coco_results(obj):
        return "coco"
    if _is_points_object(obj):
        return "points"
    if (
        isinstance(obj, Mapping)
        and obj
        and all(_is_points_object(v) or isinstance(v, list) for v in obj.values())
    ):
        return "points"
    raise ValueError(
        f"{path}: unknown prediction format: expected Detectron2's coco_instances_results.json "
        f"(a list of {{image_id, category_id, bbox, score}}), a MIDOG 'Multiple points' object, "
        f"an object mapping image names/ids to such objects, or a directory of per-image JSON files"
    )


def _image_keys(dataset_dicts: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Lookup key -> image_id: each image's file name, its stem and its id as text.
    A key shared by two images is dropped (it would be ambiguous)."""
    keys: Dict[str, Any] = {}
    clashes = set()
    for d in dataset_dicts:
        name = os.path.basename(str(d["file_name"]))
        for key in {name, os.path.splitext(name)[0], str(d["image_id"])}:
            if key in keys and keys[key] != d["image_id"]:
                clashes.add(key)
            keys[key] = d["image_id"]
    for key in clashes:
        del keys[key]
    return keys


def load_point_predictions(
    path: PathLike, dataset_dicts: List[Dict[str, Any]]
) -> Dict[Any, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """MIDOG point predictions (any form the module docstring lists) -> {image_id:
    (xy_mm, probability, named_mitotic)}. A key that names no ground-truth image is an
    error, as is a second entry for one image."""
    keys = _image_keys(dataset_dicts)
    out: Dict[Any, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def add(key: str, obj: Any, source: str) -> None:
        image_id = keys.get(key)
        if image_id is None:
            raise ValueError(
                f"{source}: image {key!r} is not in the ground truth (keys are file names, "
                f"their stems or image ids)"
            )
        if image_id in out:
            raise ValueError(f"{source}: a second set of predictions for image {key!r}")
        out[image_id] = parse_points_json(obj, source)

    if os.path.isdir(path):
        files = sorted(Path(path).glob("*.json"))
        if not files:
            raise ValueError(f"{path}: directory holds no .json prediction files")
        for f in files:
            add(f.name[: -len(".json")], _read_json(f), str(f))
        return out
    obj = _read_json(path)
    if _is_points_object(obj):
        if len(dataset_dicts) == 1:
            add(str(dataset_dicts[0]["image_id"]), obj, str(path))
        else:
            add(
                (
                    Path(path).name[: -len(".json")]
                    if str(path).endswith(".json")
                    else Path(path).stem
                ),
                obj,
                str(path),
            )
        return out
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            add(str(key), value, f"{path} [{key!r}]")
        return out
    raise ValueError(f"{path}: not MIDOG point predictions (see detect_prediction_format)")


def load_coco_results(
    path: PathLike, category_id: Optional[int] = None
) -> Dict[Any, Tuple[np.ndarray, np.ndarray]]:
    """Detectron2 ``coco_instances_results.json`` -> {image_id: (centres_px (N, 2), scores (N,))}.

    ``category_id``: the id of the mitotic-figure class in the file. None accepts a
    file whose detections all share one category (a one-class detector) and raises
    otherwise, since which id means "mitotic figure" depends on how it was written.
    """
    obj = _read_json(path)
    if not _is_coco_results(obj):
        raise ValueError(
            f"{path}: not a Detectron2 coco_instances_results.json (a list of "
            f"{{image_id, bbox, score}})"
        )
    for i, r in enumerate(obj):
        for key in ("image_id", "category_id"):
            v = r.get(key)
            ok = (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str)
            if not ok and not (key == "category_id" and v is None):
                raise ValueError(f"{path}: entry #{i}: {key} {v!r} is not an integer or a string")
    cats = sorted({r.get("category_id") for r in obj}, key=str)
    if category_id is None and len(cats) > 1:
        raise ValueError(
            f"{path}: detections of several categories {cats}; say which one is the mitotic "
            f"figure (--pred-category-id)"
        )
    if category_id is not None and obj and category_id not in cats:
        raise ValueError(f"{path}: no detection has category_id {category_id}; the file has {cats}")
    grouped: Dict[Any, List[Tuple[float, float, float]]] = {}
    for i, r in enumerate(obj):
        if category_id is not None and r.get("category_id") != category_id:
            continue
        try:
            x, y, w, h = (float(v) for v in r["bbox"])
            s = float(r["score"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: entry #{i} has a malformed bbox or score: {r!r}") from None
        if not all(np.isfinite(v) for v in (x, y, w, h, s)):
            raise ValueError(f"{path}: entry #{i} has a non-finite bbox or score: {r!r}")
        grouped.setdefault(r["image_id"], []).append((x + w / 2.0, y + h / 2.0, s))
    out = {}
    for image_id, rows in grouped.items():
        a = np.asarray(rows, dtype=np.float64)
        out[image_id] = (a[:, :2], a[:, 2])
    return out


def json_safe(obj: Any) -> Any:
    """A copy with NaN/inf as None and numpy scalars as Python numbers: standard JSON."""
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
