"""MIDOG 2021 / MIDOG 2022 / MIDOG++ annotation files -> Detectron2 dataset dicts.

The files are COCO-like, with three differences that make Detectron2's
``load_coco_json`` unsuitable (field notes, midog.md §1 and shared/data/README.md):
boxes are ``[x1, y1, x2, y2]`` (not COCO's ``[x, y, w, h]``), images carry a
``tumor_type`` that ``load_coco_json`` would drop, and category names differ
between releases. Loading reads the JSON (and the optional CSV) only, never the
pixels, so it works without the image files.
"""

import csv
import json
import logging
import math
import os
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from detectron2.structures import BoxMode

from ..constants import (
    CATEGORY_ALIASES,
    CATEGORY_NAMES,
    DONT_CARE,
    DONT_CARE_NAME,
    MIDOGPP_TUMOR_TYPES,
    SCANNER_ALIASES,
    TUMOR_TYPE_ALIASES,
    domain_index,
    name_key,
)

__all__ = [
    "box_centres",
    "without_dont_care",
    "load_midog_json",
    "canonical_tumor_type",
    "set_domain_labels",
]

logger = logging.getLogger(__name__)

_CHECK_BOXES = ("error", "skip")


def without_dont_care(dicts: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Shallow copies of dataset dicts without their don't-care zones (class
    :data:`~midog_d2.constants.DONT_CARE`), for Detectron2's loaders, which check every class
    against the model's: training takes the zones as unlabelled tissue, and evaluation reads
    them from the catalog."""
    return [
        (
            dict(d, annotations=[a for a in d["annotations"] if a.get("category_id") != DONT_CARE])
            if any(a.get("category_id") == DONT_CARE for a in d.get("annotations", ()))
            else d
        )
        for d in dicts
    ]


def box_centres(record: Dict[str, Any], category_id: Optional[int] = None) -> np.ndarray:
    """(N, 2) centres of a dataset dict's boxes, in annotation order: those of
    ``category_id``, or of every class when None."""
    centres = []
    for ann in record.get("annotations", []):
        if category_id is not None and ann.get("category_id") != category_id:
            continue
        mode = ann.get("bbox_mode", BoxMode.XYXY_ABS)
        x1, y1, x2, y2 = BoxMode.convert(list(ann["bbox"]), mode, BoxMode.XYXY_ABS)
        centres.append(((x1 + x2) / 2.0, (y1 + y2) / 2.0))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2)


def canonical_tumor_type(
    name: Optional[str],
    tumor_aliases: Iterable[Sequence[str]] = TUMOR_TYPE_ALIASES,
    tumor_types: Sequence[str] = (),
) -> Optional[str]:
    """
    Resolve a tumor-type spelling: aliases first (case-insensitive), then the
    spelling used in ``tumor_types`` when it matches case-insensitively.
    Names in neither are returned whitespace-normalised, as written.
    """
    if name is None or not str(name).strip():
        return None
    alias_map = {name_key(a): b for a, b in tumor_aliases}
    name = " ".join(str(name).split())
    name = alias_map.get(name_key(name), name)
    for t in tumor_types:
        if name_key(t) == name_key(name):
            return t
    return name


def _read_csv(csv_file: str, scanner_aliases) -> Dict[int, Dict[str, Any]]:
    """MIDOG++ ``MIDOGpp_datasets_xvalidation.csv``: ``;``-separated, one row per slide id."""
    columns = {
        "slide": "slide",
        "dataset": "split",
        "tumor": "tumor_type",
        "scanner": "scanner",
        "origin": "lab",
        "species": "species",
    }
    scanner_map = {name_key(a): b for a, b in scanner_aliases}
    rows: Dict[int, Dict[str, Any]] = {}
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=";")
            header = {name_key(h): h for h in (reader.fieldnames or [])}
            if "slide" not in header:
                raise ValueError(
                    f"{csv_file}: not a MIDOG++ split CSV: no 'Slide' column in the header "
                    f"{reader.fieldnames!r} (expected ';'-separated "
                    "Slide;Dataset;Tumor;Scanner;Origin;Species)"
                )
            for line, row in enumerate(reader, start=2):
                raw_id = (row.get(header["slide"]) or "").strip()
                try:
                    slide_id = int(raw_id)
                except ValueError:
                    raise ValueError(
                        f"{csv_file}, line {line}: slide id {raw_id!r} is not an integer"
                    ) from None
                if slide_id in rows:
                    raise ValueError(f"{csv_file}, line {line}: slide id {slide_id} appears twice")
                entry = {}
                for col, key in columns.items():
                    if col == "slide" or col not in header:
                        continue
                    value = " ".join((row.get(header[col]) or "").split()) or None
                    if key == "split" and value is not None:
                        value = value.lower()
                    if key == "scanner" and value is not None:
                        value = scanner_map.get(name_key(value), value)
                    entry[key] = value
                rows[slide_id] = entry
    except FileNotFoundError:
        raise FileNotFoundError(f"MIDOG CSV file not found: {csv_file}") from None
    return rows


def _read_json(json_file: str) -> Dict[str, Any]:
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"MIDOG annotation file not found: {json_file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{json_file}: not a MIDOG/COCO-style annotation file: the top level is a "
            f"{type(data).__name__}, expected an object with 'images', 'annotations' and "
            "'categories'"
        )
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)
    ]
    if missing:
        raise ValueError(
            f"{json_file}: not a MIDOG/COCO-style annotation file: missing or non-list "
            f"key(s) {missing} (expected 'images', 'annotations' and 'categories')"
        )
    return data


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value != ""
    )


def _size(json_file: str, ident: Any, key: str, value: Any) -> int:
    """A positive integral pixel size (``2000`` or ``2000.0``), else ValueError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and isinstance(value, float):
        ok = math.isfinite(value) and value.is_integer()
    if not ok or int(value) <= 0:
        raise ValueError(
            f"{json_file}: image {ident!r}: {key} {value!r} is not a positive whole number"
        )
    return int(value)


def _category_map(json_file: str, categories: List[Dict[str, Any]]) -> Dict[Any, int]:
    mapping: Dict[Any, int] = {}
    for cat in categories:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise ValueError(f"{json_file}: category entry {cat!r} lacks 'id' or 'name'")
        if not _is_id(cat["id"]) or not isinstance(cat["name"], str):
            raise ValueError(
                f"{json_file}: category entry {cat!r}: 'id' must be an integer or a string "
                "and 'name' a string"
            )
        cls = CATEGORY_ALIASES.get(name_key(cat["name"]))
        if cls is None:
            raise ValueError(
                f"{json_file}: unknown category name {cat['name']!r} (id {cat['id']}); "
                f"known names (case-insensitive): {sorted(CATEGORY_ALIASES)}"
            )
        if cls in mapping.values():
            raise ValueError(
                f"{json_file}: two categories map to "
                f"{(CATEGORY_NAMES + (DONT_CARE_NAME,))[cls]!r}: {categories!r}"
            )
        mapping[cat["id"]] = cls
    return mapping


def _bbox(json_file: str, ann: Dict[str, Any]) -> List[float]:
    box = ann.get("bbox")
    ok = isinstance(box, (list, tuple)) and len(box) == 4
    if ok:
        try:
            box = [float(v) for v in box]
        except (TypeError, ValueError):
            ok = False
    if not ok or not all(math.isfinite(v) for v in box):
        raise ValueError(
            f"{json_file}: annotation {ann.get('id')} (image {ann.get('image_id')}): "
            f"bbox {ann.get('bbox')!r} is not four finite numbers [x1, y1, x2, y2]"
        )
    return box


def load_midog_json(
    json_file: str,
    image_root: str = "",
    *,
    domains: Optional[Sequence[str]] = None,
    tumor_aliases: Optional[Iterable[Sequence[str]]] = None,
    default_tumor_type: Optional[str] = None,
    csv_file: Optional[str] = None,
    scanner_aliases: Optional[Iterable[Sequence[str]]] = None,
    tumor_filter: Optional[Iterable[str]] = None,
    image_ids: Optional[Iterable[int]] = None,
    check_boxes: str = "error",
    include_unlabelled: bool = False,
    domain_field: str = "tumor_type",
) -> List[Dict[str, Any]]:
    """
    Read a MIDOG 2021, MIDOG 2022 or MIDOG++ annotation JSON into Detectron2 dicts.

    Args:
        json_file: the annotation file (COCO-like, boxes ``[x1, y1, x2, y2]``).
        image_root: folder joined to each image's ``file_name``.
        domains: ordered names; ``domain_label`` is the index of an image's
            tumor type here, -1 when unknown or not listed (default: MIDOG++'s seven).
        tumor_aliases: (spelling, canonical name) pairs, case-insensitive
            (default: ``config.TUMOR_TYPE_ALIASES``).
        default_tumor_type: tumor type of images that have none in the JSON or
            CSV (MIDOG 2021's file: "human breast cancer").
        csv_file: optional MIDOG++ CSV (``;``-separated); adds ``split``,
            ``scanner``, ``lab``, ``species`` by slide id = image id.
        scanner_aliases: (spelling, canonical name) pairs for the CSV's scanner
            names (default: ``config.SCANNER_ALIASES``, which fixes ``Hamammatsu XR``).
        tumor_filter: keep only images of these tumor types (names resolved
            through the aliases).
        image_ids: keep only these image ids (each must exist in the file).
        check_boxes: what to do with an annotation whose box does not overlap its
            image or is degenerate (``x2 <= x1`` or ``y2 <= y1``, e.g. COCO
            ``[x, y, w, h]`` boxes): "error" raises, "skip" drops it and logs how
            many were dropped. Boxes that straddle the image border are real
            (cells cut by the ROI edge) and are kept unclipped.
        include_unlabelled: keep images that were never annotated (see below).
        domain_field: the dict key whose value ``domain_label`` indexes in
            ``domains`` (:func:`set_domain_labels`): "tumor_type" (MIDOG 2022),
            or e.g. "scanner" with scanner names as ``domains`` (MIDOG 2021).

    Returns:
        One dict per image, in file order: ``file_name``, ``image_id``,
        ``height``, ``width``, ``tumor_type`` (canonical name or None),
        ``domain_label``, ``labelled``, ``split``, ``scanner``, ``lab``,
        ``species`` (from the CSV, else the image entry's own ``scanner`` / ``lab``
        keys, else None) and ``annotations``, each with
        ``bbox`` (XYXY_ABS, float), ``bbox_mode``, ``category_id`` (0 mitotic
        figure, 1 hard negative), ``annotation_id`` and, when the file has them,
        the experts' ``labels``.

    Unlabelled images: MIDOG files have no "labelled" flag, and an annotated
    MIDOG ROI always holds annotated cells, so an image without any annotation
    was not annotated (MIDOG++: 50 such images, ids 151-200). Scoring one as
    "no mitoses" would turn every detection on it into a false positive, so they
    are left out unless ``include_unlabelled`` is set, and then carry
    ``labelled: False``. An image entry's own boolean ``labelled`` key, when
    present, overrides this rule (for datasets with truly empty ROIs).
    """
    if check_boxes not in _CHECK_BOXES:
        raise ValueError(f"check_boxes must be one of {_CHECK_BOXES}, got {check_boxes!r}")
    domains = list(MIDOGPP_TUMOR_TYPES if domains is None else domains)
    tumor_aliases = list(TUMOR_TYPE_ALIASES if tumor_aliases is None else tumor_aliases)
    scanner_aliases = list(SCANNER_ALIASES if scanner_aliases is None else scanner_aliases)

    def canon(name):
        return canonical_tumor_type(name, tumor_aliases, domains)

    data = _read_json(json_file)
    classes = _category_map(json_file, data["categories"])
    csv_rows = _read_csv(csv_file, scanner_aliases) if csv_file else {}

    images = _image_records(
        json_file,
        data["images"],
        image_root,
        csv_file,
        csv_rows,
        canon,
        domains,
        default_tumor_type,
        {name_key(a): b for a, b in scanner_aliases},
    )
    if domain_field != "tumor_type":
        set_domain_labels(images.values(), domain_field, domains)
    _add_annotations(json_file, data["annotations"], images, classes, check_boxes)
    dataset_dicts = list(images.values())
    for d in dataset_dicts:
        flag = d.pop("_labelled")
        d["labelled"] = bool(d["annotations"]) if flag is None else bool(flag)

    dataset_dicts = _select(
        json_file, dataset_dicts, set(images), image_ids, tumor_filter, canon, include_unlabelled
    )
    n_ann = Counter(a["category_id"] for d in dataset_dicts for a in d["annotations"])
    logger.info(
        "Loaded %d images from %s: %d mitotic figures, %d hard negatives",
        len(dataset_dicts),
        json_file,
        n_ann[0],
        n_ann[1],
    )
    return dataset_dicts


def _image_records(
    json_file: str,
    entries: List[Any],
    image_root: str,
    csv_file: Optional[str],
    csv_rows: Dict[int, Dict[str, Any]],
    canon,
    domains: Sequence[str],
    default_tumor_type: Optional[str],
    scanner_map: Dict[str, str],
) -> Dict[Any, Dict[str, Any]]:
    """image id -> dataset dict (no annotations yet) of the JSON's ``images`` entries,
    merged with their CSV row; a provisional ``_labelled`` carries the entry's own flag."""
    images: Dict[Any, Dict[str, Any]] = {}
    for idx, img in enumerate(entries):
        missing = [
            k
            for k in ("id", "file_name", "width", "height")
            if not isinstance(img, dict) or k not in img
        ]
        if missing:
            ident = img.get("id", f"#{idx}") if isinstance(img, dict) else f"#{idx}"
            raise ValueError(f"{json_file}: image {ident} lacks {missing}")
        if not _is_id(img["id"]):
            raise ValueError(
                f"{json_file}: image #{idx}: id {img['id']!r} is not an integer or a string"
            )
        if not isinstance(img["file_name"], str) or not img["file_name"].strip():
            raise ValueError(
                f"{json_file}: image {img['id']!r}: file_name {img['file_name']!r} is not a "
                "file name"
            )
        width = _size(json_file, img["id"], "width", img["width"])
        height = _size(json_file, img["id"], "height", img["height"])
        flag = img.get("labelled")
        if flag is not None and not isinstance(flag, bool):
            raise ValueError(
                f"{json_file}: image {img['id']!r}: labelled {flag!r} is not true or false"
            )
        for key in ("tumor_type", "scanner", "lab"):
            if img.get(key) is not None and not isinstance(img[key], str):
                raise ValueError(
                    f"{json_file}: image {img['id']!r}: {key} {img[key]!r} is not a string"
                )
        if img["id"] in images:
            raise ValueError(f"{json_file}: image id {img['id']} appears twice")
        row = csv_rows.get(img["id"], {})
        tumor = canon(img.get("tumor_type"))
        csv_tumor = canon(row.get("tumor_type"))
        if tumor is not None and csv_tumor is not None and tumor != csv_tumor:
            raise ValueError(
                f"image {img['id']}: tumor type {img.get('tumor_type')!r} in {json_file} disagrees "
                "with "
                f"{row.get('tumor_type')!r} in {csv_file} (add an alias if they are the same tumor)"
            )
        tumor = tumor or csv_tumor or canon(default_tumor_type)
        images[img["id"]] = {
            "file_name": (
                os.path.join(image_root, img["file_name"]) if image_root else img["file_name"]
            ),
            "image_id": img["id"],
            "height": height,
            "width": width,
            "tumor_type": tumor,
            "domain_label": domains.index(tumor) if tumor in domains else -1,
            "split": row.get("split"),
            "scanner": row.get("scanner") or _scanner(img.get("scanner"), scanner_map),
            "lab": row.get("lab") or img.get("lab"),
            "species": row.get("species"),
            "annotations": [],
            "_labelled": img.get("labelled"),
        }

    return images


def _scanner(name: Any, scanner_map: Dict[str, str]) -> Optional[str]:
    if name is None or not str(name).strip():
        return None
    return scanner_map.get(name_key(name), " ".join(str(name).split()))


def set_domain_labels(
    dataset_dicts: Iterable[Dict[str, Any]], domain_field: str, domains: Sequence[str]
) -> Counter:
    """
    Set each dict's ``domain_label`` (the domain head's target) to the index in ``domains``
    of its ``domain_field`` value, matched case- and whitespace-insensitively; -1 when the
    value is missing or not listed (such images take no part in the head's loss).
    Returns how many dicts got each label.
    """
    counts: Counter = Counter()
    seen: set = set()
    for d in dataset_dicts:
        value = d.get(domain_field)
        label = domain_index(value, domains)
        d["domain_label"] = label
        counts[label] += 1
        seen.add(value)
    if counts and seen == {None} and domain_field != "tumor_type":
        # Most likely a misspelt MODEL.MULTITASK.DOMAIN_FIELD: say so, the head would learn nothing.
        logger.warning(
            "No image has a %r value: every domain label is unknown (-1); check "
            "MODEL.MULTITASK.DOMAIN_FIELD",
            domain_field,
        )
    return counts


def _add_annotations(
    json_file: str,
    entries: List[Any],
    images: Dict[Any, Dict[str, Any]],
    classes: Dict[Any, int],
    check_boxes: str,
) -> None:
    """Append each valid annotation of ``entries`` to its image's ``annotations``."""
    skipped = Counter()
    seen = set()
    for ann in entries:
        if not isinstance(ann, dict):
            raise ValueError(f"{json_file}: annotation entry {ann!r} is not an object")
        ident = f"{json_file}: annotation {ann.get('id')!r} (image {ann.get('image_id')!r})"
        for key in ("id", "image_id", "category_id"):
            if key in ann or key != "id":
                if not _is_id(ann.get(key)):
                    raise ValueError(
                        f"{ident}: {key} {ann.get(key)!r} is not an integer or a string"
                    )
        if "id" in ann:
            if ann["id"] in seen:
                raise ValueError(f"{ident}: annotation id {ann['id']!r} appears twice")
            seen.add(ann["id"])
        if "labels" in ann and not isinstance(ann["labels"], list):
            raise ValueError(f"{ident}: labels {ann['labels']!r} is not a list")
        record = images.get(ann.get("image_id"))
        if record is None:
            raise ValueError(f"{ident}: refers to an image id that is not in 'images'")
        if ann.get("category_id") not in classes:
            raise ValueError(
                f"{ident}: category_id {ann.get('category_id')!r} is not in 'categories' "
                f"{sorted(classes, key=repr)}"
            )
        x1, y1, x2, y2 = box = _bbox(json_file, ann)
        if x2 <= x1 or y2 <= y1:
            if check_boxes == "error":
                raise ValueError(
                    f"{ident}: bbox {ann['bbox']} has x2 <= x1 or y2 <= y1; MIDOG boxes are "
                    f"[x1, y1, x2, y2] (is this file in COCO's [x, y, w, h]?). "
                    f"check_boxes='skip' drops such boxes."
                )
            skipped["degenerate"] += 1
            continue
        if x2 <= 0 or y2 <= 0 or x1 >= record["width"] or y1 >= record["height"]:
            if check_boxes == "error":
                raise ValueError(
                    f"{ident}: bbox {ann['bbox']} lies outside the {record['width']} x "
                    f"{record['height']} image. check_boxes='skip' drops such boxes."
                )
            skipped["outside the image"] += 1
            continue
        obj = {
            "bbox": box,
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": classes[ann["category_id"]],
            "annotation_id": ann.get("id"),
        }
        if "labels" in ann:
            obj["labels"] = list(ann["labels"])
        record["annotations"].append(obj)
    if skipped:
        logger.warning(
            "%s: skipped %s annotation(s) (check_boxes='skip')",
            json_file,
            ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())),
        )


def _select(
    json_file: str,
    dataset_dicts: List[Dict[str, Any]],
    known_ids: set,
    image_ids: Optional[Iterable[Any]],
    tumor_filter: Optional[Iterable[str]],
    canon,
    include_unlabelled: bool,
) -> List[Dict[str, Any]]:
    """The dicts kept by ``image_ids``, ``tumor_filter`` and ``include_unlabelled``."""
    if image_ids is not None:
        wanted = list(image_ids)
        unknown = sorted(set(wanted) - known_ids, key=str)
        if unknown:
            raise ValueError(f"{json_file}: image ids not in the file: {unknown[:20]}")
        wanted = set(wanted)
        dataset_dicts = [d for d in dataset_dicts if d["image_id"] in wanted]
    if tumor_filter is not None:
        keep = {canon(t) for t in tumor_filter}
        present = {d["tumor_type"] for d in dataset_dicts}
        absent = sorted(keep - present, key=str)
        if absent:
            logger.warning("%s: no image of tumor type(s) %s (tumor filter)", json_file, absent)
        dataset_dicts = [d for d in dataset_dicts if d["tumor_type"] in keep]
        if not dataset_dicts:
            raise ValueError(
                f"{json_file}: no image left after the tumor filter {sorted(keep, key=str)}; "
                f"tumor types in the file: {sorted(present, key=str)}"
            )
    if not include_unlabelled:
        n = sum(not d["labelled"] for d in dataset_dicts)
        if n:
            logger.info("%s: left out %d unlabelled image(s) (no annotations)", json_file, n)
            dataset_dicts = [d for d in dataset_dicts if d["labelled"]]
    return dataset_dicts
