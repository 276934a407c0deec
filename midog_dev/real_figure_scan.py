"""Reading the AMi-Br crop folders: ``Normal/`` and ``Atypical/`` PNG crops with the experts'
votes CSV (AtNorM-MD) or a ``manifest.csv`` (MIDOG 2021 crops with slide, scanner, position and
the other labelled cells), each crop's figure located (:mod:`.crop_position`), every mismatch
between folders and CSV reported by name. :mod:`.real_figures` turns the scan into MIDOG files."""

import csv
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from midog_d2.constants import BOX_SIZE, MIDOG_CATEGORIES
from midog_d2.fileio import read_rgb

from .crop_position import CROP_SIZE, locate_figure
from .nuclei import extreme_point

logger = logging.getLogger(__name__)

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


def crop_sort_key(name: str) -> Tuple[int, int, str]:
    """Crop files in numeric order ("2.png" before "10.png"), other names after, by name."""
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
    from midog_d2.constants import SCANNER_ALIASES

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
    scan.csv_without_file = sorted(set(manifest or votes) - found, key=crop_sort_key)
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
        names = sorted(
            (n for n in os.listdir(path) if n.lower().endswith(".png")), key=crop_sort_key
        )
        entries.extend((folder, n, atypical) for n in names)
    by_name = defaultdict(list)
    for folder, name, _ in entries:
        by_name[name].append(folder)
    both = sorted((n for n, f in by_name.items() if len(f) > 1), key=crop_sort_key)
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
