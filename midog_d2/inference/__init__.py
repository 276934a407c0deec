"""Whole-image inference: tiles in, merged detections out."""
from .tiling import TiledPredictor, suppress_close_points, tile_grid

__all__ = ["TiledPredictor", "suppress_close_points", "tile_grid"]
