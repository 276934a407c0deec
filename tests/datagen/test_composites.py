"""Composite ROIs (midog_dev.composites): placed crops scattered among tissue blocks
at a stated density, their figures where the blocks put them."""

import numpy as np
import pytest

from midog_dev.canvas import PlacedCrop
from midog_dev.composites import blocks_for_density, build_composites
from midog_dev.context import ContextTile


def test_placed_crops_land_at_the_density_with_their_figures():
    samples = []
    for i in range(6):
        img = np.full((256, 256, 3), 10 + i, np.uint8)  # each crop's block is recognisable
        s = PlacedCrop(img, (100.0 + i, 50.0), (60, 20, 160, 120), False, f"c{i}.png", "t")
        s.extra["other_cells"] = [(120.0, 60.0, 0), (70.0, 90.0, 1)]  # one more figure
        samples.append(s)
    tiles = [ContextTile("tissue.png", np.full((600, 600, 3), 200, np.uint8), 1.0)]
    # 6 figures at 32.5 per mm² of 256-px blocks at 0.25 µm/px: 45 blocks -> 3 composites of 16.
    assert blocks_for_density(6, 32.5, 256) == 45
    comps = build_composites(samples, tiles, 32.5, side=4, seed=1)
    assert len(comps) == 3 and sum(c.crops for c in comps) == 6
    seen = []
    for c in comps:
        assert c.image.shape == (1024, 1024, 3) and len(c.figures) == 2 * c.crops
        for (x, y), (ox, oy) in zip(c.figures[::2], c.figures[1::2]):
            bx, by = int(x) // 256 * 256, int(y) // 256 * 256
            i = int(c.image[by, bx, 0]) - 10  # which crop's block this is
            seen.append(i)
            assert (x - bx, y - by) == (100.0 + i, 50.0) and (ox - bx, oy - by) == (120.0, 60.0)
        blocks = c.image.reshape(4, 256, 4, 256, 3)[:, 0, :, 0, 0]
        assert (blocks == 200).sum() == 16 - c.crops  # the rest is tissue
    assert sorted(seen) == list(range(6))
    with pytest.raises(ValueError, match="no placed crops"):
        build_composites([], tiles, 4.4)


def test_slide_counts_at_several_thresholds_from_an_infer_slides_folder(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "summary.csv").write_text(
        "slide,status,mpp,tissue_mm2\n/x/a.svs,done,0.5,0.5\n/x/b.svs,error,0.5,1.0\n"
    )
    (tmp_path / "a.csv").write_text("x,y,score,label\n1,1,0.95,m\n2,2,0.6,m\n3,3,0.2,n\n")
    tool = REPO / "tools" / "dev" / "slide_counts.py"
    out = subprocess.run(
        [sys.executable, str(tool), str(tmp_path), "--thresholds", "0.5", "0.9"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "| a | 0.5 | 0.50 | 0.50 | 2 | 4.0 |" in out
    assert "| a | 0.5 | 0.50 | 0.90 | 1 | 2.0 |" in out and "| b |" not in out
    bad = subprocess.run(
        [sys.executable, str(tool), str(tmp_path / "missing"), "--thresholds", "0.5"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "missing/summary.csv" in bad.stderr


def _crop_dicts(folder, n, colour, other=False):
    """``n`` 128-px crops of flat ``colour`` with a dark 12-px figure at (64, 64) (and, with
    ``other``, a second labelled figure at (30, 30)), as converted crop dicts."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    dicts = []
    for i in range(n):
        img = np.full((128, 128, 3), colour, np.uint8)
        cv2.circle(img, (64, 64), 6, (20, 10, 40), -1)
        anns = [{"bbox": [39.0, 39.0, 89.0, 89.0], "category_id": 0, "annotation_id": 1}]
        if other:
            anns.append({"bbox": [5.0, 5.0, 55.0, 55.0], "category_id": 0, "annotation_id": 2})
        path = folder / f"{colour}_{i}.png"
        cv2.imwrite(str(path), img)
        dicts.append({"file_name": str(path), "annotations": anns, "figure_annotation_id": 1})
    return dicts


def test_roi_sets_are_byte_identical_per_seed_and_label_every_placed_figure(tmp_path):
    import json

    from midog_d2.constants import DONT_CARE, MITOTIC_FIGURE
    from midog_d2.data import load_midog_json
    from midog_d2.fileio.slide import slide_mpp
    from midog_dev.composites import build_roi_set, write_roi_set

    figures = _crop_dicts(tmp_path / "fig", 3, 150)
    tissue = _crop_dicts(tmp_path / "tis", 4, 120, other=True)
    tiles = [ContextTile("t.png", np.full((600, 600, 3), 230, np.uint8), 1.0)]
    build = lambda seed: build_roi_set(  # noqa: E731
        figures, tissue, tiles, 32.5, seed=seed, side=2, tumor_fraction=0.5
    )
    a, b, c = build(5), build(5), build(6)
    assert len(a) == len(b) and all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))
    # every placed figure is labelled, where its dark nucleus is
    assert sum(len(r.figures) for r in a) == 3 and sum(r.crops for r in a) == 3
    for r in a:
        for x, y in r.figures:
            assert r.image[int(y), int(x)].max() < 80
        # tumor pieces: their own figure and their other one are don't-care zones
        assert len(r.ignore) == 2 * len(r.tumor)
        for x, y in r.ignore[::2]:
            assert r.image[int(y), int(x)].max() < 80
    assert sum(len(r.tumor) for r in a) > 0
    # written twice: the same bytes; read back: the labels and the zones
    paths = [write_roi_set(a, str(tmp_path / d), "val") for d in ("w1", "w2")]
    for name in sorted(p.name for p in (tmp_path / "w1").iterdir()):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    dicts = load_midog_json(paths[0], str(tmp_path / "w1"))
    assert len(dicts) == len(a)
    for d, r in zip(dicts, a):
        cls = [x["category_id"] for x in d["annotations"]]
        assert cls.count(MITOTIC_FIGURE) == len(r.figures) and cls.count(DONT_CARE) == len(r.ignore)
        assert slide_mpp(d["file_name"]) == pytest.approx(0.25)  # the TIFF's own tags
    doc = json.loads(open(paths[0]).read())
    assert doc["images"][0]["tumor_windows"] == [list(w) for w in a[0].tumor]
