"""Running a detector: images -> batches -> model, and whole images in tiles.

One path serves every caller. :func:`predict_images` turns RGB arrays into the model's
inputs (``INPUT.FORMAT``, CHW) and runs them in batches at a chosen precision;
:func:`stream_tile_detections` reads a list of tiles through :mod:`midog_d2.fileio` ahead of
the model (worker threads; at most ``prefetch`` batches in memory), runs them through
:func:`predict_images`, shifts the detections to level-0 pixels and merges them across
seams as they arrive (:class:`~.merge.StreamingMerger`). :class:`TiledPredictor`
(evaluation) and :class:`~.slide_predictor.SlidePredictor` (whole slides, tissue only) lay their
grids (:mod:`.grid`) and call it.
"""

import contextlib
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.structures import Boxes, Instances

from ..constants import DEFAULT_MPP
from ..fileio.images import rgb_to_format, to_chw_tensor
from ..fileio.slide import fallback_mpp, first_mpp, read_region_scaled, resample_scale
from ..modeling.outputs import check_declared, combine_tiles, declared_outputs
from .grid import ScaledTile, scaled_tile_grid, tile_grid
from .merge import StreamingMerger
from .tta import check_flips, flip_image, fuse_flipped, unflip_instances

__all__ = [
    "PRECISIONS",
    "native_bf16_cpu",
    "TileStream",
    "autocast",
    "model_inputs",
    "predict_images",
    "resolve_precision",
    "scale_detection_caps",
    "stream_tile_detections",
    "TiledPredictor",
]

Reader = Callable[[str, int, int, int, int, float], np.ndarray]

# "auto": the fastest precision measured to agree with fp32 on the device (docs/benchmarks.md).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def native_bf16_cpu() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 or AMX, through
    oneDNN); elsewhere PyTorch emulates them, slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    """The precision (fp32, bf16 or fp16) that ``precision`` means on ``device``.

    "auto" is the fastest precision measured to agree with fp32 on that kind of device
    (docs/benchmarks.md, "Whole-slide inference"): bf16 on a CPU with native bf16 (1.9x
    faster than fp32 there, reproducing the fp32 detections), fp32 on other CPUs and, until
    measured, on CUDA. fp16 on the CPU is refused: PyTorch's CPU kernels run it slower than
    fp32. Evaluation resolves "auto" to fp32 (:meth:`TiledPredictor.from_config`), so that
    reported metrics are those of the reference arithmetic."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cuda = str(device).startswith("cuda")
    if precision == "auto":
        return "bf16" if not cuda and native_bf16_cpu() else "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("fp16 inference needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def autocast(precision: str, device: str):
    """The autocast context of a resolved ``precision`` on ``device`` (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype)


def scale_detection_caps(model: nn.Module, caps_per_512: Tuple[int, int], size: int) -> None:
    """Set a RetinaNet's candidates per level and detections (``caps_per_512``: per 512 x 512
    px) for inputs of ``size`` x ``size`` px; other models are left as they are. Detectron2
    caps both per input: at 2048 px the default 100 detections would be a sixteenth of
    512-px tiles' per mm², and figures drop out (issue 27)."""
    if not hasattr(model, "max_detections_per_image"):
        return
    area = max(1.0, (size / 512.0) ** 2)
    model.test_topk_candidates = int(round(caps_per_512[0] * area))
    model.max_detections_per_image = int(round(caps_per_512[1] * area))


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


def _device_of(model: nn.Module) -> str:
    p = next(iter(model.parameters()), None)
    return str(p.device) if p is not None else "cpu"


def predict_images(
    model: nn.Module,
    images: Sequence[np.ndarray],
    input_format: str,
    batch_size: int = 8,
    precision: str = "fp32",
    flips: Sequence[str] = (),
    fuse_radius_px: float = 0.0,
) -> List[Dict[str, Any]]:
    """The model's outputs (one dict per image, as the model returns them) on RGB uint8
    ``images``, ``batch_size`` at a time, without gradients, at ``precision``
    (:data:`PRECISIONS`; scores and boxes come back as float32). The model must be in
    eval mode.

    ``flips`` (:data:`~.tta.FLIPS`) also reads each image flipped; its ``instances`` are then
    the readings fused within ``fuse_radius_px`` (:func:`~.tta.fuse_flipped`: a cell scores
    its mean over the readings), its other outputs those of the unflipped reading."""
    if model.training:
        raise RuntimeError("predict_images runs inference only: call model.eval() first")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    flips = check_flips(flips)
    if flips and not fuse_radius_px > 0:
        raise ValueError(f"flip TTA needs a fusion radius > 0 px, got {fuse_radius_px}")
    device = _device_of(model)
    precision = resolve_precision(precision, device)
    outputs: List[Dict[str, Any]] = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            readings = []
            for flip in [""] + flips:
                pixels = [flip_image(x, flip) for x in chunk] if flip else chunk
                with autocast(precision, device):
                    batch = model(model_inputs(pixels, input_format))
                if precision != "fp32":
                    batch = [_to_float32(o) for o in batch]
                readings.append(batch)
            if flips:
                for k, out in enumerate(readings[0]):
                    insts = [out["instances"]] + [
                        unflip_instances(r[k]["instances"], f) for f, r in zip(flips, readings[1:])
                    ]
                    out["instances"] = fuse_flipped(insts, fuse_radius_px)
            outputs.extend(readings[0])
    return outputs


def _to_float32(out: Dict[str, Any]) -> Dict[str, Any]:
    """Floating tensors of one output (its Instances' fields too) as float32."""

    def f32(t):
        return t.float() if torch.is_tensor(t) and t.is_floating_point() else t

    res = {}
    for k, v in out.items():
        if isinstance(v, Instances):
            inst = Instances(v.image_size)
            for name, val in v.get_fields().items():
                inst.set(name, Boxes(f32(val.tensor)) if isinstance(val, Boxes) else f32(val))
            v = inst
        res[k] = f32(v)
    return res


@dataclass
class TileStream:
    """What :func:`stream_tile_detections` yields once per batch: the detections final so
    far (level-0 ``boxes`` (N, 4), ``scores``, ``classes``), the batch's tiles and the
    model's per-tile outputs other than ``instances`` (e.g. ``domain_probs``)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    tiles: List[ScaledTile]
    extras: List[Dict[str, Any]] = field(default_factory=list)


def _read_tile(reader: Reader, path: str, tile: ScaledTile, scale: float) -> np.ndarray:
    x, y, w, h = tile
    rgb = reader(path, x, y, w, h, scale)
    if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
        raise ValueError(
            f"{path}: reading tile {tile} gave an array of shape {rgb.shape} and dtype "
            f"{rgb.dtype}, expected ({h}, {w}, 3) uint8 RGB"
        )
    return rgb


def _tile_batches(
    reader: Reader,
    path: str,
    tiles: Sequence[ScaledTile],
    scale: float,
    batch_size: int,
    workers: int,
    prefetch: int,
) -> Iterator[Tuple[List[ScaledTile], List[np.ndarray]]]:
    """Batches of tile pixels, in order. ``workers`` threads read tiles ahead of the model
    (OpenSlide, tifffile and OpenCV release the GIL while they decode), at most
    ``prefetch`` batches beyond the one the model is on."""
    chunks = [list(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        submitted = 0

        def submit_up_to(n):
            nonlocal submitted
            while submitted < min(n, len(chunks)):
                pending.append(
                    [pool.submit(_read_tile, reader, path, t, scale) for t in chunks[submitted]]
                )
                submitted += 1

        submit_up_to(1 + max(1, prefetch))
        for k, chunk in enumerate(chunks):
            futures = pending.popleft()
            try:
                pixels = [f.result() for f in futures]
            except BaseException:
                for batch in pending:
                    for f in batch:
                        f.cancel()
                raise
            submit_up_to(k + 2 + max(1, prefetch))
            yield chunk, pixels


def stream_tile_detections(
    model: nn.Module,
    path: str,
    tiles: Sequence[ScaledTile],
    scale: float,
    *,
    merge_radius_px: float,
    input_format: str = "BGR",
    batch_size: int = 8,
    precision: str = "fp32",
    reader: Optional[Reader] = None,
    read_workers: int = 1,
    prefetch: int = 1,
    flips: Sequence[str] = (),
) -> Iterator[TileStream]:
    """
    The one tile -> batch -> model -> shift -> merge path.

    Reads ``tiles`` ((x, y, w, h): level-0 origin, size in model pixels at ``scale`` model
    pixels per level-0 pixel; in :func:`~.grid.scaled_tile_grid`'s row order, y never
    decreasing) of ``path`` with ``reader`` ahead of the model, runs them ``batch_size`` at
    a time at ``precision``, moves each detection to level-0 pixels and merges them
    across seams within ``merge_radius_px`` level-0 pixels as they arrive
    (:class:`~.merge.StreamingMerger`: the result is exactly the suppression over all
    detections at once, held back only near the rows still to come). Yields one
    :class:`TileStream` a batch, the last one with everything still held back. ``flips``
    reads each tile flipped too (:func:`predict_images`; fused within the merge radius).
    """
    reader = reader or read_region_scaled
    tiles = list(tiles)
    if any(b[1] < a[1] for a, b in zip(tiles, tiles[1:])):
        raise ValueError("tiles must come in row order (y never decreasing)")
    merger = StreamingMerger(merge_radius_px)
    declared = declared_outputs(model)
    done = 0
    for chunk, pixels in _tile_batches(
        reader, path, tiles, scale, batch_size, read_workers, prefetch
    ):
        outputs = predict_images(
            model, pixels, input_format, len(pixels), precision, flips, merge_radius_px * scale
        )
        boxes, centres, scores, classes, extras = [], [], [], [], []
        for (tx, ty, tw, th), out in zip(chunk, outputs):
            inst = out["instances"].to("cpu")
            b = inst.pred_boxes.tensor.detach().double().numpy().reshape(-1, 4)
            # model pixels of the tile -> level-0 pixels of the image
            b = (b if scale == 1.0 else b / scale) + np.array([tx, ty, tx, ty], np.float64)
            boxes.append(b)
            # The merger's frontier needs every centre inside its tile; Detectron2's
            # detectors clip boxes to the tile, so this only holds other models to it.
            c = (b[:, :2] + b[:, 2:]) / 2.0
            c[:, 0] = c[:, 0].clip(tx, tx + tw / scale)
            c[:, 1] = c[:, 1].clip(ty, ty + th / scale)
            centres.append(c)
            scores.append(inst.scores.detach().double().numpy().reshape(-1))
            classes.append(inst.pred_classes.detach().numpy().astype(np.int64).reshape(-1))
            check_declared(out, declared, path)
            extras.append({k: v for k, v in out.items() if k != "instances"})
        done += len(chunk)
        b = np.concatenate(boxes)
        frontier = tiles[done][1] if done < len(tiles) else math.inf
        # the last batch's frontier is infinite: everything still held back comes out
        _, s, c, bx = merger.add(
            np.concatenate(centres), np.concatenate(scores), np.concatenate(classes), frontier, b
        )
        yield TileStream(bx.reshape(-1, 4), s, c, chunk, extras)


class TiledPredictor(nn.Module):
    """
    Runs a detector over whole MIDOG images in tiles, so that
    ``inference_on_dataset(TiledPredictor(cfg, model, evaluation=True), loader, evaluator)`` works unchanged.

    Each input dict needs ``file_name`` and ``height``/``width`` (the image's level-0
    size), and may hold ``region`` (x0, y0, x1, y1: infer there only) and ``mpp``.
    An image whose µm/px differs from ``model_mpp`` by more than ``mpp_tolerance`` is read
    resampled to it (scale = mpp / model_mpp model pixels per level-0 pixel,
    :func:`midog_d2.fileio.read_region_scaled`): tiles are ``tile_size`` model pixels
    (:func:`~midog_d2.inference.grid.scaled_tile_grid`), and detections are scaled back, so
    every output is in level-0 pixels. Tiles go through :func:`stream_tile_detections`
    (read ahead of the model, batched, at ``precision``), which moves detections to image
    coordinates and merges them across seams: a detection closer than
    ``merge_radius_um`` to a higher-scoring one of the same class is dropped (the
    reference approach's slide-level suppression; it also acts within a tile, after the
    model's own per-tile NMS).

    Output per image: ``instances`` (image_size = (height, width); ``pred_boxes``,
    ``scores``, ``pred_classes``, by decreasing score, level-0 pixels), ``tiles`` (T, 4)
    level-0 tile boxes, ``scale`` (model pixels per level-0 pixel) and each output the model
    declares (``model.extra_outputs``, :mod:`midog_d2.modeling.outputs`), its tiles combined
    as declared: ``domain_probs`` the mean over tiles, ``foreground_prob`` (T,) one per tile.
    An output the model does not declare is an error.
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
        fallback_mpp: Optional[float] = DEFAULT_MPP,
        model_mpp: Optional[float] = None,
        mpp_tolerance: float = 0.0,
        precision: str = "fp32",
        read_workers: int = 1,
        prefetch: int = 1,
        reader: Optional[Reader] = None,
        caps_per_512: Optional[Tuple[int, int]] = None,
        flips: Sequence[str] = (),
    ):
        """
        Args:
            model: a detector taking Detectron2 inputs, in eval mode.
            tile_size, overlap, batch_size, merge_radius_um: ``TEST.TILE.*``.
            input_format: the model's channel order (``INPUT.FORMAT``).
            fallback_mpp: µm/px of inputs without ``mpp`` (converts the merge radius,
                sets the scale; ``DATASETS.MIDOG.FALLBACK_MPP``); None makes such an input
                an error.
            model_mpp: µm/px the model works at (``INPUT.MODEL_MPP``); None/0 reads every
                image at its own resolution.
            mpp_tolerance: relative µm/px difference read without resampling
                (``INPUT.MPP_TOLERANCE``).
            precision, read_workers, prefetch: ``TEST.TILE.PRECISION`` (:data:`PRECISIONS`),
                ``TEST.TILE.READ_WORKERS``, ``TEST.TILE.PREFETCH_BATCHES``.
            reader: ``(path, x, y, w, h, scale) -> (h, w, 3) uint8 RGB``, the window of
                ``w`` x ``h`` model pixels from level-0 (x, y) at ``scale``; default
                :func:`midog_d2.fileio.read_region_scaled`.
            caps_per_512: (candidates per level, detections) a RetinaNet keeps per 512 x 512
                px of input (``MODEL.RETINANET.TOPK_CANDIDATES_TEST``,
                ``TEST.DETECTIONS_PER_IMAGE``): set on ``model`` scaled to the tile's area,
                so that a larger tile keeps as many detections per mm² and a cell's score
                does not depend on the tile size; None leaves the model's as they are.
            flips: flip test-time augmentation (``TEST.TILE.TTA_FLIPS``, :mod:`.tta`).
        """
        super().__init__()
        self.model = model
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.batch_size = int(batch_size)
        self.merge_radius_um = float(merge_radius_um)
        self.input_format = input_format
        self.fallback_mpp = fallback_mpp
        self.model_mpp = model_mpp
        self.mpp_tolerance = float(mpp_tolerance)
        self.reader = reader or read_region_scaled
        self.precision = precision
        self.read_workers = int(read_workers)
        self.prefetch = int(prefetch)
        self.flips = check_flips(flips)
        if self.flips and not self.merge_radius_um > 0:
            raise ValueError(
                "TEST.TILE.TTA_FLIPS fuses within TEST.TILE.MERGE_RADIUS_UM: set it > 0"
            )
        if precision not in PRECISIONS:
            raise ValueError(f"TEST.TILE.PRECISION must be one of {PRECISIONS}, got {precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"TEST.TILE.BATCH_SIZE must be >= 1, got {self.batch_size}")
        tile_grid((0, 0, 1, 1), self.tile_size, self.overlap)  # validates size/overlap
        if caps_per_512 is not None:
            scale_detection_caps(model, caps_per_512, self.tile_size)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, evaluation: bool = False):
        """``evaluation=True`` (the evaluators' predictor) resolves precision "auto" to
        fp32: metrics are reported in the reference arithmetic."""
        precision = cfg.TEST.TILE.PRECISION
        if evaluation and precision == "auto":
            precision = "fp32"
        return {
            "model": model,
            "tile_size": cfg.TEST.TILE.SIZE,
            "overlap": cfg.TEST.TILE.OVERLAP,
            "batch_size": cfg.TEST.TILE.BATCH_SIZE,
            "merge_radius_um": cfg.TEST.TILE.MERGE_RADIUS_UM,
            "input_format": cfg.INPUT.FORMAT,
            "fallback_mpp": fallback_mpp(cfg.DATASETS.MIDOG.FALLBACK_MPP),
            "model_mpp": cfg.INPUT.MODEL_MPP,
            "mpp_tolerance": cfg.INPUT.MPP_TOLERANCE,
            "precision": precision,
            "read_workers": cfg.TEST.TILE.READ_WORKERS,
            "prefetch": cfg.TEST.TILE.PREFETCH_BATCHES,
            "flips": cfg.TEST.TILE.TTA_FLIPS,
            "caps_per_512": (
                cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
                cfg.TEST.DETECTIONS_PER_IMAGE,
            ),
        }

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        if self.model.training:
            raise RuntimeError("TiledPredictor runs inference only: call .eval() first")
        return [self.predict_image(x) for x in batched_inputs]

    def stream(
        self, path: str, tiles: Sequence[ScaledTile], scale: float, mpp: float
    ) -> Iterator[TileStream]:
        """:func:`stream_tile_detections` of ``tiles`` with this predictor's settings
        (merge radius converted with ``mpp``)."""
        return stream_tile_detections(
            self.model,
            path,
            tiles,
            scale,
            merge_radius_px=self.merge_radius_um / mpp,
            input_format=self.input_format,
            batch_size=self.batch_size,
            precision=self.precision,
            reader=self.reader,
            read_workers=self.read_workers,
            prefetch=self.prefetch,
            flips=self.flips,
        )

    def predict_image(self, inp: Dict[str, Any]) -> Dict[str, Any]:
        """Tiled inference on one input dict (see the class docstring)."""
        path = inp["file_name"]
        height, width = int(inp["height"]), int(inp["width"])
        region = inp.get("region")
        region = (
            (0, 0, width, height) if region is None else tuple(int(round(float(v))) for v in region)
        )
        mpp = first_mpp(inp.get("file_name", "an input"), inp.get("mpp"), self.fallback_mpp)
        scale = resample_scale(mpp, self.model_mpp, self.mpp_tolerance)
        tiles = scaled_tile_grid(region, self.tile_size, self.overlap, scale)

        boxes, scores, classes = [], [], []
        declared = declared_outputs(self.model)
        per_tile: Dict[str, list] = {name: [] for name in declared}
        for part in self.stream(path, tiles, scale, mpp):
            boxes.append(part.boxes)
            scores.append(part.scores)
            classes.append(part.classes)
            for extra in part.extras:
                for name, value in extra.items():
                    per_tile[name].append(value)
        b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        s = np.concatenate(scores) if scores else np.zeros(0)
        c = np.concatenate(classes) if classes else np.zeros(0, np.int64)
        order = np.argsort(-s, kind="stable")

        result = Instances((height, width))
        result.pred_boxes = Boxes(torch.as_tensor(b[order], dtype=torch.float32))
        result.scores = torch.as_tensor(s[order], dtype=torch.float32)
        result.pred_classes = torch.as_tensor(c[order], dtype=torch.int64)
        tile_boxes = [(x, y, x + w / scale, y + h / scale) for x, y, w, h in tiles]
        out: Dict[str, Any] = {
            "instances": result,
            "tiles": torch.tensor(tile_boxes, dtype=torch.float32),
            "scale": scale,
        }
        for name, values in per_tile.items():
            value = combine_tiles(declared[name], values)
            if value is not None:
                out[name] = value
        return out
