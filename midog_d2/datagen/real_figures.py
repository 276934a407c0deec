"""Real mitotic-figure crops (AMi-Br AtNorM-MD) -> MIDOG-style annotation files.

The AtNorM-MD subset of the AMi-Br benchmark holds 128 x 128 RGB PNG crops of
MIDOG++ mitotic figures, one figure per crop, in ``Normal/`` and ``Atypical/``,
with the five experts' votes in ``AtNorM-MD_expert_votes.csv``. This module turns
them into what the project already reads: one MIDOG-style JSON per split
(:func:`midog_d2.data.load_midog_json`) whose file names are relative to the crop
folder, so the pixels are read in place through :func:`midog_d2.io.read_region`.

Where the figure is: a crop is a 128 px window centred on the figure, so the box
is 50 x 50 px around (64, 64). Crops of figures close to the border of their
MIDOG++ region were cut short by that border and then padded with black on both
sides (letterboxed) to 128 x 128; there the figure lies 64 px from one edge of
the tissue part, not at the crop centre, and the darker of the two possible
positions is taken (see :func:`locate_figure` and docs/real_figures.md).

AtNorM-MD has no tumor type, slide or position per crop: ``tumor_type`` is None
(``tumor_label`` -1), and a split can only be by crop (see :func:`split_real_figures`).

The same converter reads the MIDOG 2021 crops of AMi-Br (``ami-br-midog21``): the same
``Normal/`` and ``Atypical/`` folders with a ``manifest.csv`` instead of the votes CSV, one
row a crop with its slide, scanner, lab, level-0 position and the other labelled cells of
the crop (``others_in_crop``). There every crop keeps its slide and scanner, the other
labelled cells become annotations of the crop, and the split is by slide, stratified by
scanner.
"""

import csv
import hashlib
import json
import logging
import math
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..constants import BOX_SIZE, MIDOG_CATEGORIES
from ..data.midog import load_midog_json
from ..io import read_rgb
from .crop_position import CROP_SIZE, control_statistics, locate_figure, position_statistics
from .nuclei import extreme_point

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

# Folder -> atypical flag; the folders are the dataset's own labels (= the CSV majority).
CLASS_FOLDERS = (("Normal", False), ("Atypical", True))
VOTES_CSV = "AtNorM-MD_expert_votes.csv"
MANIFEST_CSV = "manifest.csv"  # ami-br-midog21: slide, scanner, position, other cells
SPLITS = ("train", "val", "test")
# Ids of the annotations made from a manifest's ``others_in_crop`` start here.
OTHER_ID_BASE = 1_000_000_000


@dataclass(frozen=True)
class RealFigure:
    """One crop: what the JSON records about it."""

    file_name: str  # relative to the crop folder, "Normal/1.png"
    image_id: int
    atypical: bool  # from the folder
    width: int
    height: int
    content_box: Tuple[int, int, int, int]  # x0, y0, x1, y1 of the tissue (no letterbox bar)
    center: Tuple[float, float]  # figure centre (x, y)
    darkest: Tuple[int, int]  # darkest point after smoothing (x, y): a statistic, not a label
    sha256: str  # of the decoded RGB pixels
    # "Normal"/"Atypical" per expert; None: not in the CSV
    expert_votes: Optional[Tuple[str, ...]] = None
    majority: Optional[str] = None
    # From a manifest (ami-br-midog21) only; None / () for AtNorM-MD.
    annotation_id: Optional[int] = None  # the figure's MIDOG++ annotation id
    slide: Optional[str] = None
    scanner: Optional[str] = None
    lab: Optional[str] = None
    slide_xy: Optional[Tuple[float, float]] = None  # the figure's centre in the slide, level 0
    # Other labelled cells whose centre lies in the crop: (x, y, MIDOG category id).
    others: Tuple[Tuple[float, float, int], ...] = ()

    @property
    def letterboxed(self) -> bool:
        return tuple(self.content_box) != (0, 0, self.width, self.height)

    @property
    def atypical_votes(self) -> Optional[int]:
        """Number of experts who voted atypical (None when the crop is not in the CSV)."""
        if self.expert_votes is None:
            return None
        return sum(v == "Atypical" for v in self.expert_votes)

    @property
    def bbox(self) -> List[float]:
        """The 50 x 50 box [x1, y1, x2, y2] around :attr:`center`."""
        cx, cy = self.center
        h = BOX_SIZE / 2.0
        return [cx - h, cy - h, cx + h, cy + h]


@dataclass
class RealFigureScan:
    """What scanning the crop folder found besides the crops themselves."""

    root: str
    votes_csv: str
    n_normal: int = 0
    n_atypical: int = 0
    missing_from_csv: List[str] = field(default_factory=list)  # crops without a CSV row
    csv_without_file: List[str] = field(default_factory=list)  # CSV rows naming no crop
    majority_disagrees: List[str] = field(default_factory=list)  # folder label != CSV majority
    duplicate_groups: List[List[str]] = field(default_factory=list)  # identical pixels
    letterboxed: List[str] = field(default_factory=list)
    mean_darkness_peak: Optional[Tuple[int, int]] = None  # over crops without a letterbox bar

    @property
    def problems(self) -> List[str]:
        """One line per kind of mismatch between the folders and the CSV (empty: none)."""
        out = []
        for what, names in (
            ("crop(s) have no row in the votes CSV", self.missing_from_csv),
            ("CSV row(s) name no crop file", self.csv_without_file),
            (
                "crop(s) sit in a folder that disagrees with the CSV majority",
                self.majority_disagrees,
            ),
        ):
            if names:
                shown = ", ".join(names[:20]) + (
                    f", ... ({len(names) - 20} more)" if len(names) > 20 else ""
                )
                out.append(f"{len(names)} {what}: {shown}")
        return out

    def summary(self) -> Dict[str, Any]:
        d = asdict(self)
        d["n_duplicate_groups"] = len(self.duplicate_groups)
        d["n_duplicate_crops"] = sum(len(g) for g in self.duplicate_groups)
        return d


def _name_key(name: str):
    stem = os.path.splitext(name)[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _read_votes(votes_csv: str) -> Dict[str, Tuple[Tuple[str, ...], Optional[str]]]:
    """File name -> (expert votes, majority); values normalised to Normal/Atypical."""
    labels = {"normal": "Normal", "atypical": "Atypical"}
    rows: Dict[str, Tuple[Tuple[str, ...], Optional[str]]] = {}
    try:
        f = open(votes_csv, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"expert-votes CSV not found: {votes_csv}") from None
    with f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        experts = [h for h in header if re.match(r"(?i)expert", h.strip())]
        name_col = next(
            (h for h in header if h.strip().lower() in ("filename", "file_name", "file")), None
        )
        major_col = next((h for h in header if h.strip().lower() == "majority"), None)
        if name_col is None or not experts:
            raise ValueError(
                f"{votes_csv}: not an AtNorM-MD votes CSV: header {header!r} lacks a 'Filename' "
                f"column or 'Expert_*' columns"
            )
        for line, row in enumerate(reader, start=2):
            name = (row.get(name_col) or "").strip()
            if not name:
                raise ValueError(f"{votes_csv}, line {line}: empty file name")
            if name in rows:
                raise ValueError(f"{votes_csv}, line {line}: file {name!r} appears twice")
            values = []
            for col in experts + ([major_col] if major_col else []):
                raw = (row.get(col) or "").strip()
                if raw.lower() not in labels:
                    raise ValueError(
                        f"{votes_csv}, line {line} ({name}): column {col!r} is {raw!r}, "
                        f"expected 'Normal' or 'Atypical'"
                    )
                values.append(labels[raw.lower()])
            majority = values.pop() if major_col else None
            rows[name] = (tuple(values), majority)
    return rows


def _read_manifest(manifest_csv: str) -> Dict[str, Dict[str, Any]]:
    """``Folder/file.png`` -> its ami-br-midog21 manifest row, parsed and checked (ValueError
    naming the file and line on a malformed row)."""
    from ..constants import SCANNER_ALIASES

    scanners = {a.lower(): b for a, b in SCANNER_ALIASES}
    categories = {c["name"]: c["id"] for c in MIDOG_CATEGORIES}
    need = ("file", "label", "annotation_id", "slide", "scanner", "lab", "x", "y")
    rows: Dict[str, Dict[str, Any]] = {}
    with open(manifest_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{manifest_csv}: not a crop manifest: columns {missing} missing")
        for line, row in enumerate(reader, start=2):
            where = f"{manifest_csv}, line {line}"
            name = (row["file"] or "").strip()
            if not name:
                raise ValueError(f"{where}: empty file name")
            if name in rows:
                raise ValueError(f"{where}: file {name!r} appears twice")
            label = (row["label"] or "").strip().lower()
            if label not in ("normal", "atypical"):
                raise ValueError(
                    f"{where} ({name}): label {row['label']!r}, expected normal/atypical"
                )
            try:
                ann_id = int(row["annotation_id"])
                xy = (float(row["x"]), float(row["y"]))
                others = json.loads(row.get("others_in_crop") or "[]")
            except ValueError as e:
                raise ValueError(f"{where} ({name}): {e}") from None
            if not all(math.isfinite(v) for v in xy):
                raise ValueError(f"{where} ({name}): position {xy} is not finite")
            parsed = []
            for o in others if isinstance(others, list) else [others]:
                ok = isinstance(o, dict) and o.get("label") in categories
                ok = ok and all(isinstance(o.get(k), (int, float)) for k in ("x", "y"))
                if not ok or not all(math.isfinite(float(o[k])) for k in ("x", "y")):
                    raise ValueError(
                        f"{where} ({name}): others_in_crop entry {o!r} is not "
                        '{"x": number, "y": number, "label": "mitotic figure" or '
                        '"not mitotic figure"}'
                    )
                parsed.append((float(o["x"]), float(o["y"]), categories[o["label"]]))
            scanner = row["scanner"].strip()
            rows[name] = {
                "atypical": label == "atypical",
                "annotation_id": ann_id,
                "slide": row["slide"].strip(),
                "scanner": scanners.get(scanner.lower(), scanner),
                "lab": row["lab"].strip(),
                "slide_xy": xy,
                "others": tuple(parsed),
            }
    return rows


def scan_real_figures(
    root: str, votes_csv: Optional[str] = None, *, crop_size: int = CROP_SIZE, strict: bool = False
) -> Tuple[List[RealFigure], RealFigureScan]:
    """
    Read every crop of an AtNorM-MD or ami-br-midog21 folder and join its CSV.

    Args:
        root: folder with ``Normal/`` and ``Atypical/`` (PNG crops).
        votes_csv: the CSV joined to the crops: AtNorM-MD's votes CSV (joined by file
            name) or a ``manifest.csv`` (joined by ``Folder/file``; slide, scanner, lab,
            position, other cells). Default: ``root/AtNorM-MD_expert_votes.csv`` when it
            exists, else ``root/manifest.csv``.
        crop_size: the side every crop must have.
        strict: raise on any mismatch between the folders and the CSV instead of
            reporting it.

    Returns:
        (figures, scan): the crops in folder then numeric-name order, and the
        report. Crops missing from the CSV are kept (``expert_votes`` None);
        CSV rows without a file, crops whose folder disagrees with the CSV
        majority (or manifest label) and identical crops are listed in the report
        and logged. With a manifest the image id is the figure's annotation id.

    Raises:
        FileNotFoundError: ``root``, a class folder or the CSV is missing.
        ValueError: a crop cannot be decoded or is not ``crop_size`` square, a
            file name is in both folders, the CSV is malformed, or (``strict``)
            folders and CSV disagree.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"real-figure folder not found: {root}")
    if votes_csv is None:
        votes_csv = os.path.join(root, VOTES_CSV)
        if not os.path.exists(votes_csv) and os.path.exists(os.path.join(root, MANIFEST_CSV)):
            votes_csv = os.path.join(root, MANIFEST_CSV)
    is_manifest = os.path.basename(votes_csv) == MANIFEST_CSV
    if is_manifest:
        manifest = _read_manifest(votes_csv)
        votes: Dict[str, Any] = {}
    else:
        manifest = {}
        votes = _read_votes(votes_csv)
    scan = RealFigureScan(root=os.path.abspath(root), votes_csv=os.path.abspath(votes_csv))

    entries = _class_entries(root)
    stems = [os.path.splitext(n)[0] for _, n, _ in entries]
    numeric_ids = all(s.isdigit() and int(s) > 0 for s in stems)

    figures: List[RealFigure] = []
    by_hash = defaultdict(list)
    dark_sum = np.zeros((crop_size, crop_size), np.float64)
    n_full = 0
    for i, (folder, name, atypical) in enumerate(entries):
        rel = f"{folder}/{name}"
        path = os.path.join(root, folder, name)
        rgb = _read_square_crop(path, crop_size)
        center, content, darkest = locate_figure(rgb, crop_size)
        sha = hashlib.sha256(rgb.tobytes()).hexdigest()
        by_hash[sha].append(rel)
        image_id = int(stems[i]) if numeric_ids else i + 1
        if is_manifest:
            m = manifest.get(rel)
            row = None if m is None else ((), "Atypical" if m["atypical"] else "Normal")
            extra = {k: v for k, v in (m or {}).items() if k != "atypical"}
            if m is not None:
                image_id = m["annotation_id"]
        else:
            row = votes.get(name)
            extra = {}
        fig = RealFigure(
            file_name=rel,
            image_id=image_id,
            atypical=atypical,
            width=crop_size,
            height=crop_size,
            content_box=content,
            center=center,
            darkest=darkest,
            sha256=sha,
            expert_votes=(row[0] or None) if row else None,
            majority=row[1] if row else None,
            **extra,
        )
        figures.append(fig)
        if row is None:
            scan.missing_from_csv.append(rel)
        elif fig.majority is not None and (fig.majority == "Atypical") != atypical:
            scan.majority_disagrees.append(rel)
        if fig.letterboxed:
            scan.letterboxed.append(rel)
        else:
            dark_sum += 255.0 - rgb.astype(np.float32).mean(axis=2)
            n_full += 1
    scan.n_normal = sum(not f.atypical for f in figures)
    scan.n_atypical = sum(f.atypical for f in figures)
    found = {f"{f}/{n}" for f, n, _ in entries} if is_manifest else {n for _, n, _ in entries}
    scan.csv_without_file = sorted(set(manifest or votes) - found, key=_name_key)
    scan.duplicate_groups = sorted((g for g in by_hash.values() if len(g) > 1), key=lambda g: g[0])
    ids = Counter(f.image_id for f in figures)
    twice = sorted(i for i, n in ids.items() if n > 1)
    if twice:
        raise ValueError(f"{votes_csv}: annotation id(s) of more than one crop: {twice[:20]}")
    if n_full:
        scan.mean_darkness_peak = extreme_point(dark_sum, largest=True)
    _report(scan, root, votes_csv, strict)
    if not figures:
        raise ValueError(f"{root}: no PNG crop in Normal/ or Atypical/")
    return figures, scan


def _class_entries(root: str) -> List[Tuple[str, str, bool]]:
    """(folder, file name, atypical) of every PNG crop of the class folders, in folder then
    numeric-name order (a name in both folders is a ValueError)."""
    entries = []
    for folder, atypical in CLASS_FOLDERS:
        path = os.path.join(root, folder)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"{root}: class folder {folder}/ not found (expected Normal/ and Atypical/)"
            )
        names = sorted((n for n in os.listdir(path) if n.lower().endswith(".png")), key=_name_key)
        entries.extend((folder, n, atypical) for n in names)
    by_name = defaultdict(list)
    for folder, name, _ in entries:
        by_name[name].append(folder)
    both = sorted((n for n, f in by_name.items() if len(f) > 1), key=_name_key)
    if both:
        raise ValueError(
            f"{root}: file name(s) in more than one class folder, cannot join the CSV: {both[:20]}"
        )
    return entries


def _read_square_crop(path: str, crop_size: int) -> np.ndarray:
    """One crop, RGB (ValueError when it cannot be decoded or is not ``crop_size`` square)."""
    try:
        rgb = read_rgb(path)
    except OSError as e:
        raise ValueError(f"cannot decode crop {path}: {e}") from None
    if rgb.shape[:2] != (crop_size, crop_size):
        raise ValueError(
            f"{path}: crop is {rgb.shape[1]} x {rgb.shape[0]} px, expected {crop_size} x "
            f"{crop_size}"
        )
    return rgb


def _report(scan: RealFigureScan, root: str, votes_csv: str, strict: bool) -> None:
    """Raise (``strict``) or log the scan's mismatches, and log its duplicate groups."""
    if strict and scan.problems:
        raise ValueError(f"{root} does not match {votes_csv}:\n  " + "\n  ".join(scan.problems))
    for line in scan.problems:
        logger.warning("%s: %s", root, line)
    if scan.duplicate_groups:
        logger.warning(
            "%s: %d group(s) of pixel-identical crops (kept in one split each): %s",
            root,
            len(scan.duplicate_groups),
            scan.duplicate_groups[:10],
        )


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
        members = sorted(members, key=_name_key)
        # Without slides a group mixing labels goes with the rarer (atypical) stratum.
        key = stratum_of[members[0]] if by_slide else any(stratum_of[m] for m in members)
        strata[key].append(members)

    rng = random.Random(seed)
    where: Dict[str, str] = {}
    for key in sorted(strata, key=str) if by_slide else (False, True):
        grps = sorted(strata.get(key, []), key=lambda g: _name_key(g[0]))
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
    :func:`midog_d2.data.load_midog_json`'s dicts (``tumor_label`` -1) with the
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
