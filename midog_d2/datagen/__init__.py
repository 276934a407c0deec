"""Data made for development without MIDOG images: drawn cells (:mod:`.synthetic`), images
built from real tissue and real figures (:mod:`.realistic`), real-figure crops converted to
MIDOG form (:mod:`.real_figures`), training canvases and placed-crop evaluation sets
(:mod:`.canvas`, :mod:`.placed_crops`) and the demo (:mod:`.demo`).

Nothing else in ``midog_d2`` imports this package (``tests/test_layering.py`` checks it):
what users run on MIDOG never depends on it. Its config keys are added by
:func:`add_datagen_config`.
"""
