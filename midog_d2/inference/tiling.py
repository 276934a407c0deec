"""Whole-image inference in overlapping tiles, merged across tile seams."""
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.structures import Boxes, Instances

__all__ = ["TiledPredictor", "tile_grid", "suppress_close_points"]

Region = Tuple[int, int, int, int]


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


def _default_reader(path: str, x: int, y: int, w: int, h: int) -> np.ndarray:
    from ..data import slide

    return slide.read_region(path, x, y, w, h)


class TiledPredictor(nn.Module):
    """
    Runs a detector over whole MIDOG images in tiles, so that
    ``inference_on_dataset(TiledPredictor(model, cfg), loader, evaluator)`` works
    unchanged.

    Each input dict needs ``file_name`` and ``height``/``width`` (the image's level-0
    size), and may hold ``region`` (x0, y0, x1, y1: infer there only) and ``mpp``.
    Tiles are read one batch at a time (``midog_d2.data.read_region``, RGB; the next
    batch in a background thread while the model runs), converted to ``INPUT.FORMAT``
    and given to the model as ``{"image", "height", "width"}``.
    Detections are moved to image coordinates and merged across seams: a detection
    closer than ``TEST.TILE.MERGE_RADIUS_UM`` to a higher-scoring one of the same class
    is dropped (the reference approach's slide-level suppression; it also acts within
    a tile, after the model's own per-tile NMS).

    Output per image: ``instances`` (image_size = (height, width); ``pred_boxes``,
    ``scores``, ``pred_classes``, by decreasing score), ``tiles`` (T, 4) tile boxes and,
    when the model gives them, ``tumor_probs`` (mean over tiles) and
    ``foreground_prob`` (T,), one per tile.
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
        reader: Optional[Callable[[str, int, int, int, int], np.ndarray]] = None,
    ):
        """
        Args:
            model: a detector taking Detectron2 inputs, in eval mode.
            cfg: supplies TEST.TILE.*, INPUT.FORMAT and DATASETS.MIDOG.FALLBACK_MPP;
                the keyword arguments override it.
            default_mpp: µm/px of inputs without ``mpp`` (converts the merge radius).
            reader: ``(path, x, y, w, h) -> (h, w, 3) uint8 RGB``; default
                ``midog_d2.data.read_region``.
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
        self.reader = reader or _default_reader
        if self.batch_size < 1:
            raise ValueError(f"TEST.TILE.BATCH_SIZE must be >= 1, got {self.batch_size}")
        tile_grid((0, 0, 1, 1), self.tile_size, self.overlap)  # validates size/overlap

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        if self.model.training:
            raise RuntimeError("TiledPredictor runs inference only: call .eval() first")
        with torch.no_grad():
            return [self.predict_image(x) for x in batched_inputs]

    def _tile_input(self, path: str, tile: Region) -> Dict[str, Any]:
        x0, y0, x1, y1 = tile
        rgb = self.reader(path, x0, y0, x1 - x0, y1 - y0)
        if rgb.shape != (y1 - y0, x1 - x0, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"{path}: reading tile {tile} gave an array of shape {rgb.shape} and dtype {rgb.dtype}, "
                f"expected ({y1 - y0}, {x1 - x0}, 3) uint8 RGB"
            )
        image = convert_PIL_to_numpy(Image.fromarray(rgb), self.input_format)
        chw = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": chw, "height": y1 - y0, "width": x1 - x0}

    def _batches(self, path: str, tiles: List[Region]) -> Iterator[Tuple[List[Region], List[Dict]]]:
        """Batches of tile inputs; the next batch is read in a background thread while
        the model runs on the current one (at most two batches in memory)."""
        chunks = [tiles[i : i + self.batch_size] for i in range(0, len(tiles), self.batch_size)]

        def read(chunk):
            return [self._tile_input(path, t) for t in chunk]

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
        region = (0, 0, width, height) if region is None else tuple(int(round(float(v))) for v in region)
        tiles = tile_grid(region, self.tile_size, self.overlap)

        boxes, scores, classes = [], [], []
        tumor_sum, fg = None, []
        for chunk, tile_inputs in self._batches(path, tiles):
            outputs = self.model(tile_inputs)
            for (tx, ty, _, _), out in zip(chunk, outputs):
                inst = out["instances"].to("cpu")
                shift = torch.tensor([tx, ty, tx, ty], dtype=inst.pred_boxes.tensor.dtype)
                boxes.append(inst.pred_boxes.tensor + shift)
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
        mpp = float(inp.get("mpp") or self.default_mpp)
        centres = ((boxes_t[:, :2] + boxes_t[:, 2:]) / 2).double().numpy()
        keep = suppress_close_points(centres, scores_t.double().numpy(), classes_t.numpy(), self.merge_radius_um / mpp)
        keep_t = torch.as_tensor(keep, dtype=torch.int64)

        result = Instances((height, width))
        result.pred_boxes = Boxes(boxes_t[keep_t])
        result.scores = scores_t[keep_t]
        result.pred_classes = classes_t[keep_t]
        out: Dict[str, Any] = {"instances": result, "tiles": torch.tensor(tiles, dtype=torch.float32)}
        if tumor_sum is not None:
            out["tumor_probs"] = (tumor_sum / len(tiles)).float()
        if fg:
            out["foreground_prob"] = torch.tensor(fg, dtype=torch.float32)
        return out
