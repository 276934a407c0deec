"""Generated MIDOG-like data: H&E-looking tiled TIFFs, MIDOG++ JSON and CSV.

The real MIDOG images cannot reach every machine, so tests and the demo use
images rendered here. They keep the real dataset's *form* (single-level tiled
TIFF regions of interest with µm/px tags, a MIDOG++ annotation JSON with 50-px
XYXY boxes, the ``;``-separated MIDOG++ CSV) and its hardest property, domain
shift: tumor types differ in architecture, cell density, nuclear size and
chromatin, scanners differ in stain colour, intensity, blur, noise and JPEG
artefacts. Mitotic figures (category 1) are drawn as dark clumped chromatin
with hairy outlines (metaphase plates, prometaphase rings/clumps, anaphase and
telophase pairs) in a pale cytoplasm; hard negatives (category 2) as
look-alikes with smooth outlines (pyknotic/apoptotic bodies, hyperchromatic
nuclei, lymphocytes).

Pictures are rendered as stain concentrations (haematoxylin, eosin, pigment)
and turned into RGB by Beer-Lambert with the scanner's stain matrix, so that a
scanner shift is a shift of the stain vectors, as in real slides.
See docs/synthetic_data.md for the domains and presets.

The domains are :mod:`.synthetic_domains`', the drawing :mod:`.synthetic_draw`'s and
:mod:`.synthetic_render`'s; this module writes datasets (TIFFs, JSON, CSV) and previews.
Images of real pixels (``real_sources``) come from :mod:`.realistic`, which builds on the
renderer, not on this module.
"""

import csv
import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from midog_d2.constants import BOX_SIZE, DEFAULT_MPP, MIDOG_CATEGORIES
from midog_d2.fileio import read_rgb

from .realistic import RealSources, render_realistic_image
from .synthetic_domains import (
    PRESETS,
    SCANNERS,
    TUMOR_TYPES,
    Domain,
    Scanner,
    SyntheticSpec,
    TumorType,
)
from .synthetic_render import Cell, render_image

__all__ = [
    "TumorType",
    "Scanner",
    "Domain",
    "SyntheticSpec",
    "Cell",
    "TUMOR_TYPES",
    "SCANNERS",
    "PRESETS",
    "render_image",
    "write_tiff",
    "generate_dataset",
    "load_positions",
    "render_preview",
]

# --------------------------------------------------------------------------- files

_COMPRESSION = {"deflate": "zlib", "none": None, "jpeg": "jpeg"}


def write_tiff(path: Path, rgb: np.ndarray, mpp: float, compression: str = "deflate") -> None:
    """Write a single-level tiled (256 x 256) RGB TIFF with µm/px resolution tags."""
    import tifffile

    if compression not in _COMPRESSION:
        raise ValueError(
            f"{path}: compression must be one of {sorted(_COMPRESSION)}, not {compression!r}"
        )
    kwargs = {}
    if compression == "jpeg":
        try:
            import imagecodecs  # noqa: F401
        except ImportError as e:
            raise ValueError(f"{path}: TIFF JPEG compression needs the imagecodecs package") from e
        kwargs["compressionargs"] = {"level": 90}
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        compression=_COMPRESSION[compression],
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
        metadata=None,
        maxworkers=1,
        **kwargs,
    )


def load_positions(json_file: Path) -> Dict[str, List[List[Tuple[float, float, int]]]]:
    """
    Cell centres of every annotated image of a MIDOG/MIDOG++ JSON, by canonical tumor type.

    Returns ``{tumor type: [[(x, y, category_id 1 or 2), ...] per image]}``.
    """
    from midog_d2.data.midog import (
        load_midog_json,  # the project's reader: validation, aliases, XYXY boxes
    )

    out: Dict[str, List[List[Tuple[float, float, int]]]] = {}
    for d in load_midog_json(str(json_file), default_tumor_type="human breast cancer"):
        cells = [
            (
                (a["bbox"][0] + a["bbox"][2]) / 2,
                (a["bbox"][1] + a["bbox"][3]) / 2,
                a["category_id"] + 1,
            )
            for a in d["annotations"]
        ]
        if cells:
            out.setdefault(d["tumor_type"], []).append(cells)
    return out


def _crop_positions(
    rng: np.random.Generator,
    cells: List[Tuple[float, float, int]],
    size: Tuple[int, int],
    mpp: float,
    source_mpp: float = DEFAULT_MPP,
) -> List[Tuple[float, float, int]]:
    """The cells of the densest window (of the generated image's physical size) of one real ROI."""
    w, h = size
    pts = np.array(
        [(x * source_mpp / mpp, y * source_mpp / mpp, c) for x, y, c in cells], np.float64
    )
    m = BOX_SIZE / 2
    # The densest window can be slid until one cell touches its left margin and one its
    # top margin, so those origins are the only candidates (at most 150 each way).
    ox_c = np.unique(pts[:, 0] - m)
    oy_c = np.unique(pts[:, 1] - m)
    if len(ox_c) > 150:
        ox_c = np.sort(rng.choice(ox_c, 150, replace=False))
    if len(oy_c) > 150:
        oy_c = np.sort(rng.choice(oy_c, 150, replace=False))
    in_x = (pts[None, :, 0] - ox_c[:, None] >= m) & (
        pts[None, :, 0] - ox_c[:, None] <= w - m
    )  # (X, N)
    in_y = (pts[None, :, 1] - oy_c[:, None] >= m) & (
        pts[None, :, 1] - oy_c[:, None] <= h - m
    )  # (Y, N)
    count = in_x.astype(np.int32) @ in_y.T.astype(np.int32)  # (X, Y)
    bx, by = np.nonzero(count == count.max())
    k = int(rng.integers(len(bx)))
    ox, oy = ox_c[bx[k]], oy_c[by[k]]
    sel = pts[in_x[bx[k]] & in_y[by[k]]]
    out = []
    min_d2 = (6.0 / mpp) ** 2  # cells closer than this would be drawn on top of each other
    for x, y, c in sel:
        x, y = x - ox, y - oy
        if all((x - a) ** 2 + (y - b) ** 2 >= min_d2 for a, b, _ in out):
            out.append((float(x), float(y), int(c)))
    return out


def generate_dataset(
    out_dir: Path,
    spec: SyntheticSpec,
    seed: int = 0,
    positions_from: Optional[Path] = None,
    json_name: str = "synthetic_midog.json",
    csv_name: str = "synthetic_midog.csv",
    real_sources: Optional[RealSources] = None,
) -> Dict[str, object]:
    """
    Render every image of ``spec`` into ``out_dir`` with its annotations.

    Writes ``001.tiff`` ... (tiled, µm/px tags), a MIDOG++-style JSON (XYXY 50-px
    boxes, ``tumor_type`` per image) and a ``;``-separated MIDOG++ CSV
    (``Slide;Dataset;Tumor;Scanner;Origin;Species``). The same ``seed`` gives
    byte-identical files.

    Args:
        positions_from: a MIDOG++ JSON; cells are placed at its real annotation
            positions (the densest window of an annotated image of the same tumor
            type, assumed at 0.25 µm/px) instead of at random.
        real_sources: build every image from real tissue and real mitotic figures
            (:mod:`midog_dev.realistic`) instead of drawing it; the domains'
            scanners still render the stains. Annotations then name their
            ``source_crop``.

    Returns:
        ``{"json_file", "csv_file", "image_root", "images": [{id, file_name, tumor, scanner,
        split, mpp, cells}]}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if real_sources is not None and positions_from is not None:
        raise ValueError(
            "generate_dataset: positions_from places drawn cells; it cannot be used with "
            "real_sources"
        )
    positions = load_positions(positions_from) if positions_from is not None else None
    # Tumor types met in training, in a fixed order: each gets its own share of real tissue.
    train_tumors = list(dict.fromkeys(d.tumor for d in spec.domains if d.split == "train"))
    w, h = spec.image_size
    images, annotations, records = [], [], []
    slide = 0
    tumor_idx = {name: i for i, name in enumerate(TUMOR_TYPES)}
    scanner_idx = {name: i for i, name in enumerate(SCANNERS)}
    for domain in spec.domains:
        mpp = spec.mpp if spec.mpp is not None else SCANNERS[domain.scanner].mpp
        for k in range(domain.num_images):
            slide += 1
            # one stream per (seed, domain, k): an image does not change when other domains
            # are added
            rng = np.random.default_rng(
                [seed, tumor_idx[domain.tumor], scanner_idx[domain.scanner], k]
            )
            rgb, cells = _render_one(
                rng, domain, spec, mpp, positions, positions_from, real_sources, train_tumors
            )
            file_name = f"{slide:03d}.tiff"
            write_tiff(out_dir / file_name, rgb, mpp, spec.compression)
            images.append(
                {
                    "license": 1,
                    "file_name": file_name,
                    "id": slide,
                    "width": w,
                    "height": h,
                    "tumor_type": domain.tumor,
                }
            )
            annotations += _annotations(
                rng, cells, slide, len(annotations) + 1, real_sources is not None
            )
            records.append(
                {
                    "id": slide,
                    "file_name": file_name,
                    "tumor": domain.tumor,
                    "scanner": domain.scanner,
                    "split": domain.split,
                    "mpp": mpp,
                    "cells": cells,
                }
            )
    data = {
        "info": _dataset_info(spec, seed, positions_from, real_sources, train_tumors),
        "licenses": [
            {
                "id": 1,
                "name": "CC0 1.0",
                "url": "https://creativecommons.org/publicdomain/zero/1.0/",
            }
        ],
        "images": images,
        "categories": list(MIDOG_CATEGORIES),
        "annotations": annotations,
    }
    json_file = out_dir / json_name
    json_file.write_text(json.dumps(data, indent=1))
    csv_file = out_dir / csv_name
    _write_csv(csv_file, records)
    return {"json_file": json_file, "csv_file": csv_file, "image_root": out_dir, "images": records}


def _render_one(
    rng: np.random.Generator,
    domain: Domain,
    spec: SyntheticSpec,
    mpp: float,
    positions: Optional[Dict[str, List[List[Tuple[float, float, int]]]]],
    positions_from: Optional[Path],
    real_sources: Optional[RealSources],
    train_tumors: List[str],
) -> Tuple[np.ndarray, List[Cell]]:
    """One image of ``domain`` and its cells: drawn (at ``positions`` of its tumor type when
    given) or built from ``real_sources``; the cell counts are Poisson draws of ``spec``'s
    densities."""
    tumor, scanner = TUMOR_TYPES[domain.tumor], SCANNERS[domain.scanner]
    w, h = spec.image_size
    area_mm2 = w * h * (mpp * 1e-3) ** 2
    pos = None
    if positions is not None:
        pool = positions.get(domain.tumor)
        if not pool:
            raise ValueError(f"{positions_from}: no annotated image of tumor type {domain.tumor!r}")
        pos = _crop_positions(rng, pool[int(rng.integers(len(pool)))], (w, h), mpp)
    n_mit = int(rng.poisson(spec.mitoses_per_mm2 * tumor.mitosis_factor * area_mm2))
    n_imp = int(rng.poisson(spec.imposters_per_mm2 * tumor.imposter_factor * area_mm2))
    if real_sources is None:
        rgb, cells = render_image(tumor, scanner, (w, h), mpp, rng, n_mit, n_imp, pos)
    else:
        rgb, cells = render_realistic_image(
            scanner,
            (w, h),
            mpp,
            rng,
            real_sources,
            real_sources.tissue_for(domain.tumor, train_tumors),
            n_mit,
            n_imp,
            heldout=domain.split == "test",
        )
    return rgb, cells


def _annotations(
    rng: np.random.Generator, cells: List[Cell], image_id: int, first_id: int, real: bool
) -> List[dict]:
    """MIDOG++ annotations of one image's cells (50-px XYXY boxes, ids from ``first_id``),
    with the experts' votes drawn from ``rng`` (after the image: the order of the draws)."""
    out = []
    for i, c in enumerate(cells):
        x1 = int(round(c.x)) - BOX_SIZE // 2
        y1 = int(round(c.y)) - BOX_SIZE // 2
        # experts' votes: the majority is the category, sometimes one dissents
        other = 3 - c.category_id
        votes = [c.category_id, c.category_id] + (
            [other] if rng.random() < 0.15 else [c.category_id] * int(rng.random() < 0.5)
        )
        ann = {
            "bbox": [x1, y1, x1 + BOX_SIZE, y1 + BOX_SIZE],
            "category_id": c.category_id,
            "image_id": image_id,
            "labels": votes,
            "id": first_id + i,
        }
        if real:
            ann["source_crop"] = c.kind
        out.append(ann)
    return out


def _dataset_info(
    spec: SyntheticSpec,
    seed: int,
    positions_from: Optional[Path],
    real_sources: Optional[RealSources],
    train_tumors: List[str],
) -> dict:
    """The JSON's ``info``: how the dataset was made."""
    return {
        "description": "Synthetic MIDOG++-like dataset (midog_dev.synthetic)",
        "seed": seed,
        "spec": json.loads(json.dumps(dataclasses.asdict(spec))),
        "positions_from": Path(positions_from).name if positions_from is not None else None,
        "real_appearance": (
            None
            if real_sources is None
            else {
                "train_tiles": [t.name for t in real_sources.train_tiles],
                "heldout_tiles": [t.name for t in real_sources.heldout_tiles],
                "tissue": {
                    d.tumor: [t.name for t in real_sources.tissue_for(d.tumor, train_tumors)]
                    for d in spec.domains
                },
                "train_crops_used": len(real_sources.train_figures.used),
                "heldout_crops_used": len(real_sources.heldout_figures.used),
                "reshuffles": real_sources.train_figures.reshuffles
                + real_sources.heldout_figures.reshuffles,
            }
        ),
    }


def _write_csv(csv_file: Path, records: List[dict]) -> None:
    """The ``;``-separated MIDOG++ CSV of ``records``
    (Slide;Dataset;Tumor;Scanner;Origin;Species)."""
    with open(csv_file, "w", newline="") as f:
        wr = csv.writer(f, delimiter=";", lineterminator="\n")
        wr.writerow(["Slide", "Dataset", "Tumor", "Scanner", "Origin", "Species"])
        for r in records:
            t = TUMOR_TYPES[r["tumor"]]
            wr.writerow([r["id"], r["split"], r["tumor"], r["scanner"], t.origin, t.species])


# --------------------------------------------------------------------------- preview


def render_preview(
    json_file: Path,
    csv_file: Path,
    out_png: Path,
    image_root: Optional[Path] = None,
    crops_per_domain: int = 3,
    crop: int = 256,
) -> Path:
    """
    A PNG of ``crop``-px crops from each (tumor, scanner) domain, read back from
    the written files, boxes drawn (green: mitotic figure, blue: not mitotic figure),
    stored with a 256-colour palette.
    """
    json_file, csv_file = Path(json_file), Path(csv_file)
    image_root = Path(image_root) if image_root is not None else json_file.parent
    data = json.loads(json_file.read_text())
    with open(csv_file, newline="") as f:
        rows = {int(r["Slide"]): r for r in csv.DictReader(f, delimiter=";")}
    anns: Dict[int, list] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    by_domain: Dict[Tuple[str, str, str], list] = {}
    for im in data["images"]:
        r = rows[im["id"]]
        by_domain.setdefault((r["Tumor"], r["Scanner"], r["Dataset"]), []).append(im)
    label_h = 22
    strips = []
    for (tumor, scanner, split), ims in by_domain.items():
        tiles = []
        # centre crops on mitoses and imposters alternately, over the domain's images
        wanted = [1, 2, 1, 2, 1, 2][:crops_per_domain]
        pool = [(im, a) for im in ims for a in anns.get(im["id"], [])]
        for cat in wanted:
            cands = [(im, a) for im, a in pool if a["category_id"] == cat] or pool
            if not cands:
                break
            im, a = cands[len(tiles) % len(cands)]
            pool = [p for p in pool if p[1] is not a]
            img = read_rgb(image_root / im["file_name"])
            cx, cy = (a["bbox"][0] + a["bbox"][2]) // 2, (a["bbox"][1] + a["bbox"][3]) // 2
            x0 = int(np.clip(cx - crop // 2, 0, max(im["width"] - crop, 0)))
            y0 = int(np.clip(cy - crop // 2, 0, max(im["height"] - crop, 0)))
            tile = np.ascontiguousarray(img[y0 : y0 + crop, x0 : x0 + crop, :3])
            for b in anns.get(im["id"], []):
                x1, y1, x2, y2 = b["bbox"]
                color = (0, 200, 0) if b["category_id"] == 1 else (40, 90, 255)
                cv2.rectangle(tile, (x1 - x0, y1 - y0), (x2 - x0, y2 - y0), color, 2)
            tiles.append(tile)
        if not tiles:
            continue
        row = np.concatenate(tiles, axis=1)
        bar = np.full((label_h, row.shape[1], 3), 255, np.uint8)
        cv2.putText(
            bar,
            f"{tumor} | {scanner} | {split}",
            (4, 16),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        strips.append(np.concatenate([bar, row], axis=0))
    if not strips:
        raise ValueError(f"{json_file}: no annotated image to preview")
    width = max(s.shape[1] for s in strips)
    strips = [
        np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips
    ]
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    # a 256-colour palette keeps the PNG small enough for the docs (about 3x smaller)
    Image.fromarray(np.concatenate(strips, axis=0)).quantize(
        256, method=Image.Quantize.MEDIANCUT
    ).save(out_png, optimize=True)
    return out_png
