"""Domains, foreground negatives, hard negatives and other labelled cells in the real-figure
canvases (midog_dev.canvas), and the domain label on its way to the model's head."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from datagen_helpers import DEV_CONFIGS, make_datagen_cfg

from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage

from midog_d2.constants import HARD_NEGATIVE, MITOTIC_FIGURE
from midog_d2.data import load_midog_json, set_domain_labels
from midog_dev import canvas as canvas_module
from midog_dev.canvas import CanvasCrop, RealFigureCanvasMapper, compose_canvas
from midog_dev.compose import CanvasOptions
from midog_dev.context import ContextTile

FIGURE = (64, 64)
NUCLEI = [(20, 22), (100, 30), (28, 100), (104, 104)]
SCANNERS = ["Hamamatsu XR", "Hamamatsu S360", "Aperio CS2"]


def _crop(path, shade):
    img = np.full((128, 128, 3), (200, 150, 200), np.uint8)
    for x, y in NUCLEI:
        cv2.circle(img, (x, y), 7, (shade, 80, 140), -1)
    cv2.circle(img, FIGURE, 9, (20, 10, 40), -1)
    cv2.imwrite(str(path), img[:, :, ::-1])


def _dict(path, scanner, others=()):
    anns = [
        {
            "bbox": [39.0, 39.0, 89.0, 89.0],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": MITOTIC_FIGURE,
            "annotation_id": 1,
        }
    ]
    for k, (x, y, c) in enumerate(others):
        anns.append(
            {
                "bbox": [x - 25, y - 25, x + 25, y + 25],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": c,
                "annotation_id": 100 + k,
            }
        )
    return {
        "file_name": str(path),
        "height": 128,
        "width": 128,
        "scanner": scanner,
        "content_box": [0, 0, 128, 128],
        "figure_annotation_id": 1,
        "annotations": anns,
    }


@pytest.fixture
def domain_crops(tmp_path):
    """Two crops of each of two known scanners, two of an unlisted one."""
    out = []
    for i, scanner in enumerate(["Hamamatsu XR"] * 2 + ["Aperio CS2"] * 2 + ["Leica GT450"] * 2):
        p = tmp_path / f"{i}.png"
        _crop(p, 100 + 10 * i)
        out.append(_dict(p, scanner))
    set_domain_labels(out, "scanner", SCANNERS)
    return out


def _tile():
    return [ContextTile("flat", np.full((300, 300, 3), (230, 200, 225), np.uint8), 1.0)]


def test_set_domain_labels_matches_names_and_leaves_the_rest_unknown(domain_crops):
    assert [d["domain_label"] for d in domain_crops] == [0, 0, 2, 2, -1, -1]
    d = [{"scanner": " aperio  cs2 "}, {"scanner": None}, {}]
    assert set_domain_labels(d, "scanner", SCANNERS) == {2: 1, -1: 2}
    assert [x["domain_label"] for x in d] == [2, -1, -1]


def test_a_domain_field_no_image_has_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="midog_d2"):
        set_domain_labels([{"scanner": "Aperio CS2"}], "scaner", SCANNERS)
    assert "'scaner'" in caplog.text and "DOMAIN_FIELD" in caplog.text


def test_load_midog_json_labels_the_configured_field(tmp_path):
    images = [
        {"id": i, "file_name": f"{i:03d}.tiff", "width": 100, "height": 100} for i in (1, 2, 3)
    ]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 60, 60]} for i in (1, 2, 3)]
    cats = [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}]
    (tmp_path / "m.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    (tmp_path / "m.csv").write_text(
        "Slide;Dataset;Tumor;Scanner;Origin;Species\n"
        "1;train;human breast cancer;Hamammatsu XR;UMC Utrecht;human\n"
        "2;train;human breast cancer;Aperio CS2;VMU Vienna;human\n"
        "3;train;human breast cancer;Leica GT450;elsewhere;human\n"
    )
    dicts = load_midog_json(
        str(tmp_path / "m.json"),
        csv_file=str(tmp_path / "m.csv"),
        domains=SCANNERS,
        domain_field="scanner",
    )
    assert [d["domain_label"] for d in dicts] == [0, 2, -1]
    by_type = load_midog_json(str(tmp_path / "m.json"), csv_file=str(tmp_path / "m.csv"))
    assert [d["domain_label"] for d in by_type] == [0, 0, 0]  # default: the tumor type


def test_a_canvas_draws_its_crops_from_one_domain_and_carries_its_label(domain_crops, monkeypatch):
    opts = CanvasOptions(size=192, crops=3, negative_windows=4)
    mapper = RealFigureCanvasMapper(domain_crops, _tile(), opts, image_format="RGB")
    seen = []

    def spy(rng, crops, negatives, tiles, opts, strength):
        seen.append([id(c.rgb) for c in list(crops) + list(negatives)])
        return compose_canvas(rng, crops, negatives, tiles, opts, strength)

    monkeypatch.setattr(canvas_module, "compose_canvas", spy)
    np.random.seed(0)
    image_of = {id(im): i for i, im in enumerate(mapper._images)}
    for d in domain_crops * 3:
        out = mapper(d)
        assert out["domain_label"] == d["domain_label"]
        labels = {domain_crops[image_of[i]]["domain_label"] for i in seen[-1]}
        assert labels == {d["domain_label"]}, (d["scanner"], labels)


def test_the_domain_label_reaches_the_head_and_unknown_ones_are_ignored(domain_crops):
    cfg = make_datagen_cfg(DEV_CONFIGS / "ScannerStudy-CPU-R18.yaml", "INPUT.CANVAS.SIZE", "128")
    torch.manual_seed(0)
    model = build_model(cfg)
    opts = CanvasOptions(size=128, crops=1, negative_windows=2)
    mapper = RealFigureCanvasMapper(domain_crops, _tile(), opts, image_format="BGR")
    np.random.seed(0)
    known = [mapper(domain_crops[0]), mapper(domain_crops[2])]
    unknown = [mapper(domain_crops[4]), mapper(domain_crops[5])]
    assert [x["domain_label"] for x in known + unknown] == [0, 2, -1, -1]
    model.train()
    with EventStorage():
        loss_known = model(known)["loss_domain"]
        loss_unknown = model(unknown)["loss_domain"]
        logits = model.domain_head(model.backbone(model.preprocess_image(known).tensor)["p7"])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    assert loss_known.item() == pytest.approx(expected.item(), rel=1e-4)
    assert loss_unknown.item() == 0.0


def test_empty_canvases_hold_no_figure_and_hard_negatives_are_boxed(domain_crops):
    np.random.seed(0)
    empty = RealFigureCanvasMapper(
        domain_crops, _tile(), CanvasOptions(size=192, crops=2, empty_fraction=1.0)
    )
    for d in domain_crops:
        assert len(empty(d)["instances"]) == 0  # foreground target 0
    hard = RealFigureCanvasMapper(
        domain_crops,
        _tile(),
        CanvasOptions(
            size=192, crops=2, negative_windows=4, empty_fraction=1.0, hard_negative_fraction=1.0
        ),
    )
    n = 0
    for d in domain_crops:
        inst = hard(d)["instances"]
        assert (inst.gt_classes == HARD_NEGATIVE).all()
        n += len(inst)
    assert n > 0
    # the hard negative is the crop's darkest unlabelled nucleus (the last-drawn shade here)
    assert hard._hard_negatives(0) and len(hard._hard_negatives(0)) == 1
    x, y = hard._hard_negatives(0)[0]
    assert min(np.hypot(x - nx, y - ny) for nx, ny in NUCLEI) < 4


def test_other_labelled_cells_get_boxes_where_their_window_goes(tmp_path):
    p = tmp_path / "c.png"
    _crop(p, 120)
    # a second mitotic figure 10 px from the crop's own one: inside every figure window
    d = _dict(p, "Aperio CS2", others=[(74.0, 64.0, MITOTIC_FIGURE)])
    rgb = cv2.imread(str(p))[:, :, ::-1].copy()
    item = CanvasCrop(rgb, (64.0, 64.0), (0, 0, 128, 128), others=canvas_module._other_cells(d))
    assert item.others == ((74.0, 64.0, MITOTIC_FIGURE),)
    opts = CanvasOptions(size=192, crops=1, negative_windows=0)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        _, points, classes = compose_canvas(rng, [item], [], _tile(), opts, 1.0)
        assert list(classes) == [MITOTIC_FIGURE, MITOTIC_FIGURE]
        assert np.hypot(*(points[0] - points[1])) == pytest.approx(10.0)


def test_training_slides_and_domains_are_selected_by_the_config():
    from midog_dev.canvas import first_slides, select_domains

    dicts = [{"slide": f"s{i % 5}", "scanner": ["A", "B"][i % 2], "i": i} for i in range(20)]
    assert {d["scanner"] for d in select_domains(dicts, "scanner", [" a "])} == {"A"}
    assert len(select_domains(dicts, "scanner", ["A"], keep=False)) == 10
    assert select_domains(dicts, "scanner", []) == dicts
    one, three = first_slides(dicts, 1, seed=0), first_slides(dicts, 3, seed=0)
    assert len({d["slide"] for d in one}) == 1 and len({d["slide"] for d in three}) == 3
    # more slides for the same seed include the fewer ones: k = 1 within k = 3
    assert {d["slide"] for d in one} <= {d["slide"] for d in three}
    assert first_slides(dicts, 3, seed=0) == three
    assert any(
        {d["slide"] for d in first_slides(dicts, 1, seed=s)} != {d["slide"] for d in one}
        for s in range(1, 6)
    )
    with pytest.raises(ValueError, match="no slide"):
        first_slides([{"scanner": "A"}], 1, seed=0)
