"""Running a detector: images -> batches -> model, and whole images in tiles.

One path serves every caller. :func:`predict_images` turns RGB arrays into the model's
inputs (``INPUT.FORMAT``, CHW) and runs them in batches; :class:`TiledPredictor` lays a grid
over an image (:mod:`.grid`), reads the tiles through :mod:`midog_d2.io` (the next batch
while the model runs), runs them through :func:`predict_images`, shifts the detections to
level-0 pixels and merges them across seams (:mod:`.merge`).
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.structures import Boxes, Instances

from ..constants import DEFAULT_MPP
from ..data.transforms import rgb_to_format, to_chw_tensor
from ..io.slide import read_region_scaled, resample_scale
from .grid import ScaledTile, scaled_tile_grid, tile_grid
from .merge import suppress_close_points

__all__ = ["model_inputs", "predict_images", "TiledPredictor"]

Reader = Callable[[str, int, int, int, int, float], np.ndarray]


def model_inputs(images: Sequence[np.ndarray], input_format: str) -> List[Dict[str, Any]]:
    """Detectron2 inputs ``{"image", "height", "width"}`` of (H, W, 3) uint8 RGB arrays, the
    image in ``input_format`` channel order as a CHW tensor; outputs come in the same pixels."""
    return [
        {
            "image": to_chw_tensor(rgb_to_format(rgb, input_format)),
            "height": rgb.shape[0],
            "width": rgb.shape[1],
        }
        for rgb in images
    ]


def predict_images(
    model: nn.Module, images: Sequence[np.ndarray], input_format: str, batch_size: int = 8
) -> List[Dict[str, Any]]:
    """The model's outputs (one dict per image, as the model returns them) on RGB uint8
    ``images``, ``batch_size`` at a time, without gradients. The model must be in eval mode."""
    if model.training:
        raise RuntimeError("predict_images runs inference only: call model.eval() first")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    outputs: List[Dict[str, Any]] = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            outputs.extend(model(model_inputs(images[i : i + batch_size], input_format)))
    return outputs


class TiledPredictor(nn.Module):
    """
    Runs a detector over whole MIDOG images in tiles, so that
    ``inference_on_dataset(TiledPredictor(cfg, model), loader, evaluator)`` works unchanged.

    Each input dict needs ``file_name`` and ``height``/``width`` (the image's level-0
    size), and may hold ``region`` (x0, y0, x1, y1: infer there only) and ``mpp``.
    An image whose µm/px differs from ``model_mpp`` by more than ``mpp_tolerance`` is read
    resampled to it (scale = mpp / model_mpp model pixels per level-0 pixel,
    :func:`midog_d2.io.read_region_scaled`): tiles are ``tile_size`` model pixels
    (:func:`~midog_d2.inference.grid.scaled_tile_grid`), and detections are scaled back, so
    every output is in level-0 pixels. Tiles are read one batch at a time (RGB; the next
    batch in a background thread while the model runs) and run by :func:`predict_images`.
    Detections are moved to image coordinates and merged across seams: a detection
    closer than ``merge_radius_um`` to a higher-scoring one of the same class is dropped
    (the reference approach's slide-level suppression; it also acts within a tile, after
    the model's own per-tile NMS).

    Output per image: ``instances`` (image_size = (height, width); ``pred_boxes``,
    ``scores``, ``pred_classes``, by decreasing score, level-0 pixels), ``tiles`` (T, 4)
    level-0 tile boxes, ``scale`` (model pixels per level-0 pixel) and, when the model
    gives them, ``tumor_probs`` (mean over tiles) and ``foreground_prob`` (T,), one per
    tile.
    """

    @configurable
    def __init__(
        self,
        model: nn.Module,
        *,
        tile_size: int = 512,
        overlap: int = 52,
        batch_size: int = 8,
        merge_radius_um: float = 6.25,
        input_format: str = "BGR",
        default_mpp: float = DEFAULT_MPP,
        model_mpp: Optional[float] = None,
        mpp_tolerance: float = 0.0,
        reader: Optional[Reader] = None,
    ):
        """
        Args:
            model: a detector taking Detectron2 inputs, in eval mode.
            tile_size, overlap, batch_size, merge_radius_um: ``TEST.TILE.*``.
            input_format: the model's channel order (``INPUT.FORMAT``).
            default_mpp: µm/px of inputs without ``mpp`` (converts the merge radius,
                sets the scale; ``DATASETS.MIDOG.FALLBACK_MPP``).
            model_mpp: µm/px the model works at (``INPUT.MODEL_MPP``); None/0 reads every
                image at its own resolution.
            mpp_tolerance: relative µm/px difference read without resampling
                (``INPUT.MPP_TOLERANCE``).
            reader: ``(path, x, y, w, h, scale) -> (h, w, 3) uint8 RGB``, the window of
                ``w`` x ``h`` model pixels from level-0 (x, y) at ``scale``; default
                :func:`midog_d2.io.read_region_scaled`.
        """
        super().__init__()
        self.model = model
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.batch_size = int(batch_size)
        self.merge_radius_um = float(merge_radius_um)
        self.input_format = input_format
        self.default_mpp = float(default_mpp)
        self.model_mpp = model_mpp
        self.mpp_tolerance = float(mpp_tolerance)
        self.reader = reader or read_region_scaled
        if self.batch_size < 1:
            raise ValueError(f"TEST.TILE.BATCH_SIZE must be >= 1, got {self.batch_size}")
        tile_grid((0, 0, 1, 1), self.tile_size, self.overlap)  # validates size/overlap

    @classmethod
    def from_config(cls, cfg, model: nn.Module):
        return {
            "model": model,
            "tile_size": cfg.TEST.TILE.SIZE,
            "overlap": cfg.TEST.TILE.OVERLAP,
            "batch_size": cfg.TEST.TILE.BATCH_SIZE,
            "merge_radius_um": cfg.TEST.TILE.MERGE_RADIUS_UM,
            "input_format": cfg.INPUT.FORMAT,
            "default_mpp": cfg.DATASETS.MIDOG.FALLBACK_MPP,
            "model_mpp": cfg.INPUT.MODEL_MPP,
            "mpp_tolerance": cfg.INPUT.MPP_TOLERANCE,
        }

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        if self.model.training:
            raise RuntimeError("TiledPredictor runs inference only: call .eval() first")
        return [self.predict_image(x) for x in batched_inputs]

    def _read_tile(self, path: str, tile: ScaledTile, scale: float) -> np.ndarray:
        x, y, w, h = tile
        rgb = self.reader(path, x, y, w, h, scale)
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"{path}: reading tile {tile} gave an array of shape {rgb.shape} and dtype "
                f"{rgb.dtype}, expected ({h}, {w}, 3) uint8 RGB"
            )
        return rgb

    def _tile_batches(
        self, path: str, tiles: List[ScaledTile], scale: float
    ) -> Iterator[Tuple[List[ScaledTile], List[np.ndarray]]]:
        """Batches of tile pixels; the next batch is read in a background thread while
        the model runs on the current one (at most two batches in memory)."""
        chunks = [tiles[i : i + self.batch_size] for i in range(0, len(tiles), self.batch_size)]

        def read(chunk):
            return [self._read_tile(path, t, scale) for t in chunk]

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(read, chunks[0])
            for k, chunk in enumerate(chunks):
                pixels = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(read, chunks[k + 1])
                yield chunk, pixels

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
        for chunk, pixels in self._tile_batches(path, tiles, scale):
            outputs = predict_images(self.model, pixels, self.input_format, len(pixels))
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
