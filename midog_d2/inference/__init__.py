"""Whole-image inference: tiles in, merged detections out."""

from .tiling import TiledPredictor, scaled_tile_grid, suppress_close_points, tile_grid

__all__ = ["TiledPredictor", "scaled_tile_grid", "suppress_close_points", "tile_grid"]
