"""Real mitotic-figure crops (AMi-Br AtNorM-MD) -> MIDOG-style annotation files.

The AtNorM-MD subset of the AMi-Br benchmark holds 128 x 128 RGB PNG crops of
MIDOG++ mitotic figures, one figure per crop, in ``Normal/`` and ``Atypical/``,
with the five experts' votes in ``AtNorM-MD_expert_votes.csv``. This module turns
them into what the project already reads: one MIDOG-style JSON per split
(:func:`midog_d2.data.load_midog_json`) whose file names are relative to the crop
folder, so the pixels are read in place through :func:`midog_d2.fileio.read_region`.

Where the figure is: a crop is a 128 px window centred on the figure, so the box
is 50 x 50 px around (64, 64). Crops of figures close to the border of their
MIDOG++ region were cut short by that border and then padded with black on both
sides (letterboxed) to 128 x 128; there the figure lies 64 px from one edge of
the tissue part, not at the crop centre, and the darker of the two possible
positions is taken (see :func:`locate_figure` and docs/real_figures.md).

AtNorM-MD has no tumor type, slide or position per crop: ``tumor_type`` is None
(``domain_label`` -1), and a split can only be by crop (see :func:`split_real_figures`).

The same converter reads the MIDOG 2021 crops of AMi-Br (``ami-br-midog21``): the same
``Normal/`` and ``Atypical/`` folders with a ``manifest.csv`` instead of the votes CSV, one
row a crop with its slide, scanner, lab, level-0 position and the other labelled cells of
the crop (``others_in_crop``). There every crop keeps its slide and scanner, the other
labelled cells become annotations of the crop, and the split is by slide, stratified by
scanner.
"""

import json
import logging
import math
import os
import random
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence

from midog_d2.constants import BOX_SIZE, MIDOG_CATEGORIES
from midog_d2.data.midog import load_midog_json

from .crop_position import CROP_SIZE, control_statistics, locate_figure, position_statistics
from .real_figure_scan import (
    OTHER_ID_BASE,
    SPLITS,
    RealFigure,
    RealFigureScan,
    crop_sort_key,
    scan_real_figures,
)

__all__ = [
    "RealFigure",
    "RealFigureScan",
    "scan_real_figures",
    "locate_figure",
    "split_real_figures",
    "real_figures_to_midog",
    "write_real_figures",
    "convert_real_figures",
    "load_real_figures",
    "position_statistics",
    "control_statistics",
]

logger = logging.getLogger(__name__)


def split_real_figures(
    figures: Sequence[RealFigure], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Dict[str, List[RealFigure]]:
    """
    Seeded train / val / test split: by slide, stratified by scanner, when every crop
    carries its slide (a manifest); else by crop, stratified by normal / atypical.

    Crops of one slide (or pixel-identical crops, without slides) form one group and go
    to one split together. In each stratum the groups are shuffled (seeded) and taken in
    turn: to test while fewer than ``round(fraction * n)`` (half up) of the stratum's
    crops are there, then to val likewise, the rest to train. Same crops + same seed =
    same split, whatever the input order; each part keeps the input order.

    Raises ValueError for fractions that are negative or do not sum to 1, and if
    a file, a slide or a pixel hash ended up in two splits (a leak: never expected).
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            "split fractions (train, val, test) must be three numbers >= 0 summing to 1, got "
            f"{fractions}"
        )
    names = [f.file_name for f in figures]
    if len(set(names)) != len(names):
        raise ValueError("split_real_figures: file names are not unique")

    by_slide = bool(figures) and all(f.slide is not None for f in figures)
    groups: Dict[Any, List[str]] = defaultdict(list)
    stratum_of: Dict[str, Any] = {}
    for f in figures:
        groups[(f.scanner, f.slide) if by_slide else f.sha256].append(f.file_name)
        stratum_of[f.file_name] = f.scanner if by_slide else f.atypical
    strata: Dict[Any, List[List[str]]] = defaultdict(list)
    for members in groups.values():
        members = sorted(members, key=crop_sort_key)
        # Without slides a group mixing labels goes with the rarer (atypical) stratum.
        key = stratum_of[members[0]] if by_slide else any(stratum_of[m] for m in members)
        strata[key].append(members)

    rng = random.Random(seed)
    where: Dict[str, str] = {}
    for key in sorted(strata, key=str) if by_slide else (False, True):
        grps = sorted(strata.get(key, []), key=lambda g: crop_sort_key(g[0]))
        rng.shuffle(grps)
        n = sum(len(g) for g in grps)
        n_test = int(math.floor(fractions[2] * n + 0.5))
        n_val = int(math.floor(fractions[1] * n + 0.5))
        pos = 0
        for g in grps:
            split = "test" if pos < n_test else "val" if pos < n_test + n_val else "train"
            for m in g:
                where[m] = split
            pos += len(g)

    parts = {s: [f for f in figures if where[f.file_name] == s] for s in SPLITS}
    seen: Dict[Any, str] = {}
    for s in SPLITS:
        for f in parts[s]:
            for key in (f.file_name, f.sha256) + ((("slide", f.slide),) if by_slide else ()):
                if seen.setdefault(key, s) != s:
                    raise ValueError(f"split leak: {key} is in both {seen[key]} and {s}")
    return parts


def real_figures_to_midog(
    figures: Iterable[RealFigure],
    *,
    split: Optional[str] = None,
    info: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """
    The MIDOG-style annotation object of ``figures``: one 128 x 128 image and one
    mitotic-figure box ([x1, y1, x2, y2], category 1) per crop, ``tumor_type``
    None, and the normal/atypical label on both image and annotation
    (``atypical``, ``atypical_votes``, ``expert_votes``, ``majority``), plus the
    image's ``content_box``, ``letterboxed``, ``sha256`` and ``split``.
    """
    images, annotations = [], []
    for f in figures:
        # Keys of a manifest's crops only, so that AtNorM-MD's files stay as they were.
        origin = {}
        if f.slide is not None:
            origin = {
                "slide": f.slide,
                "scanner": f.scanner,
                "lab": f.lab,
                "slide_xy": list(f.slide_xy) if f.slide_xy else None,
                "figure_annotation_id": f.image_id,
            }
        label = {
            "atypical": f.atypical,
            "atypical_votes": f.atypical_votes,
            "n_experts": None if f.expert_votes is None else len(f.expert_votes),
            "expert_votes": None if f.expert_votes is None else list(f.expert_votes),
            "majority": f.majority,
        }
        images.append(
            {
                "file_name": f.file_name,
                "id": f.image_id,
                "width": f.width,
                "height": f.height,
                "tumor_type": None,
                **label,
                "content_box": list(f.content_box),
                "letterboxed": f.letterboxed,
                "sha256": f.sha256,
                "split": split,
                **origin,
            }
        )
        annotations.append(
            {
                "id": f.image_id,
                "image_id": f.image_id,
                "category_id": 1,
                "bbox": f.bbox,
                **label,
            }
        )
        h = BOX_SIZE / 2.0
        for k, (x, y, category) in enumerate(f.others):
            # The other labelled cells of the crop; their MIDOG++ ids are not in the
            # manifest, so ids are made unique from the crop's: OTHER_ID_BASE + 100 id + k.
            annotations.append(
                {
                    "id": OTHER_ID_BASE + 100 * f.image_id + k,
                    "image_id": f.image_id,
                    "category_id": category,
                    "bbox": [x - h, y - h, x + h, y + h],
                    "other_in_crop": True,
                }
            )
    return {
        "info": dict(info or {}),
        "categories": list(MIDOG_CATEGORIES),
        "images": images,
        "annotations": annotations,
    }


def write_real_figures(
    figures: Sequence[RealFigure],
    scan: RealFigureScan,
    output_dir: str,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    prefix: str = "real_figures",
    control_tiles: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """
    Split scanned crops (:func:`split_real_figures`) and write
    ``{prefix}_train.json``, ``{prefix}_val.json``, ``{prefix}_test.json``
    (file names relative to ``scan.root``: read them with ``image_root`` =
    that folder; nothing is copied) and ``{prefix}_report.json`` (counts per
    split, CSV mismatches, duplicates, letterboxed crops, the darkest-point
    statistics and, with ``control_tiles``, the same statistic on random
    windows of those tiles). Returns the report.
    """
    parts = split_real_figures(figures, fractions, seed)
    os.makedirs(output_dir, exist_ok=True)
    by_slide = bool(figures) and all(f.slide is not None for f in figures)
    info = {
        "description": (
            "AMi-Br MIDOG 2021 mitotic-figure crops with slide and scanner, split by slide"
            if by_slide
            else "AMi-Br AtNorM-MD mitotic-figure crops (from MIDOG++), one 50 x 50 box per crop"
        ),
        "image_root": scan.root,
        "votes_csv": scan.votes_csv,
        "seed": seed,
        "fractions": {s: float(f) for s, f in zip(SPLITS, fractions)},
        "box_size": BOX_SIZE,
        "crop_size": figures[0].width if figures else CROP_SIZE,
    }
    files = {}
    for s in SPLITS:
        path = os.path.join(output_dir, f"{prefix}_{s}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(
                real_figures_to_midog(parts[s], split=s, info={**info, "split": s}), f, indent=1
            )
        files[s] = os.path.abspath(path)
    report = {
        **info,
        "files": files,
        "counts": {
            s: {
                "crops": len(parts[s]),
                "normal": sum(not f.atypical for f in parts[s]),
                "atypical": sum(f.atypical for f in parts[s]),
            }
            for s in SPLITS
        },
        **({"by_scanner": _scanner_counts(parts)} if by_slide else {}),
        "scan": scan.summary(),
        "center_rule": (
            "crop centre; letterboxed crops: half a crop from the tissue edge, on the "
            "darker side"
        ),
        "darkest_point": position_statistics(figures),
    }
    if control_tiles:
        report["darkest_point_control"] = control_statistics(control_tiles, seed=seed)
    path = os.path.join(output_dir, f"{prefix}_report.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    report["report_file"] = os.path.abspath(path)
    return report


def _scanner_counts(parts: Dict[str, List[RealFigure]]) -> Dict[str, Dict[str, Any]]:
    """Per scanner and split: crops, normal, atypical, slides, other labelled cells."""
    out: Dict[str, Dict[str, Any]] = {}
    for s in SPLITS:
        for f in parts[s]:
            c = out.setdefault(f.scanner, {}).setdefault(
                s, {"crops": 0, "normal": 0, "atypical": 0, "slides": set(), "others": 0}
            )
            c["crops"] += 1
            c["atypical" if f.atypical else "normal"] += 1
            c["slides"].add(f.slide)
            c["others"] += len(f.others)
    for per_split in out.values():
        for c in per_split.values():
            c["slides"] = len(c["slides"])
    return dict(sorted(out.items()))


def convert_real_figures(
    root: str,
    output_dir: str,
    *,
    votes_csv: Optional[str] = None,
    strict: bool = False,
    **write_options,
) -> Dict[str, Any]:
    """
    :func:`scan_real_figures` then :func:`write_real_figures`: the whole
    conversion of an AtNorM-MD folder. ``write_options``: ``fractions``,
    ``seed``, ``prefix``, ``control_tiles``. Returns the report.
    """
    figures, scan = scan_real_figures(root, votes_csv, strict=strict)
    return write_real_figures(figures, scan, output_dir, **write_options)


_EXTRA_IMAGE_KEYS = (
    "atypical",
    "atypical_votes",
    "n_experts",
    "expert_votes",
    "majority",
    "content_box",
    "letterboxed",
    "sha256",
    "split",
    "slide",
    "scanner",
    "lab",
    "slide_xy",
    "figure_annotation_id",
)
_EXTRA_ANNOTATION_KEYS = (
    "atypical",
    "atypical_votes",
    "n_experts",
    "expert_votes",
    "majority",
    "other_in_crop",
)


def load_real_figures(json_file: str, image_root: Optional[str] = None) -> List[Dict[str, Any]]:
    """
    Detectron2 dicts of one file written by :func:`convert_real_figures`:
    :func:`midog_d2.data.load_midog_json`'s dicts (``domain_label`` -1) with the
    keys it does not carry put back: on each image and its annotation
    ``atypical``, ``atypical_votes``, ``n_experts``, ``expert_votes``,
    ``majority``; on the image also ``content_box``, ``letterboxed``,
    ``sha256`` and ``split``, and for a manifest's crops ``slide``, ``scanner``, ``lab``,
    ``slide_xy`` and ``figure_annotation_id`` (the crop's own figure among its
    annotations; the others carry ``other_in_crop``). ``image_root`` defaults to the folder the file
    was converted from (its ``info.image_root``).
    """
    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    if image_root is None:
        image_root = (data.get("info") or {}).get("image_root")
        if not image_root:
            raise ValueError(f"{json_file}: no info.image_root; pass image_root (the crop folder)")
    dicts = load_midog_json(json_file, image_root)
    images = {img["id"]: img for img in data["images"]}
    anns = {a["id"]: a for a in data["annotations"]}
    for d in dicts:
        img = images[d["image_id"]]
        d.update({k: img.get(k) for k in _EXTRA_IMAGE_KEYS})
        for a in d["annotations"]:
            src = anns[a["annotation_id"]]
            a.update({k: src.get(k) for k in _EXTRA_ANNOTATION_KEYS})
    return dicts
