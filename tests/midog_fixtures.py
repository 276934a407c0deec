"""Small MIDOG++-style datasets for the product's tests, written here and not by the
development generators (``midog_dev``): a few tiled TIFFs with µm/px tags, the MIDOG++ JSON
(50-px XYXY boxes, ``tumor_type`` per image, experts' votes) and its ``;``-separated CSV.

Each image is pink stroma with pale nuclei, a few dark clumped "mitotic figures" and a few
dark round "imposters" (labelled non-mitotic cells): enough for a detector to learn from in
a few iterations, and for every reader, mapper and evaluator to meet what MIDOG files hold.
"""

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np
import tifffile

from midog_d2.constants import BOX_SIZE, MIDOG_CATEGORIES

__all__ = ["TINY_DOMAINS", "SCANNER_MPP", "write_midog_dataset", "write_tiled_tiff"]

# (tumor type, scanner, split, images): two training domains and a held-out tumor type.
TINY_DOMAINS: Tuple[Tuple[str, str, str, int], ...] = (
    ("human breast cancer", "Hamamatsu XR", "train", 1),
    ("human breast cancer", "Aperio CS2", "train", 1),
    ("human neuroendocrine tumor", "Hamamatsu XR", "test", 1),
)
# MIDOG's scanners at their native resolution.
SCANNER_MPP = {"Hamamatsu XR": 0.23, "Hamamatsu S360": 0.23, "Aperio CS2": 0.25}
_SPECIES = {"human": ("Human", "UMC Utrecht"), "canine": ("Canine", "VetMedUni Vienna")}


def _place(rng: np.random.Generator, n: int, size: Tuple[int, int], min_dist: float, taken):
    """``n`` centres at least ``min_dist`` px from each other, the border and ``taken``."""
    w, h = size
    margin = BOX_SIZE // 2 + 2
    out: List[Tuple[float, float]] = []
    for _ in range(200 * max(n, 1)):
        if len(out) == n:
            break
        x, y = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
        if all((x - a) ** 2 + (y - b) ** 2 >= min_dist**2 for a, b in [*taken, *out]):
            out.append((float(x), float(y)))
    if len(out) < n:
        raise ValueError(f"write_midog_dataset: {n} cells do not fit an image of {w}x{h} px")
    return out


def _draw(rng, size, mpp, figures, imposters) -> np.ndarray:
    w, h = size
    img = np.empty((h, w, 3), np.float32)
    img[:] = (232, 180, 205)
    img += rng.normal(0, 6, img.shape)
    r = 3.5 / mpp  # a nucleus of 7 µm
    for x, y in rng.uniform((0, 0), (w, h), (int(w * h * mpp**2 / 250), 2)):
        axes = (int(r * rng.uniform(0.8, 1.2)), int(r * rng.uniform(0.6, 1.0)))
        cv2.ellipse(img, (int(x), int(y)), axes, rng.uniform(0, 180), 0, 360, (150, 110, 185), -1)
    for x, y in imposters:  # dark, round, smooth
        cv2.circle(img, (int(x), int(y)), int(r), (95, 60, 140), -1)
    for x, y in figures:  # darker, clumped, ragged
        for _ in range(7):
            dx, dy = rng.normal(0, r * 0.35, 2)
            cv2.circle(img, (int(x + dx), int(y + dy)), int(r * 0.45), (45, 20, 85), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tiled_tiff(path, rgb: np.ndarray, mpp: float = 0.25) -> str:
    """A tiled (256 px), deflate-compressed RGB TIFF with its µm/px in the resolution tags,
    as MIDOG's ROIs are (OpenSlide reads it as generic-tiff). Returns the path."""
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        compression="zlib",
        resolution=(1e4 / mpp, 1e4 / mpp),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    return str(path)


def write_midog_dataset(
    out_dir: Path,
    domains: Sequence[Tuple[str, str, str, int]] = TINY_DOMAINS,
    size: Tuple[int, int] = (384, 320),
    seed: int = 0,
    figures: int = 3,
    imposters: int = 3,
) -> Dict[str, Any]:
    """Write ``domains`` ((tumor type, scanner, split, images) each) into ``out_dir``:
    ``001.tiff`` ..., ``midog.json`` and ``midog.csv``, ``figures`` mitotic figures and
    ``imposters`` labelled non-mitotic cells per image. The same ``seed`` gives the same
    files.

    Returns ``{"json_file", "csv_file", "image_root", "images": [{id, file_name, tumor,
    scanner, split, mpp, cells: [(x, y, category_id)]}]}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations, records = [], [], []
    for tumor, scanner, split, n in domains:
        mpp = SCANNER_MPP.get(scanner, 0.25)
        for _ in range(n):
            image_id = len(images) + 1
            fig = _place(rng, figures, size, BOX_SIZE, [])
            imp = _place(rng, imposters, size, BOX_SIZE, fig)
            file_name = f"{image_id:03d}.tiff"
            write_tiled_tiff(out_dir / file_name, _draw(rng, size, mpp, fig, imp), mpp)
            images.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "width": size[0],
                    "height": size[1],
                    "tumor_type": tumor,
                }
            )
            cells = [(x, y, 1) for x, y in fig] + [(x, y, 2) for x, y in imp]
            for x, y, c in cells:
                x1, y1 = int(round(x)) - BOX_SIZE // 2, int(round(y)) - BOX_SIZE // 2
                annotations.append(
                    {
                        "bbox": [x1, y1, x1 + BOX_SIZE, y1 + BOX_SIZE],
                        "category_id": c,
                        "image_id": image_id,
                        "labels": [c, c, c],
                        "id": len(annotations) + 1,
                    }
                )
            records.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "tumor": tumor,
                    "scanner": scanner,
                    "split": split,
                    "mpp": mpp,
                    "cells": cells,
                }
            )
    data = {"images": images, "categories": list(MIDOG_CATEGORIES), "annotations": annotations}
    json_file = out_dir / "midog.json"
    json_file.write_text(json.dumps(data, indent=1))
    csv_file = out_dir / "midog.csv"
    with open(csv_file, "w", newline="") as f:
        wr = csv.writer(f, delimiter=";", lineterminator="\n")
        wr.writerow(["Slide", "Dataset", "Tumor", "Scanner", "Origin", "Species"])
        for r in records:
            species, origin = _SPECIES[r["tumor"].split()[0]]
            wr.writerow([r["id"], r["split"], r["tumor"], r["scanner"], origin, species])
    return {"json_file": json_file, "csv_file": csv_file, "image_root": out_dir, "images": records}
