"""The MIDOG 2021 crops of AMi-Br (ami-br-midog21, a manifest with slide and scanner) through
the same converter as AtNorM-MD: counts per scanner, the split by slide, the other labelled
cells as annotations, and malformed manifests."""

import csv
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from midog_dev.compose import figure_centre
from midog_dev.real_figures import (
    OTHER_ID_BASE,
    convert_real_figures,
    load_real_figures,
    scan_real_figures,
    split_real_figures,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MIDOG21 = SHARED / "data" / "real" / "ami-br-midog21"


@pytest.fixture(scope="module")
def scanned():
    if not MIDOG21.is_dir():
        pytest.skip("shared/data/real/ami-br-midog21 not available")
    return scan_real_figures(str(MIDOG21))


def test_counts_per_scanner_and_label(scanned):
    figures, scan = scanned
    assert len(figures) == 1721 and scan.problems == []
    assert Counter(f.scanner for f in figures) == {
        "Hamamatsu XR": 451,
        "Hamamatsu S360": 582,
        "Aperio CS2": 688,
    }
    assert (scan.n_normal, scan.n_atypical) == (1317, 404)
    assert len({f.slide for f in figures}) == 135
    # the image id is the figure's MIDOG++ annotation id, and the name carries it
    assert all(f.file_name.endswith(f"MIDOG21_{f.image_id}.png") for f in figures)
    others = Counter(c for f in figures for _, _, c in f.others)
    assert others == {1: 39, 2: 11}  # MIDOG category ids: mitotic figure, not mitotic figure


def test_split_by_slide_leak_free_and_seeded(scanned):
    figures, _ = scanned
    parts = split_real_figures(figures, (0.6, 0.2, 0.2), seed=0)
    assert sum(len(p) for p in parts.values()) == 1721
    for key in ("slide", "sha256", "file_name"):
        seen = {}
        for split, part in parts.items():
            for f in part:
                assert seen.setdefault(getattr(f, key), split) == split, (key, f.file_name)
    # every scanner has slides in every split, in about the asked proportions of crops
    for scanner, n in (("Hamamatsu XR", 451), ("Hamamatsu S360", 582), ("Aperio CS2", 688)):
        sizes = {s: sum(f.scanner == scanner for f in p) for s, p in parts.items()}
        assert all(sizes[s] > 0 for s in sizes), sizes
        assert 0.4 < sizes["train"] / n < 0.75, (scanner, sizes)
    again = split_real_figures(list(reversed(figures)), (0.6, 0.2, 0.2), seed=0)
    assert {s: {f.file_name for f in p} for s, p in again.items()} == {
        s: {f.file_name for f in p} for s, p in parts.items()
    }
    other = split_real_figures(figures, (0.6, 0.2, 0.2), seed=1)
    assert {f.slide for f in other["test"]} != {f.slide for f in parts["test"]}


def test_written_files_carry_scanner_slide_and_the_other_cells(scanned, tmp_path):
    report = convert_real_figures(
        str(MIDOG21), str(tmp_path), fractions=(0.6, 0.2, 0.2), seed=0, prefix="m21"
    )
    assert sum(c["crops"] for c in report["counts"].values()) == 1721
    assert {k: sum(c["crops"] for c in v.values()) for k, v in report["by_scanner"].items()} == {
        "Aperio CS2": 688,
        "Hamamatsu S360": 582,
        "Hamamatsu XR": 451,
    }
    dicts = [d for s in ("train", "val", "test") for d in load_real_figures(report["files"][s])]
    assert len(dicts) == 1721
    by_name = {d["file_name"].split("ami-br-midog21/")[-1]: d for d in dicts}
    manifest = {r["file"]: r for r in csv.DictReader(open(MIDOG21 / "manifest.csv"))}
    for name, row in manifest.items():
        d = by_name[name]
        assert (d["slide"], d["scanner"], d["lab"]) == (row["slide"], row["scanner"], row["lab"])
        assert d["slide_xy"] == [float(row["x"]), float(row["y"])]
        assert d["atypical"] == (row["label"] == "atypical")
        others = json.loads(row["others_in_crop"])
        assert len(d["annotations"]) == 1 + len(others)
        # the crop's own figure is found among several mitotic-figure boxes
        cx, cy = figure_centre(d)
        assert abs(cx - 64) <= 32 and abs(cy - 64) <= 32
        for o, a in zip(others, d["annotations"][1:]):
            assert a["other_in_crop"] and a["annotation_id"] >= OTHER_ID_BASE
            assert a["category_id"] == (0 if o["label"] == "mitotic figure" else 1)
            x0, y0, x1, y1 = a["bbox"]
            assert ((x0 + x1) / 2, (y0 + y1) / 2) == (o["x"], o["y"])


def _crop(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((128, 128, 3), 200, np.uint8)
    cv2.circle(img, (64, 64), 9, (30, 20, 40), -1)
    cv2.imwrite(str(path), img)


def _manifest(root: Path, rows):
    cols = "file,label,annotation_id,slide,scanner,lab,x,y,others_in_crop".split(",")
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)


def test_malformed_manifest_errors_name_file_and_line(tmp_path):
    _crop(tmp_path / "Normal" / "MIDOG21_1.png")
    (tmp_path / "Atypical").mkdir()
    good = ["Normal/MIDOG21_1.png", "normal", "1", "001.tiff", "Hamammatsu XR", "UMC", "5", "6"]
    _manifest(tmp_path, [good + ["[]"]])
    figures, _ = scan_real_figures(str(tmp_path))
    assert figures[0].scanner == "Hamamatsu XR"  # the CSV's misspelling, canonicalised
    for bad, message in (
        (good + ['[{"x": 1, "y": "a", "label": "mitotic figure"}]'], "others_in_crop"),
        (good + ['[{"x": 1, "y": 2, "label": "mitosis"}]'], "others_in_crop"),
        (good[:1] + ["maybe"] + good[2:] + ["[]"], "label"),
        (good[:6] + ["nan", "6", "[]"], "not finite"),
        (good[:2] + ["x"] + good[3:] + ["[]"], "invalid literal"),
    ):
        _manifest(tmp_path, [bad])
        with pytest.raises(ValueError, match=message) as e:
            scan_real_figures(str(tmp_path))
        assert "manifest.csv, line 2" in str(e.value)
    _manifest(tmp_path, [good + ["[]"], good + ["[]"]])
    with pytest.raises(ValueError, match="appears twice"):
        scan_real_figures(str(tmp_path))
    # a crop in the other class folder than its manifest label is reported
    _manifest(tmp_path, [good[:1] + ["atypical"] + good[2:] + ["[]"]])
    with pytest.raises(ValueError, match="disagrees"):
        scan_real_figures(str(tmp_path), strict=True)
