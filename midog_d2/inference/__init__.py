"""Inference: tile grids, seam merging (all at once, or streaming), the one image -> batch ->
model -> shift -> merge path (:class:`TiledPredictor`, :func:`predict_images`), the tissue
mask, the clinical read-outs (density, hotspot) and the check that a cell's score does not
depend on the input it is read in (:mod:`.parity`)."""

from .grid import scaled_tile_grid, tile_grid
from .clinical import HPF10_MM2, Hotspot, find_hotspot, hotspot_window_px, mitotic_density
from .fold import fold_batchnorm, prepare_for_inference
from .merge import StreamingMerger, suppress_close_points
from .parity import parity_summary, scores_across_sizes, window_around
from .predictor import (
    PRECISIONS,
    TiledPredictor,
    TileStream,
    model_inputs,
    native_bf16_cpu,
    predict_images,
    resolve_precision,
    stream_tile_detections,
)
from .slide_predictor import SlidePredictor, SlideReadout, SlideResult, slide_readout
from .tissue import mask_area_mm2, tile_tissue_fraction, tissue_mask
