"""DATASETS.MIDOG.FALLBACK_MPP has one reading (midog_d2.fileio.fallback_mpp), whichever part
reads it: a value is the µm/px assumed for an image that carries none, 0 means no fallback,
and an image without µm/px is then an error naming it, never read at a made-up scale."""

import numpy as np
import pytest
from conftest import CONFIGS, make_cfg
from PIL import Image

from detectron2.modeling import build_model

from midog_d2.data.mapper import MidogTestMapper
from midog_d2.fileio import fallback_mpp, first_mpp
from midog_d2.inference.predictor import TiledPredictor
from midog_d2.inference.slide_predictor import SlidePredictor

CONFIG = CONFIGS / "dev" / "Demo-CPU-R18.yaml"


def test_the_key_reads_one_way():
    assert fallback_mpp(0) is None and fallback_mpp(0.0) is None
    assert fallback_mpp(0.5) == 0.5
    for bad in (-0.25, 100.0):
        with pytest.raises(ValueError, match="FALLBACK_MPP"):
            fallback_mpp(bad)
    # an image's µm/px: its own first, then its record's, then the fallback; none is an error
    assert first_mpp("a.tif", None, 0.242, 0.25) == 0.242
    with pytest.raises(ValueError, match=r"a\.tif: no µm/px and no fallback"):
        first_mpp("a.tif", None, None, fallback_mpp(0.0))


@pytest.mark.parametrize("value, expected", [("0.0", None), ("0.5", 0.5)])
def test_every_reader_of_the_key_gets_the_same_value(value, expected):
    cfg = make_cfg(CONFIG, "DATASETS.MIDOG.FALLBACK_MPP", value)
    model = build_model(cfg).eval()
    tiled = TiledPredictor(cfg, model)
    assert tiled.fallback_mpp == expected
    assert SlidePredictor(cfg, model, tiled=tiled).fallback_mpp == expected
    assert MidogTestMapper(cfg).fallback_mpp == expected


def test_zero_makes_an_image_without_mpp_an_error_that_names_it(tmp_path):
    png = tmp_path / "no_mpp.png"
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(png)
    record = {"file_name": str(png), "image_id": 1, "width": 96, "height": 64, "annotations": []}
    cfg = make_cfg(CONFIG, "DATASETS.MIDOG.FALLBACK_MPP", "0.0")
    with pytest.raises(ValueError, match=r"no_mpp\.png.*FALLBACK_MPP"):
        MidogTestMapper(cfg)(dict(record))
    tiled = TiledPredictor(cfg, build_model(cfg).eval())
    with pytest.raises(ValueError, match=r"no_mpp\.png.*FALLBACK_MPP 0"):
        tiled.predict_image({"file_name": str(png), "height": 64, "width": 96})
    # With a fallback, the same file is read at it.
    cfg = make_cfg(CONFIG, "DATASETS.MIDOG.FALLBACK_MPP", "0.5")
    assert MidogTestMapper(cfg)(dict(record))["mpp"] == 0.5
