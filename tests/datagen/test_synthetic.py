"""The generated MIDOG-like dataset: files, format, determinism, pixels, domains."""

import csv
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from midog_d2.constants import BOX_SIZE
from midog_dev.synthetic import (
    PRESETS,
    SCANNERS,
    TUMOR_TYPES,
    Domain,
    SyntheticSpec,
    generate_dataset,
    load_positions,
    render_image,
    write_tiff,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SIZE = (384, 320)
SPEC = SyntheticSpec(
    domains=(
        Domain("human breast cancer", "Hamamatsu XR", 2, "train"),
        Domain("canine lymphoma", "Aperio CS2", 1, "train"),
        Domain("human neuroendocrine tumor", "Leica GT450", 1, "test"),
    ),
    image_size=SIZE,
    mitoses_per_mm2=250.0,  # dense, so that tiny images hold both categories
    imposters_per_mm2=250.0,
)


def _digests(folder: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(out, SPEC, seed=7)


def _load(dataset):
    data = json.loads(Path(dataset["json_file"]).read_text())
    with open(dataset["csv_file"], newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return data, rows


def test_same_seed_same_bytes_other_seed_other_bytes(dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", SPEC, seed=7)
    first = _digests(Path(dataset["image_root"]))
    assert first == _digests(Path(again["image_root"]))
    assert set(first) == {
        "001.tiff",
        "002.tiff",
        "003.tiff",
        "004.tiff",
        "synthetic_midog.json",
        "synthetic_midog.csv",
    }

    other = generate_dataset(tmp_path / "other", SPEC, seed=8)
    od = _digests(Path(other["image_root"]))
    for name in ("001.tiff", "002.tiff", "003.tiff", "004.tiff"):
        assert od[name] != first[name], name
    a = json.loads(Path(dataset["json_file"]).read_text())["annotations"]
    b = json.loads(Path(other["json_file"]).read_text())["annotations"]
    assert [x["bbox"] for x in a] != [x["bbox"] for x in b]


def test_openslide_reads_dimensions_and_mpp(dataset, tmp_path):
    openslide = pytest.importorskip("openslide")
    import tifffile

    for rec in dataset["images"]:
        path = Path(dataset["image_root"]) / rec["file_name"]
        slide = openslide.open_slide(str(path))
        assert slide.dimensions == SIZE
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25, abs=1e-6)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25, abs=1e-6)
        region = np.asarray(slide.read_region((0, 0), 0, SIZE))[..., :3]
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert np.array_equal(page.asarray(), region)  # lossless
        slide.close()

    # mpp=None draws each scanner at its native resolution, and tags it so
    spec = dataclasses.replace(
        SPEC,
        domains=(Domain("canine lung cancer", "Hamamatsu S360", 1),),
        mpp=None,
        compression="none",
    )
    out = generate_dataset(tmp_path, spec, seed=1)
    slide = openslide.open_slide(str(tmp_path / out["images"][0]["file_name"]))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(
        SCANNERS["Hamamatsu S360"].mpp, abs=1e-6
    )
    assert slide.dimensions == SIZE


def test_json_and_csv_have_the_midogpp_form(dataset):
    data, rows = _load(dataset)
    assert data["categories"] == [
        {"id": 1, "name": "mitotic figure"},
        {"id": 2, "name": "not mitotic figure"},
    ]
    images = {im["id"]: im for im in data["images"]}
    assert len(images) == 4
    for im in images.values():
        assert set(im) >= {"file_name", "id", "width", "height", "tumor_type"}
        assert (im["width"], im["height"]) == SIZE
        assert im["tumor_type"] in TUMOR_TYPES
    cats = {1: 0, 2: 0}
    ids = set()
    for a in data["annotations"]:
        x1, y1, x2, y2 = a["bbox"]
        assert (x2 - x1, y2 - y1) == (BOX_SIZE, BOX_SIZE)
        im = images[a["image_id"]]
        assert 0 <= x1 and 0 <= y1 and x2 <= im["width"] and y2 <= im["height"]
        assert a["category_id"] in (1, 2)
        votes = a["labels"]
        assert len(votes) in (2, 3) and votes.count(a["category_id"]) > len(votes) / 2
        cats[a["category_id"]] += 1
        ids.add(a["id"])
    assert cats[1] > 0 and cats[2] > 0
    assert len(ids) == len(data["annotations"])  # unique annotation ids

    # the CSV joins by slide id = image id, with the tumor type and the split of its domain
    assert list(rows[0]) == ["Slide", "Dataset", "Tumor", "Scanner", "Origin", "Species"]
    by_id = {int(r["Slide"]): r for r in rows}
    assert set(by_id) == set(images)
    for i, im in images.items():
        assert by_id[i]["Tumor"] == im["tumor_type"]
    assert [(by_id[i]["Scanner"], by_id[i]["Dataset"]) for i in sorted(by_id)] == [
        ("Hamamatsu XR", "train"),
        ("Hamamatsu XR", "train"),
        ("Aperio CS2", "train"),
        ("Leica GT450", "test"),
    ]
    assert by_id[3]["Species"] == "Canine" and by_id[1]["Species"] == "Human"


def test_project_loader_reads_the_dataset(dataset):
    from midog_d2.data import load_midog_json

    data, _ = _load(dataset)
    dicts = load_midog_json(
        str(dataset["json_file"]), str(dataset["image_root"]), csv_file=str(dataset["csv_file"])
    )
    assert len(dicts) == 4
    n_ann = sum(len(d["annotations"]) for d in dicts)
    assert n_ann == len(data["annotations"])
    for d, rec in zip(sorted(dicts, key=lambda d: d["image_id"]), dataset["images"]):
        assert Path(d["file_name"]).exists()
        assert (
            d["tumor_type"] == rec["tumor"]
            and d["scanner"] == rec["scanner"]
            and d["split"] == rec["split"]
        )
        assert d["domain_label"] >= 0
        got = sorted((a["category_id"], tuple(a["bbox"])) for a in d["annotations"])
        want = sorted(
            (
                c.category_id - 1,
                (round(c.x) - 25.0, round(c.y) - 25.0, round(c.x) + 25.0, round(c.y) + 25.0),
            )
            for c in rec["cells"]
        )
        assert got == want


def _od(img):
    """Summed optical density: how much stain (mostly haematoxylin in nuclei) a pixel holds."""
    return -np.log((img.astype(np.float32) + 1) / 256).sum(-1)


def test_mitoses_are_darker_than_tissue_and_more_ragged_than_imposters():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    mit_c, rand_c, mit_shape, imp_shape = [], [], [], []
    for name in ("human breast cancer", "canine lymphoma", "canine soft tissue sarcoma"):
        img, cells = render_image(
            TUMOR_TYPES[name], SCANNERS["Hamamatsu XR"], (768, 768), 0.25, rng, 10, 10
        )
        od = _od(img)
        for c in cells:
            x, y = int(round(c.x)), int(round(c.y))
            if c.category_id == 1:  # peak chromatin density near the centre
                mit_c.append(np.percentile(od[y - 15 : y + 15, x - 15 : x + 15], 95))
            # outline of the darkest blob at the centre: hairy chromosomes -> low circularity
            box = od[y - 25 : y + 25, x - 25 : x + 25]
            mask = (box > np.percentile(box, 90)).astype(np.uint8)
            n, lab = cv2.connectedComponents(mask)
            big = np.argmax(np.bincount(lab.ravel())[1:]) + 1 if n > 1 else 0
            cnts, _ = cv2.findContours(
                (lab == big).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            area, per = cv2.contourArea(cnts[0]), cv2.arcLength(cnts[0], True)
            (mit_shape if c.category_id == 1 else imp_shape).append(
                4 * np.pi * area / max(per, 1) ** 2
            )
        xs = rng.integers(25, 768 - 25, 40)
        ys = rng.integers(25, 768 - 25, 40)
        rand_c += [np.percentile(od[y - 15 : y + 15, x - 15 : x + 15], 95) for x, y in zip(xs, ys)]
    assert len(mit_c) >= 20 and len(imp_shape) >= 20
    assert np.mean(mit_c) > 1.4 * np.mean(rand_c)
    assert np.median(mit_c) > np.percentile(rand_c, 90)
    assert np.mean(mit_shape) < np.mean(imp_shape) - 0.1


def test_every_annotated_cell_is_dark_in_every_domain():
    # no annotated cell may vanish (e.g. under a lumen) or drown in pale staining
    for t in TUMOR_TYPES.values():
        for sc in SCANNERS.values():
            img, cells = render_image(t, sc, (384, 384), 0.25, np.random.default_rng(11), 4, 4)
            od = _od(img)
            med = np.median(od)
            assert cells, (t.name, sc.name)
            for c in cells:
                x, y = int(round(c.x)), int(round(c.y))
                peak = np.percentile(od[y - 15 : y + 15, x - 15 : x + 15], 95)
                assert peak > 1.3 * med, (t.name, sc.name, c)


def test_scanners_change_the_colours_of_the_same_tissue():
    means, ods = {}, {}
    for name, scanner in SCANNERS.items():
        # same rng state: same tissue, cells and noise draws; only acquisition differs
        img, _ = render_image(
            TUMOR_TYPES["human breast cancer"],
            scanner,
            (256, 256),
            0.25,
            np.random.default_rng(3),
            3,
            3,
        )
        means[name] = img.reshape(-1, 3).mean(0)
        ods[name] = _od(img).mean()
    names = list(SCANNERS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(means[a] - means[b]).max() > 5.0, (a, b, means[a], means[b])
    # the labs' staining intensity: Leica GT450 palest, Aperio CS2 and 3D Histech darkest
    assert min(ods, key=ods.get) == "Leica GT450"
    assert set(sorted(ods, key=ods.get)[-2:]) == {"Aperio CS2", "3D Histech"}


def test_tumor_types_differ_in_cell_density():
    def nuclear_fraction(name):
        img, _ = render_image(
            TUMOR_TYPES[name], SCANNERS["Hamamatsu XR"], (512, 512), 0.25, np.random.default_rng(5)
        )
        return float((_od(img) > 1.6).mean())

    assert nuclear_fraction("canine lymphoma") > 1.5 * nuclear_fraction("human breast cancer")


def _write_real_like_json(path: Path, cells):
    data = {
        "images": [
            {
                "file_name": "001.tiff",
                "id": 1,
                "width": 7000,
                "height": 5000,
                "tumor_type": "canine lymphosarcoma",
            }
        ],
        "categories": [
            {"id": 1, "name": "mitotic figure"},
            {"id": 2, "name": "not mitotic figure"},
        ],
        "annotations": [
            {
                "bbox": [x - 25, y - 25, x + 25, y + 25],
                "category_id": c,
                "image_id": 1,
                "labels": [c, c],
                "id": i + 1,
            }
            for i, (x, y, c) in enumerate(cells)
        ],
    }
    path.write_text(json.dumps(data))


def test_positions_from_a_midog_json(tmp_path):
    # a cluster of four cells fits into one 384 x 320 window, a far cell does not
    real = [(3000, 2000, 1), (3100, 2050, 2), (3050, 2200, 1), (3200, 2100, 2), (6500, 4500, 1)]
    src = tmp_path / "real.json"
    _write_real_like_json(src, real)
    spec = dataclasses.replace(SPEC, domains=(Domain("canine lymphoma", "Hamamatsu XR", 1),))
    out = generate_dataset(tmp_path / "gen", spec, seed=0, positions_from=src)
    cells = out["images"][0]["cells"]
    got = sorted((c.x, c.y, c.category_id) for c in cells)
    assert len(got) == 4
    # one offset maps every generated cell back onto a real one of the same category
    dx, dy = 3000 - got[0][0], 2000 - got[0][1]
    assert sorted((x + dx, y + dy, c) for x, y, c in got) == sorted(real[:4])

    # a tumor type without annotations in the file is an error that names the file
    spec = dataclasses.replace(SPEC, domains=(Domain("human melanoma", "Hamamatsu XR", 1),))
    with pytest.raises(ValueError, match="real.json.*human melanoma"):
        generate_dataset(tmp_path / "gen2", spec, seed=0, positions_from=src)


def test_positions_from_the_real_midogpp_file(tmp_path):
    src = SHARED / "data" / "MIDOGpp.json"
    if not src.exists():
        pytest.skip(f"{src} not present")
    pos = load_positions(src)
    assert set(pos) == set(TUMOR_TYPES)  # lymphosarcoma resolved to canine lymphoma
    spec = dataclasses.replace(
        SPEC, domains=(Domain("canine lymphoma", "3D Histech", 1),), image_size=(1024, 1024)
    )
    out = generate_dataset(tmp_path, spec, seed=0, positions_from=src)
    assert len(out["images"][0]["cells"]) >= 1


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown tumor type"):
        Domain("feline glioma", "Hamamatsu XR", 1)
    with pytest.raises(ValueError, match="unknown scanner"):
        Domain("human breast cancer", "Zeiss Axio", 1)
    with pytest.raises(ValueError, match="bad.tiff.*compression"):
        write_tiff(tmp_path / "bad.tiff", np.zeros((8, 8, 3), np.uint8), 0.25, "lzma")
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_positions(bad)
    with pytest.raises(ValueError, match="box lies inside"):
        render_image(
            TUMOR_TYPES["human breast cancer"],
            SCANNERS["Hamamatsu XR"],
            (200, 200),
            0.25,
            np.random.default_rng(0),
            positions=[(10, 100, 1)],
        )
    with pytest.raises(ValueError, match="smaller than one"):
        render_image(
            TUMOR_TYPES["human breast cancer"],
            SCANNERS["Hamamatsu XR"],
            (40, 40),
            0.25,
            np.random.default_rng(0),
        )


def test_cli_and_preview(tmp_path):
    import importlib.util

    import cv2

    tool = Path(__file__).resolve().parents[2] / "tools" / "dev" / "make_synthetic_midog.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_midog", tool)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit):  # argparse error naming the unknown tumor type
        mod.main(["--out", str(tmp_path / "bad"), "--domain", "feline glioma@Hamamatsu XR"])
    assert not (tmp_path / "bad").exists()
    png = tmp_path / "preview.png"
    mod.main(
        [
            "--out",
            str(tmp_path / "d"),
            "--preset",
            "tiny",
            "--size",
            "300",
            "--seed",
            "2",
            "--domain",
            "human breast cancer@Hamamatsu XR",
            "--domain",
            "canine lymphoma@Leica GT450",
            "--holdout-scanner",
            "Leica GT450",
            "--images-per-domain",
            "1",
            "--test-images-per-domain",
            "2",
            "--mitoses-per-mm2",
            "300",
            "--preview",
            str(png),
        ]
    )
    with open(tmp_path / "d" / "synthetic_midog.csv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert [(r["Tumor"], r["Scanner"], r["Dataset"]) for r in rows] == [
        ("human breast cancer", "Hamamatsu XR", "train"),
        ("canine lymphoma", "Leica GT450", "test"),
        ("canine lymphoma", "Leica GT450", "test"),
    ]
    data = json.loads((tmp_path / "d" / "synthetic_midog.json").read_text())
    assert all((im["width"], im["height"]) == (300, 300) for im in data["images"])
    prev = cv2.imread(str(png))
    assert prev is not None and prev.shape[0] > 2 * 256  # one strip per domain
    # green boxes (mitotic figures) are drawn (BGR; the palette may shift them a little)
    b, g, r = (prev[..., i].astype(int) for i in range(3))
    assert ((g > 160) & (r < 60) & (b < 60)).sum() > 100


def test_demo_preset_fits_the_demo():
    spec = PRESETS["demo"]
    train = [d for d in spec.domains if d.split == "train"]
    test = [d for d in spec.domains if d.split == "test"]
    assert len({(d.tumor, d.scanner) for d in train}) == 4
    n_train = sum(d.num_images for d in train)
    assert 20 <= n_train <= 30 and 1024 <= min(spec.image_size) <= 1536
    train_tumors, train_scanners = {d.tumor for d in train}, {d.scanner for d in train}
    # the test split holds one unseen tumor type and one unseen scanner
    assert any(d.tumor not in train_tumors and d.scanner in train_scanners for d in test)
    assert any(d.scanner not in train_scanners and d.tumor in train_tumors for d in test)
