"""Whole slides: the tissue mask on a thumbnail, the tiles that hold tissue, streamed through the
one tile -> batch -> model -> shift -> merge path, and the clinical read-out of the result.

A slide is never decoded at once: the mask comes from a thumbnail (OpenSlide reads it from the
pyramid), tiles are read lazily at the model's µm/px, and detections are merged as tiles
arrive, so memory follows the tile batch and the detections, not the slide.
"""

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from detectron2.config import configurable

from ..constants import MITOTIC_FIGURE
from ..fileio.slide import (
    MPP_METADATA,
    fallback_mpp,
    resample_scale,
    slide_dimensions,
    slide_resolution,
    slide_thumbnail,
)
from .clinical import HPF10_MM2, Hotspot, find_hotspot, mitotic_density
from .fold import fold_batchnorm as fold
from .grid import ScaledTile, scaled_tile_grid
from .predictor import TiledPredictor
from .tissue import TISSUE_METHODS, tile_tissue_fraction, tissue_mask

__all__ = [
    "SlidePredictor",
    "SlideReadout",
    "SlideResult",
    "slide_readout",
    "window_tissue_mm2",
]


@dataclass
class SlideResult:
    """One slide's detections and what was analysed.

    ``xy`` (N, 2) box centres, ``boxes`` (N, 4) and ``scores`` (N,) of the mitotic-figure
    detections in level-0 pixels, by decreasing score; ``thumbnail`` (RGB) and ``mask``
    (bool, same size; None when the tissue mask is off) with ``thumb_scale`` thumbnail
    pixels per level-0 pixel; ``tissue_mm2``: the tissue inside the tiles that were read
    (the whole image when the mask is off); ``mpp_source``: where ``mpp`` came from
    (:func:`~midog_d2.fileio.slide.slide_resolution`)."""

    path: str
    width: int
    height: int
    mpp: float
    scale: float
    xy: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    tiles_total: int
    tiles_read: int
    tissue_mm2: float
    thumbnail: np.ndarray
    thumb_scale: float
    mask: Optional[np.ndarray] = None
    seconds: float = 0.0
    read_tiles: List[ScaledTile] = field(default_factory=list)
    mpp_source: str = MPP_METADATA


@dataclass(frozen=True)
class SlideReadout:
    """The clinical numbers of a slide at an operating threshold: the mitotic count (scores
    at or above it), its density over the analysed tissue and the hotspot."""

    count: int
    tissue_mm2: float
    per_mm2: float
    hotspot: Optional[Hotspot]


def slide_readout(
    result: SlideResult, threshold: float, area_mm2: float = HPF10_MM2, aspect: float = 4 / 3
) -> SlideReadout:
    """:class:`SlideReadout` of ``result`` at ``threshold`` with a hotspot window of
    ``area_mm2`` (width = ``aspect`` × height)."""
    count = int((result.scores >= threshold).sum())
    hotspot = find_hotspot(
        result.xy,
        result.scores,
        threshold,
        (result.width, result.height),
        result.mpp,
        area_mm2,
        aspect,
    )
    if hotspot is not None and result.mask is not None:
        # The density of the hotspot, like the slide's, is over tissue, not glass.
        tissue = window_tissue_mm2(result.mask, result.thumb_scale, result.mpp, hotspot)
        hotspot = replace(
            hotspot, tissue_mm2=tissue, per_mm2=mitotic_density(hotspot.count, tissue)
        )
    return SlideReadout(
        count, result.tissue_mm2, mitotic_density(count, result.tissue_mm2), hotspot
    )


def window_tissue_mm2(mask: np.ndarray, thumb_scale: float, mpp: float, hotspot: Hotspot) -> float:
    """The tissue (mask pixels, each ``1 / thumb_scale`` level-0 pixels wide) inside the
    hotspot's window, in mm²: whole mask pixels inside it, and the border pixels by the
    fraction of them that the window covers."""
    h, w = mask.shape
    x0, x1 = hotspot.x0 * thumb_scale, hotspot.x1 * thumb_scale
    y0, y1 = hotspot.y0 * thumb_scale, hotspot.y1 * thumb_scale
    cols = np.clip(np.minimum(np.arange(1, w + 1), x1) - np.maximum(np.arange(w), x0), 0, 1)
    rows = np.clip(np.minimum(np.arange(1, h + 1), y1) - np.maximum(np.arange(h), y0), 0, 1)
    mask_px = float(rows @ mask.astype(np.float64) @ cols)
    return mask_px / thumb_scale**2 * (mpp / 1000.0) ** 2


class SlidePredictor:
    """
    Runs a detector over whole slides, tissue only.

    The tissue mask (:func:`~.tissue.tissue_mask`) is computed on a thumbnail of at most
    ``thumbnail_size`` px; a tile of :class:`~.predictor.TiledPredictor`'s grid is read
    when it holds tissue, at least ``min_tissue_fraction`` of its area. The tiles go through
    :meth:`TiledPredictor.stream` (read ahead, batched, merged as they arrive), with the
    slide's own µm/px (``slide_mpp``, else ``fallback_mpp``), so that a slide at another
    µm/px is read at the model's and its detections come back in its level-0 pixels.
    Detections centred on glass are dropped (a tile at the tissue's edge sees both).
    """

    @configurable
    def __init__(
        self,
        tiled: TiledPredictor,
        *,
        tissue: bool = True,
        tissue_method: str = "saturation",
        tissue_threshold: Optional[float] = None,
        min_tissue_fraction: float = 0.05,
        thumbnail_size: int = 2048,
        drop_outside_tissue: bool = True,
        fallback_mpp: Optional[float] = None,
        mpp: Optional[float] = None,
        channels_last: bool = False,
        fold_batchnorm: bool = False,
    ):
        """
        Args:
            tiled: the tiled predictor whose model, grid, precision and readers are used.
            tissue, tissue_method, tissue_threshold, min_tissue_fraction, thumbnail_size:
                ``TEST.TISSUE.*`` (threshold None: Otsu's on each thumbnail).
            drop_outside_tissue: drop detections centred on glass (outside the mask grown
                by one thumbnail pixel), ``TEST.TISSUE.DROP_OUTSIDE``.
            fallback_mpp: µm/px of files without resolution metadata
                (``DATASETS.MIDOG.FALLBACK_MPP``); None makes such a file an error.
            mpp: µm/px every slide is analysed at, whatever its file says
                (``TEST.SLIDE_MPP``; None: each file's own).
            channels_last: put the model's weights in channels-last memory format
                (``TEST.TILE.CHANNELS_LAST``; changes the model passed in, in place).
            fold_batchnorm: fold BatchNorm into the convolutions of a model in eval mode
                (``TEST.TILE.FOLD_BATCHNORM``; in place, :func:`~.fold.fold_batchnorm`).
        """
        if tissue_method not in TISSUE_METHODS:
            raise ValueError(
                f"TEST.TISSUE.METHOD must be one of {TISSUE_METHODS}, got {tissue_method!r}"
            )
        if not 0.0 <= min_tissue_fraction <= 1.0:
            raise ValueError(
                f"TEST.TISSUE.MIN_FRACTION must be in [0, 1], got {min_tissue_fraction}"
            )
        if thumbnail_size < 16:
            raise ValueError(f"TEST.TISSUE.THUMBNAIL_SIZE must be >= 16, got {thumbnail_size}")
        self.tiled = tiled
        self.tissue = bool(tissue)
        self.tissue_method = tissue_method
        self.tissue_threshold = tissue_threshold
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.thumbnail_size = int(thumbnail_size)
        self.drop_outside_tissue = bool(drop_outside_tissue)
        self.fallback_mpp = fallback_mpp
        self.mpp = mpp
        if fold_batchnorm and not tiled.model.training:
            fold(tiled.model)
        if channels_last:
            tiled.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, tiled: Optional[TiledPredictor] = None):
        t = cfg.TEST.TISSUE
        return {
            "tiled": tiled if tiled is not None else TiledPredictor(cfg, model),
            "tissue": t.ENABLED,
            "tissue_method": t.METHOD,
            "tissue_threshold": None if t.THRESHOLD < 0 else float(t.THRESHOLD),
            "min_tissue_fraction": t.MIN_FRACTION,
            "thumbnail_size": t.THUMBNAIL_SIZE,
            "drop_outside_tissue": t.DROP_OUTSIDE,
            "fallback_mpp": fallback_mpp(cfg.DATASETS.MIDOG.FALLBACK_MPP),
            "mpp": cfg.TEST.SLIDE_MPP or None,
            "channels_last": cfg.TEST.TILE.CHANNELS_LAST,
            "fold_batchnorm": cfg.TEST.TILE.FOLD_BATCHNORM,
        }

    def tiles(self, path: str) -> Tuple[List[ScaledTile], int, Dict[str, Any]]:
        """The tiles of ``path`` to read, the size of the full grid and the slide's facts
        (``width``, ``height``, ``mpp``, ``mpp_source``, ``scale``, ``thumbnail``, ``thumb_scale``,
        ``mask``, ``tissue_mm2``)."""
        width, height = slide_dimensions(path)
        mpp, mpp_source = slide_resolution(path, self.fallback_mpp, self.mpp)
        t = self.tiled
        scale = resample_scale(mpp, t.model_mpp, t.mpp_tolerance)
        grid = scaled_tile_grid((0, 0, width, height), t.tile_size, t.overlap, scale)
        thumb, thumb_scale = slide_thumbnail(path, self.thumbnail_size)
        facts: Dict[str, Any] = dict(
            width=width, height=height, mpp=mpp, mpp_source=mpp_source, scale=scale
        )
        facts["thumbnail"] = thumb
        facts["thumb_scale"] = thumb_scale
        px_mm2 = (mpp / 1000.0) ** 2
        if not self.tissue:
            facts.update(mask=None, tissue_mm2=width * height * px_mm2)
            return grid, len(grid), facts
        mask = tissue_mask(thumb, self.tissue_method, self.tissue_threshold)
        per_mask_px = 1.0 / thumb_scale  # level-0 pixels per mask pixel
        boxes = [(x, y, x + w / scale, y + h / scale) for x, y, w, h in grid]
        chosen = [
            tile
            for tile, box in zip(grid, boxes)
            if (f := tile_tissue_fraction(mask, per_mask_px, box)) > 0
            and f >= self.min_tissue_fraction
        ]
        # Analysed tissue: mask pixels inside the tiles that are read.
        covered = np.zeros_like(mask)
        mh, mw = mask.shape
        for x, y, w, h in chosen:
            c0, r0 = int(x * thumb_scale), int(y * thumb_scale)
            c1 = min(mw, int(np.ceil((x + w / scale) * thumb_scale)))
            r1 = min(mh, int(np.ceil((y + h / scale) * thumb_scale)))
            covered[r0:r1, c0:c1] = True
        facts.update(mask=mask, tissue_mm2=float((mask & covered).sum()) * per_mask_px**2 * px_mm2)
        return chosen, len(grid), facts

    def predict(
        self,
        path: str,
        progress: Optional[Callable[[int], None]] = None,
        on_tiles: Optional[Callable[[int], None]] = None,
    ) -> SlideResult:
        """Detections of ``path`` (see the class docstring); ``on_tiles(n)`` is called once
        with the number of tiles to read, ``progress(n)`` after each batch with the number
        of tiles it held."""
        start = time.perf_counter()
        tiles, total, facts = self.tiles(path)
        if on_tiles is not None:
            on_tiles(len(tiles))
        boxes, scores, classes = [], [], []
        for part in self.tiled.stream(path, tiles, facts["scale"], facts["mpp"]):
            boxes.append(part.boxes)
            scores.append(part.scores)
            classes.append(part.classes)
            if progress is not None:
                progress(len(part.tiles))
        b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        s = np.concatenate(scores) if scores else np.zeros(0)
        c = np.concatenate(classes) if classes else np.zeros(0, np.int64)
        keep = c == MITOTIC_FIGURE
        if facts["mask"] is not None and self.drop_outside_tissue and len(b):
            keep &= _on_tissue(facts["mask"], facts["thumb_scale"], (b[:, :2] + b[:, 2:]) / 2)
        b, s = b[keep], s[keep]
        order = np.argsort(-s, kind="stable")
        b, s = b[order], s[order]
        return SlideResult(
            path=path,
            width=facts["width"],
            height=facts["height"],
            mpp=facts["mpp"],
            scale=facts["scale"],
            xy=(b[:, :2] + b[:, 2:]) / 2.0,
            boxes=b,
            scores=s,
            tiles_total=total,
            tiles_read=len(tiles),
            tissue_mm2=facts["tissue_mm2"],
            thumbnail=facts["thumbnail"],
            thumb_scale=facts["thumb_scale"],
            mask=facts["mask"],
            seconds=time.perf_counter() - start,
            read_tiles=list(tiles),
            mpp_source=facts["mpp_source"],
        )


def _on_tissue(mask: np.ndarray, thumb_scale: float, xy: np.ndarray) -> np.ndarray:
    """Whether each level-0 point lies on the mask grown by one pixel (a cell on the
    tissue's edge stays)."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    h, w = grown.shape
    cols = np.clip((xy[:, 0] * thumb_scale).astype(np.int64), 0, w - 1)
    rows = np.clip((xy[:, 1] * thumb_scale).astype(np.int64), 0, h - 1)
    return grown[rows, cols]
