"""Data made for development without MIDOG images: drawn cells (:mod:`.synthetic`), images
built from real tissue and real figures (:mod:`.realistic`), real-figure crops converted to
MIDOG form (:mod:`.real_figures`), training canvases and placed-crop evaluation sets
(:mod:`.canvas`, :mod:`.placed_crops`, :mod:`.real_figure_eval`) and the demo
(:mod:`.demo`). Shared pieces: the domains, drawing and renderer of generated images
(:mod:`.synthetic_domains`, :mod:`.synthetic_draw`, :mod:`.synthetic_render`), windows cut
from crops and the one composition loop (:mod:`.compose`), context tiles and crop reading
(:mod:`.context`), nucleus finders (:mod:`.nuclei`) and where a crop's figure is
(:mod:`.crop_position`).

Nothing else in ``midog_d2`` imports this package (``tests/test_layering.py`` checks it):
what users run on MIDOG never depends on it. Its config keys are added by
:func:`add_datagen_config`.
"""

from .config import add_datagen_config, setup_datagen_cfg

__all__ = ["add_datagen_config", "setup_datagen_cfg"]
