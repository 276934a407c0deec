"""Inference: tile grids, seam merging, and the one image -> batch -> model -> shift -> merge
path (:class:`TiledPredictor`, :func:`predict_images`)."""

from .grid import scaled_tile_grid, tile_grid
from .merge import suppress_close_points
from .predictor import TiledPredictor, model_inputs, predict_images
