"""Whole-image inference in overlapping tiles, merged across tile seams."""

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.structures import Boxes, Instances

from ..data.slide import read_region_scaled, resample_scale

__all__ = ["TiledPredictor", "tile_grid", "scaled_tile_grid", "suppress_close_points"]

Region = Tuple[int, int, int, int]
# A tile read at a scale: level-0 top-left (x, y) and its size (w, h) in model pixels.
ScaledTile = Tuple[int, int, int, int]


def _starts(lo: int, hi: int, size: int, stride: int) -> List[int]:
    """Tile starts covering [lo, hi): regular steps, the last tile flush with ``hi``."""
    if hi - lo <= size:
        return [lo]
    starts = list(range(lo, hi - size, stride))
    return starts + [hi - size]


def tile_grid(region: Sequence[int], size: int, overlap: int) -> List[Region]:
    """Tiles (x0, y0, x1, y1) covering ``region`` (x0, y0, x1, y1): ``size`` px squares
    at stride ``size - overlap``, the last row/column shifted to end on the region's
    edge (so tiles never leave it), one smaller tile along a side shorter than ``size``."""
    x0, y0, x1, y1 = (int(v) for v in region)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty region {tuple(region)}")
    if not 0 <= overlap < size:
        raise ValueError(f"tile overlap must be in [0, size={size}), got {overlap}")
    stride = size - overlap
    return [
        (tx, ty, min(tx + size, x1), min(ty + size, y1))
        for ty in _starts(y0, y1, size, stride)
        for tx in _starts(x0, x1, size, stride)
    ]


def scaled_tile_grid(
    region: Sequence[int], size: int, overlap: int, scale: float = 1.0
) -> List[ScaledTile]:
    """Tiles (x, y, w, h) covering level-0 ``region`` (x0, y0, x1, y1) when it is
    read at ``scale`` model pixels per level-0 pixel: :func:`tile_grid` laid out in
    model pixels (``size`` px squares, stride ``size - overlap``), each tile's origin
    rounded to a level-0 pixel (x, y), its size (w, h) in model pixels; it covers
    level-0 [x, x + w / scale) x [y, y + h / scale) inside ``region``. At scale 1
    these are :func:`tile_grid`'s tiles."""
    x0, y0, x1, y1 = (int(v) for v in region)
    if scale == 1.0:
        return [(a, b, c - a, d - b) for a, b, c, d in tile_grid(region, size, overlap)]
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive number, got {scale}")
    # The region in model pixels: those whose level-0 footprint lies inside it.
    model_region = (
        math.ceil(x0 * scale),
        math.ceil(y0 * scale),
        math.floor(x1 * scale),
        math.floor(y1 * scale),
    )
    if model_region[2] <= model_region[0] or model_region[3] <= model_region[1]:
        raise ValueError(f"region {tuple(region)} is under one pixel wide at scale {scale}")
    tiles = []
    for u0, v0, u1, v1 in tile_grid(model_region, size, overlap):
        w, h = u1 - u0, v1 - v0
        # Rounding may push a tile up to half a pixel past the region's far edge: pull it back.
        x = min(max(round(u0 / scale), x0), max(x0, math.floor(x1 - w / scale)))
        y = min(max(round(v0 / scale), y0), max(y0, math.floor(y1 - h / scale)))
        tiles.append((x, y, w, h))
    return tiles


def suppress_close_points(
    centres: np.ndarray, scores: np.ndarray, classes: np.ndarray, radius: float
) -> np.ndarray:
    """Indices (by decreasing score) of the detections kept after dropping every one
    whose centre is closer than ``radius`` to a kept, higher-scoring detection of the
    same class. ``radius <= 0`` keeps all."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    if radius <= 0 or len(order) == 0:
        return order
    centres = np.asarray(centres, dtype=np.float64)
    r2 = radius * radius
    # Hash kept points into radius-sized cells: only the 3 x 3 neighbouring cells can
    # hold a point closer than the radius.
    cells = np.floor(centres / radius).astype(np.int64)
    grid: Dict[Tuple[int, int, int], List[int]] = {}
    keep = []
    for i in order.tolist():
        cx, cy = cells[i]
        c = int(classes[i])
        close = False
        for gx in (cx - 1, cx, cx + 1):
            for gy in (cy - 1, cy, cy + 1):
                for j in grid.get((c, gx, gy), ()):
                    d = centres[i] - centres[j]
                    if d[0] * d[0] + d[1] * d[1] < r2:
                        close = True
                        break
                if close:
                    break
            if close:
                break
        if not close:
            keep.append(i)
            grid.setdefault((c, int(cx), int(cy)), []).append(i)
    return np.asarray(keep, dtype=np.int64)


class TiledPredictor(nn.Module):
    """
    Runs a detector over whole MIDOG images in tiles, so that
    ``inference_on_dataset(TiledPredictor(model, cfg), loader, evaluator)`` works
    unchanged.

    Each input dict needs ``file_name`` and ``height``/``width`` (the image's level-0
    size), and may hold ``region`` (x0, y0, x1, y1: infer there only) and ``mpp``.
    An image whose µm/px differs from ``INPUT.MODEL_MPP`` by more than
    ``INPUT.MPP_TOLERANCE`` is read resampled to it (scale = mpp / MODEL_MPP model
    pixels per level-0 pixel, :func:`midog_d2.data.read_region_scaled`): tiles are
    ``TEST.TILE.SIZE`` model pixels (:func:`scaled_tile_grid`), and detections are
    scaled back, so every output is in level-0 pixels.
    Tiles are read one batch at a time (RGB; the next batch in a background thread
    while the model runs), converted to ``INPUT.FORMAT`` and given to the model as
    ``{"image", "height", "width"}``.
    Detections are moved to image coordinates and merged across seams: a detection
    closer than ``TEST.TILE.MERGE_RADIUS_UM`` to a higher-scoring one of the same class
    is dropped (the reference approach's slide-level suppression; it also acts within
    a tile, after the model's own per-tile NMS).

    Output per image: ``instances`` (image_size = (height, width); ``pred_boxes``,
    ``scores``, ``pred_classes``, by decreasing score, level-0 pixels), ``tiles`` (T, 4)
    level-0 tile boxes, ``scale`` (model pixels per level-0 pixel) and, when the model
    gives them, ``tumor_probs`` (mean over tiles) and ``foreground_prob`` (T,), one per
    tile.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg=None,
        *,
        tile_size: Optional[int] = None,
        overlap: Optional[int] = None,
        batch_size: Optional[int] = None,
        merge_radius_um: Optional[float] = None,
        input_format: Optional[str] = None,
        default_mpp: Optional[float] = None,
        model_mpp: Optional[float] = None,
        mpp_tolerance: Optional[float] = None,
        reader: Optional[Callable[[str, int, int, int, int, float], np.ndarray]] = None,
    ):
        """
        Args:
            model: a detector taking Detectron2 inputs, in eval mode.
            cfg: supplies TEST.TILE.*, INPUT.FORMAT, INPUT.MODEL_MPP, INPUT.MPP_TOLERANCE
                and DATASETS.MIDOG.FALLBACK_MPP; the keyword arguments override it.
            default_mpp: µm/px of inputs without ``mpp`` (converts the merge radius,
                sets the scale).
            model_mpp: µm/px the model works at; None/0 (the default without a cfg)
                reads every image at its own resolution.
            mpp_tolerance: relative µm/px difference read without resampling.
            reader: ``(path, x, y, w, h, scale) -> (h, w, 3) uint8 RGB``, the window of
                ``w`` x ``h`` model pixels from level-0 (x, y) at ``scale``; default
                ``midog_d2.data.read_region_scaled``.
        """
        super().__init__()

        def pick(value, key, fallback):
            if value is not None:
                return value
            if cfg is None:
                return fallback
            node = cfg
            for part in key.split("."):
                node = node[part]
            return node

        self.model = model
        self.tile_size = int(pick(tile_size, "TEST.TILE.SIZE", 512))
        self.overlap = int(pick(overlap, "TEST.TILE.OVERLAP", 52))
        self.batch_size = int(pick(batch_size, "TEST.TILE.BATCH_SIZE", 8))
        self.merge_radius_um = float(pick(merge_radius_um, "TEST.TILE.MERGE_RADIUS_UM", 6.25))
        self.input_format = pick(input_format, "INPUT.FORMAT", "BGR")
        self.default_mpp = float(pick(default_mpp, "DATASETS.MIDOG.FALLBACK_MPP", 0.25))
        self.model_mpp = pick(model_mpp, "INPUT.MODEL_MPP", None)
        self.mpp_tolerance = float(pick(mpp_tolerance, "INPUT.MPP_TOLERANCE", 0.0))
        self.reader = reader or read_region_scaled
        if self.batch_size < 1:
            raise ValueError(f"TEST.TILE.BATCH_SIZE must be >= 1, got {self.batch_size}")
        tile_grid((0, 0, 1, 1), self.tile_size, self.overlap)  # validates size/overlap

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        if self.model.training:
            raise RuntimeError("TiledPredictor runs inference only: call .eval() first")
        with torch.no_grad():
            return [self.predict_image(x) for x in batched_inputs]

    def _tile_input(self, path: str, tile: "ScaledTile", scale: float) -> Dict[str, Any]:
        x, y, w, h = tile
        rgb = self.reader(path, x, y, w, h, scale)
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"{path}: reading tile {tile} gave an array of shape {rgb.shape} and dtype {rgb.dtype}, "
                f"expected ({h}, {w}, 3) uint8 RGB"
            )
        image = convert_PIL_to_numpy(Image.fromarray(rgb), self.input_format)
        chw = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": chw, "height": h, "width": w}

    def _batches(
        self, path: str, tiles: List["ScaledTile"], scale: float
    ) -> Iterator[Tuple[List["ScaledTile"], List[Dict]]]:
        """Batches of tile inputs; the next batch is read in a background thread while
        the model runs on the current one (at most two batches in memory)."""
        chunks = [tiles[i : i + self.batch_size] for i in range(0, len(tiles), self.batch_size)]

        def read(chunk):
            return [self._tile_input(path, t, scale) for t in chunk]

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read, chunks[0])
            for k, chunk in enumerate(chunks):
                inputs = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(read, chunks[k + 1])
                yield chunk, inputs

    def predict_image(self, inp: Dict[str, Any]) -> Dict[str, Any]:
        """Tiled inference on one input dict (see the class docstring)."""
        path = inp["file_name"]
        height, width = int(inp["height"]), int(inp["width"])
        region = inp.get("region")
        region = (
            (0, 0, width, height) if region is None else tuple(int(round(float(v))) for v in region)
        )
        mpp = float(inp.get("mpp") or self.default_mpp)
        scale = resample_scale(mpp, self.model_mpp, self.mpp_tolerance)
        tiles = scaled_tile_grid(region, self.tile_size, self.overlap, scale)

        boxes, scores, classes = [], [], []
        tumor_sum, fg = None, []
        for chunk, tile_inputs in self._batches(path, tiles, scale):
            outputs = self.model(tile_inputs)
            for (tx, ty, _, _), out in zip(chunk, outputs):
                inst = out["instances"].to("cpu")
                b = inst.pred_boxes.tensor
                shift = torch.tensor([tx, ty, tx, ty], dtype=b.dtype)
                # model pixels of the tile -> level-0 pixels of the image
                boxes.append((b if scale == 1.0 else b / scale) + shift)
                scores.append(inst.scores)
                classes.append(inst.pred_classes)
                if "tumor_probs" in out:
                    p = out["tumor_probs"].detach().cpu().double()
                    tumor_sum = p if tumor_sum is None else tumor_sum + p
                if "foreground_prob" in out:
                    fg.append(float(out["foreground_prob"]))

        boxes_t = torch.cat(boxes) if boxes else torch.zeros((0, 4))
        scores_t = torch.cat(scores) if scores else torch.zeros((0,))
        classes_t = torch.cat(classes) if classes else torch.zeros((0,), dtype=torch.int64)
        centres = ((boxes_t[:, :2] + boxes_t[:, 2:]) / 2).double().numpy()
        keep = suppress_close_points(
            centres, scores_t.double().numpy(), classes_t.numpy(), self.merge_radius_um / mpp
        )
        keep_t = torch.as_tensor(keep, dtype=torch.int64)

        result = Instances((height, width))
        result.pred_boxes = Boxes(boxes_t[keep_t])
        result.scores = scores_t[keep_t]
        result.pred_classes = classes_t[keep_t]
        tile_boxes = [(x, y, x + w / scale, y + h / scale) for x, y, w, h in tiles]
        out: Dict[str, Any] = {
            "instances": result,
            "tiles": torch.tensor(tile_boxes, dtype=torch.float32),
            "scale": scale,
        }
        if tumor_sum is not None:
            out["tumor_probs"] = (tumor_sum / len(tiles)).float()
        if fg:
            out["foreground_prob"] = torch.tensor(fg, dtype=torch.float32)
        return out
