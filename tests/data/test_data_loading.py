"""MIDOG annotation loading, registration, splits and the dataset check tool."""

import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED, make_cfg
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from midog_d2.constants import MIDOGPP_TUMOR_TYPES
from midog_d2.data import (
    leave_one_tumor_out,
    load_midog_json,
    register_from_config,
    register_midog,
    seeded_val_split,
    split_by_csv,
    split_for_domain_study,
)
from midog_d2.fileio import check_images

MIDOGPP_JSON = SHARED / "data" / "MIDOGpp.json"
MIDOGPP_CSV = SHARED / "data" / "MIDOGpp_datasets_xvalidation.csv"
needs_real = pytest.mark.skipif(
    not MIDOGPP_JSON.is_file(), reason="shared/data/MIDOGpp.json not available"
)


@pytest.fixture(scope="module")
def real_all():
    if not MIDOGPP_JSON.is_file():
        pytest.skip("shared/data/MIDOGpp.json not available")
    return load_midog_json(
        str(MIDOGPP_JSON), "images", csv_file=str(MIDOGPP_CSV), include_unlabelled=True
    )


@pytest.fixture(scope="module")
def real_labelled():
    if not MIDOGPP_JSON.is_file():
        pytest.skip("shared/data/MIDOGpp.json not available")
    return load_midog_json(str(MIDOGPP_JSON), "images", csv_file=str(MIDOGPP_CSV))


def write_json(tmp_path, images=None, annotations=None, categories=None, name="ann.json", raw=None):
    """A small MIDOG++-style file: two 500 x 400 images, one box each."""
    if images is None:
        images = [
            {
                "id": 1,
                "file_name": "a.tiff",
                "width": 500,
                "height": 400,
                "tumor_type": "canine lymphosarcoma",
            },
            {
                "id": 2,
                "file_name": "b.tiff",
                "width": 500,
                "height": 400,
                "tumor_type": "human melanoma",
            },
        ]
    if annotations is None:
        annotations = [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [100, 100, 150, 150],
                "labels": [1, 1],
            },
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [200.5, 50, 250.5, 100]},
        ]
    if categories is None:
        categories = [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}]
    path = tmp_path / name
    if raw is not None:
        path.write_text(raw)
    else:
        path.write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return str(path)


# ---------------------------------------------------------------- real MIDOG++ file


def test_real_midogpp_counts(real_all, real_labelled):
    assert len(real_all) == 553
    labelled = [d for d in real_all if d["labelled"]]
    assert len(labelled) == 503
    # The unlabelled images are exactly those without annotations (ids 151-200),
    # and the default load leaves them out.
    assert sorted(d["image_id"] for d in real_all if not d["labelled"]) == list(range(151, 201))
    assert all(not d["annotations"] for d in real_all if not d["labelled"])
    assert [d["image_id"] for d in real_labelled] == [d["image_id"] for d in labelled]

    classes = Counter(a["category_id"] for d in real_all for a in d["annotations"])
    assert classes == {0: 11937, 1: 14349}
    assert len({d["tumor_type"] for d in real_all}) == 7
    assert {d["tumor_type"] for d in real_all} == set(MIDOGPP_TUMOR_TYPES)
    assert all(d["domain_label"] == MIDOGPP_TUMOR_TYPES.index(d["tumor_type"]) for d in real_all)
    assert len({a["annotation_id"] for d in real_all for a in d["annotations"]}) == 26286

    straddling = 0
    for d in real_all:
        assert d["file_name"] == str(Path("images") / f"{d['image_id']:03d}.tiff")
        for a in d["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            assert a["bbox_mode"] == BoxMode.XYXY_ABS
            assert (x2 - x1, y2 - y1) == (50, 50)
            # Every box overlaps its image ...
            assert x2 > 0 and y2 > 0 and x1 < d["width"] and y1 < d["height"]
            # ... and its centre is at most 5 px outside (cells cut by the ROI edge).
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            assert -5 <= cx <= d["width"] + 5 and -5 <= cy <= d["height"] + 5
            straddling += x1 < 0 or y1 < 0 or x2 > d["width"] or y2 > d["height"]
            assert len(a["labels"]) in (2, 3)
    # The real file has boxes across the image border: kept, unclipped.
    assert straddling == 274


def test_real_csv_join_and_aliases(real_all):
    by_id = {d["image_id"]: d for d in real_all}
    # "Hamammatsu XR" (the CSV's spelling for ids 1-50) is normalised.
    assert Counter(d["scanner"] for d in real_all) == {
        "3D Histech": 199,
        "Hamamatsu XR": 154,
        "Aperio CS2": 100,
        "Hamamatsu S360": 50,
        None: 50,
    }
    assert by_id[1]["scanner"] == "Hamamatsu XR"
    assert (by_id[1]["lab"], by_id[1]["species"], by_id[1]["split"]) == (
        "UMC Utrecht",
        "Human",
        "train",
    )
    assert Counter(d["species"] for d in real_all if d["labelled"]) == {"Human": 254, "Canine": 249}
    # Unlabelled images are not in the CSV.
    assert all(d["split"] is None and d["scanner"] is None for d in real_all if not d["labelled"])
    # The JSON's "canine lymphosarcoma" is the CSV's "canine lymphoma" (an alias), 55 images.
    lymphoma = [d for d in real_all if d["tumor_type"] == "canine lymphoma"]
    assert len(lymphoma) == 55
    assert all(d["domain_label"] == MIDOGPP_TUMOR_TYPES.index("canine lymphoma") for d in lymphoma)


def test_real_raw_scanner_spelling_kept_without_alias():
    if not MIDOGPP_JSON.is_file():
        pytest.skip("shared/data/MIDOGpp.json not available")
    dicts = load_midog_json(
        str(MIDOGPP_JSON), "", csv_file=str(MIDOGPP_CSV), scanner_aliases=(), image_ids=[1, 60]
    )
    assert [d["scanner"] for d in dicts] == ["Hamammatsu XR", "Hamamatsu S360"]


def test_real_without_alias_the_csv_disagrees():
    if not MIDOGPP_JSON.is_file():
        pytest.skip("shared/data/MIDOGpp.json not available")
    with pytest.raises(
        ValueError, match=r"canine lymphosarcoma.*MIDOGpp\.json.*canine lymphoma.*csv"
    ):
        load_midog_json(str(MIDOGPP_JSON), "", csv_file=str(MIDOGPP_CSV), tumor_aliases=())


def test_real_narrower_tumor_types_and_filters():
    if not MIDOGPP_JSON.is_file():
        pytest.skip("shared/data/MIDOGpp.json not available")
    types = list(make_cfg().MODEL.MULTITASK.DOMAINS)  # the paper's six, no soft tissue sarcoma
    dicts = load_midog_json(str(MIDOGPP_JSON), "", domains=types)
    sarcoma = [d for d in dicts if d["tumor_type"] == "canine soft tissue sarcoma"]
    assert len(sarcoma) == 100 and all(d["domain_label"] == -1 for d in sarcoma)
    assert all(d["domain_label"] == types.index(d["tumor_type"]) for d in dicts if d not in sarcoma)

    only = load_midog_json(str(MIDOGPP_JSON), "", tumor_filter=["Canine Lymphosarcoma"])
    assert len(only) == 55 and {d["tumor_type"] for d in only} == {"canine lymphoma"}
    some = load_midog_json(str(MIDOGPP_JSON), "", image_ids=[3, 1, 2, 151])
    assert [d["image_id"] for d in some] == [1, 2, 3]  # 151 is unlabelled
    with pytest.raises(ValueError, match=r"MIDOGpp\.json.*image ids not in the file: \[9999\]"):
        load_midog_json(str(MIDOGPP_JSON), "", image_ids=[1, 9999])
    with pytest.raises(ValueError, match=r"MIDOGpp\.json: no image left after the tumor filter"):
        load_midog_json(str(MIDOGPP_JSON), "", tumor_filter=["feline fibrosarcoma"])


# ---------------------------------------------------------------- small files, good and bad


def test_small_file_fields(tmp_path):
    path = write_json(tmp_path)
    d1, d2 = load_midog_json(path, str(tmp_path / "img"))
    assert d1["file_name"] == str(tmp_path / "img" / "a.tiff")
    assert (d1["image_id"], d1["width"], d1["height"]) == (1, 500, 400)
    assert (d1["tumor_type"], d1["domain_label"]) == ("canine lymphoma", 2)
    assert (d2["tumor_type"], d2["domain_label"]) == ("human melanoma", 6)
    assert d1["annotations"] == [
        {
            "bbox": [100.0, 100.0, 150.0, 150.0],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": 0,
            "annotation_id": 10,
            "labels": [1, 1],
        }
    ]
    assert d2["annotations"][0]["category_id"] == 1 and d2["annotations"][0]["bbox"][0] == 200.5
    assert "labels" not in d2["annotations"][0]
    assert d1["scanner"] is None and d1["split"] is None


def test_midog2021_style_names_and_default_tumor(tmp_path):
    images = [{"id": 7, "file_name": "007.tiff", "width": 300, "height": 300}]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50]},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [60, 60, 110, 110]},
    ]
    categories = [{"id": 1, "name": "Mitose"}, {"id": 2, "name": "Hard negative"}]
    path = write_json(tmp_path, images, annotations, categories)
    (d,) = load_midog_json(path, "")
    assert (d["tumor_type"], d["domain_label"]) == (None, -1)
    assert [a["category_id"] for a in d["annotations"]] == [0, 1]
    (d,) = load_midog_json(path, "", default_tumor_type="breast cancer")
    assert (d["tumor_type"], d["domain_label"]) == ("human breast cancer", 0)
    # Other hard-negative spellings, reversed ids: matched by name, not by id.
    categories = [{"id": 1, "name": "IMPOSTOR"}, {"id": 2, "name": "mitotic figure"}]
    (d,) = load_midog_json(write_json(tmp_path, images, annotations, categories, name="b.json"), "")
    assert [a["category_id"] for a in d["annotations"]] == [1, 0]


@pytest.mark.parametrize(
    "raw, match",
    [
        ("[1, 2, 3]", r"not a MIDOG/COCO-style annotation file: the top level is a list"),
        (
            '{"images": [], "categories": []}',
            r"not a MIDOG/COCO-style annotation file: missing .*'annotations'",
        ),
        ('{"images": [], "annotations": [], "categories": [', r"not valid JSON"),
    ],
)
def test_not_midog_json(tmp_path, raw, match):
    path = write_json(tmp_path, raw=raw)
    with pytest.raises(ValueError, match=match) as e:
        load_midog_json(path, "")
    assert path in str(e.value)


def test_missing_json_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_midog_json(str(tmp_path / "nope.json"), "")


def test_unknown_category_name(tmp_path):
    path = write_json(
        tmp_path, categories=[{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "lymphocyte"}]
    )
    with pytest.raises(ValueError, match=r"ann\.json: unknown category name 'lymphocyte' \(id 2\)"):
        load_midog_json(path, "")


def test_unknown_category_id_and_image_id(tmp_path):
    bad_cat = [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50]}]
    with pytest.raises(
        ValueError, match=r"ann\.json: annotation 5 \(image 1\): category_id 3 is not in"
    ):
        load_midog_json(write_json(tmp_path, annotations=bad_cat), "")
    bad_img = [{"id": 6, "image_id": 42, "category_id": 1, "bbox": [0, 0, 50, 50]}]
    with pytest.raises(
        ValueError, match=r"ann\.json: annotation 6 \(image 42\): refers to an image id"
    ):
        load_midog_json(write_json(tmp_path, annotations=bad_img), "")


@pytest.mark.parametrize("bbox", [[150, 100, 100, 150], [4000, 300, 50, 50], [100, 100, 100, 150]])
def test_box_in_another_convention(tmp_path, bbox):
    anns = [{"id": 3, "image_id": 1, "category_id": 1, "bbox": bbox}]
    path = write_json(tmp_path, annotations=anns)
    with pytest.raises(
        ValueError, match=r"ann\.json: annotation 3 \(image 1\): bbox .* x2 <= x1 or y2 <= y1.*COCO"
    ):
        load_midog_json(path, "")


def test_box_not_four_numbers(tmp_path):
    anns = [{"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]
    with pytest.raises(
        ValueError, match=r"annotation 4 \(image 1\): bbox \[1, 2, 3\] is not four finite numbers"
    ):
        load_midog_json(write_json(tmp_path, annotations=anns), "")


def test_box_outside_image_error_and_skip(tmp_path, caplog):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 150, 150]},
        {
            "id": 2,
            "image_id": 1,
            "category_id": 1,
            "bbox": [600, 100, 650, 150],
        },  # right of a 500-px image
        {
            "id": 3,
            "image_id": 2,
            "category_id": 2,
            "bbox": [-20, 380, 30, 430],
        },  # across the corner: kept
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [10, 10, 10, 60]},  # degenerate
    ]
    path = write_json(tmp_path, annotations=anns[:3])
    with pytest.raises(
        ValueError,
        match=r"ann\.json: annotation 2 \(image 1\): bbox .* outside the 500 x 400 image",
    ):
        load_midog_json(path, "")
    path = write_json(tmp_path, annotations=anns)
    with caplog.at_level(logging.WARNING, logger="midog_d2.data.midog"):
        d1, d2 = load_midog_json(path, "", check_boxes="skip")
    assert [a["annotation_id"] for a in d1["annotations"]] == [1]
    assert [a["annotation_id"] for a in d2["annotations"]] == [3]
    assert d2["annotations"][0]["bbox"] == [-20.0, 380.0, 30.0, 430.0]  # not clipped
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "ann.json: skipped 1 degenerate, 1 outside the image annotation(s)" in msg
    with pytest.raises(ValueError, match="check_boxes must be one of"):
        load_midog_json(path, "", check_boxes="clip")


def test_empty_annotation_lists(tmp_path, caplog):
    images = [
        {
            "id": 1,
            "file_name": "a.png",
            "width": 100,
            "height": 100,
            "tumor_type": "human melanoma",
        },
        {
            "id": 2,
            "file_name": "b.png",
            "width": 100,
            "height": 100,
            "tumor_type": "human melanoma",
            "labelled": True,
        },  # annotated, truly empty
    ]
    path = write_json(tmp_path, images=images, annotations=[])
    with caplog.at_level(logging.INFO, logger="midog_d2.data.midog"):
        (d,) = load_midog_json(path, "")
    assert d["image_id"] == 2 and d["labelled"] and d["annotations"] == []
    assert "left out 1 unlabelled image(s)" in caplog.text
    dicts = load_midog_json(path, "", include_unlabelled=True)
    assert [(d["image_id"], d["labelled"], d["annotations"]) for d in dicts] == [
        (1, False, []),
        (2, True, []),
    ]


def test_csv_errors(tmp_path):
    path = write_json(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Dataset\n1,train\n")
    with pytest.raises(ValueError, match=r"bad\.csv: not a MIDOG\+\+ split CSV: no 'Slide' column"):
        load_midog_json(path, "", csv_file=str(bad))
    dup = tmp_path / "dup.csv"
    dup.write_text("Slide;Dataset\n1;train\n1;test\n")
    with pytest.raises(ValueError, match=r"dup\.csv, line 3: slide id 1 appears twice"):
        load_midog_json(path, "", csv_file=str(dup))
    other = tmp_path / "other.csv"
    other.write_text("Slide;Dataset;Tumor\n1;train;human breast cancer\n2;test;human melanoma\n")
    with pytest.raises(
        ValueError, match=r"image 1: tumor type 'canine lymphosarcoma' in .*ann\.json disagrees"
    ):
        load_midog_json(path, "", csv_file=str(other))


# ---------------------------------------------------------------- splits


def test_leave_one_tumor_out_real(real_all):
    train, test = leave_one_tumor_out(real_all, "Human Neuroendocrine Tumor")
    assert len(test) == 55 and {d["tumor_type"] for d in test} == {"human neuroendocrine tumor"}
    assert all(d["tumor_type"] != "human neuroendocrine tumor" for d in train)
    assert len(train) == 503 - 55  # unlabelled images are in neither part
    assert not {d["image_id"] for d in train} & {d["image_id"] for d in test}
    train, test = leave_one_tumor_out(real_all, "canine lymphosarcoma")  # alias
    assert len(test) == 55 and {d["tumor_type"] for d in test} == {"canine lymphoma"}
    with pytest.raises(ValueError, match="held-out tumor type 'feline' is not in the data"):
        leave_one_tumor_out(real_all, "feline")


def test_csv_split_real(real_all):
    train, test = split_by_csv(real_all)
    assert (len(train), len(test)) == (392, 111)
    assert Counter(d["tumor_type"] for d in test) == {
        "human breast cancer": 33,
        "canine soft tissue sarcoma": 22,
        "canine lymphoma": 12,
        "human neuroendocrine tumor": 12,
        "canine cutaneous mast cell tumor": 11,
        "human melanoma": 11,
        "canine lung cancer": 10,
    }
    assert not {d["image_id"] for d in train} & {d["image_id"] for d in test}
    # Without the CSV there is no split column: a clear error, not an empty split.
    with pytest.raises(ValueError, match=r"image 1 \(images/001.tiff\) has split None.*CSV_FILE"):
        split_by_csv([{**d, "split": None} for d in real_all])


def test_seeded_val_split(real_labelled):
    train, val = seeded_val_split(real_labelled, 0.2, seed=3)
    ids = lambda ds: [d["image_id"] for d in ds]  # noqa: E731
    assert not set(ids(train)) & set(ids(val))
    assert sorted(ids(train) + ids(val)) == sorted(ids(real_labelled))
    # Stratified: 20 % of each tumor type, rounded half up.
    per_type = Counter(d["tumor_type"] for d in real_labelled)
    assert Counter(d["tumor_type"] for d in val) == {
        t: int(0.2 * n + 0.5) for t, n in per_type.items()
    }
    # Deterministic, also when the input order changes; another seed differs.
    rng = np.random.default_rng(0)
    shuffled = [real_labelled[i] for i in rng.permutation(len(real_labelled))]
    assert sorted(ids(seeded_val_split(shuffled, 0.2, seed=3)[1])) == sorted(ids(val))
    assert ids(seeded_val_split(real_labelled, 0.2, seed=3)[1]) == ids(val)
    assert set(ids(seeded_val_split(real_labelled, 0.2, seed=4)[1])) != set(ids(val))
    assert seeded_val_split(real_labelled, 0.0, seed=3)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        seeded_val_split(real_labelled, 1.0, seed=0)


# ---------------------------------------------------------------- registration


def test_register_midog_idempotent(tmp_path):
    path = write_json(tmp_path)
    for _ in range(3):
        register_midog("midog_test_small", path, str(tmp_path), mpp=0.23)
    meta = MetadataCatalog.get("midog_test_small")
    assert meta.thing_classes == ["mitotic figure", "hard negative"]
    assert meta.evaluator_type == "midog" and meta.mpp == 0.23
    assert meta.domains == list(MIDOGPP_TUMOR_TYPES)
    assert meta.midog_json_file == path and meta.image_root == str(tmp_path)
    assert not hasattr(meta, "json_file")  # see register_midog: COCOEvaluator would misread it
    assert [d["image_id"] for d in DatasetCatalog.get("midog_test_small")] == [1, 2]
    # Other arguments replace the registration.
    register_midog("midog_test_small", path, str(tmp_path), mpp=0.23, image_ids=[2])
    assert [d["image_id"] for d in DatasetCatalog.get("midog_test_small")] == [2]
    DatasetCatalog.register("not_midog_small", lambda: [])
    with pytest.raises(
        ValueError, match="'not_midog_small' is already registered, not by register_midog"
    ):
        register_midog("not_midog_small", path, str(tmp_path))


def test_coco_evaluator_on_registered_dataset(tmp_path):
    """Detectron2's COCOEvaluator converts the registered XYXY dicts itself:
    perfect predictions on a registered *part* of a file score AP50 = 100."""
    from detectron2.evaluation import COCOEvaluator

    path = write_json(tmp_path)
    register_midog("midog_test_cocoeval", path, str(tmp_path), image_ids=[1])
    evaluator = COCOEvaluator(
        "midog_test_cocoeval",
        tasks=("bbox",),
        distributed=False,
        output_dir=str(tmp_path / "eval"),
        use_fast_impl=False,
    )
    evaluator.reset()
    for d in DatasetCatalog.get("midog_test_cocoeval"):
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in d["annotations"]]))
        inst.scores = torch.ones(len(d["annotations"]))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    assert evaluator.evaluate()["bbox"]["AP50"] == pytest.approx(100.0)


@needs_real
def test_register_from_config():
    cfg = make_cfg()
    assert register_from_config(cfg) == []  # no JSON_FILE: nothing
    cfg.merge_from_list(
        [
            "DATASETS.MIDOG.JSON_FILE",
            str(MIDOGPP_JSON),
            "DATASETS.MIDOG.IMAGE_ROOT",
            "images",
            "DATASETS.MIDOG.CSV_FILE",
            str(MIDOGPP_CSV),
            "DATASETS.MIDOG.VAL_FRACTION",
            0.1,
        ]
    )
    for _ in range(2):  # idempotent
        names = register_from_config(cfg)
    assert sorted(names) == ["midog_test", "midog_train", "midog_val"]
    train, val, test = (DatasetCatalog.get(n) for n in ("midog_train", "midog_val", "midog_test"))
    assert (len(train) + len(val), len(test)) == (392, 111)
    assert len(val) == sum(
        int(0.1 * n + 0.5) for n in Counter(d["tumor_type"] for d in train + val).values()
    )
    assert not {d["image_id"] for d in train} & {d["image_id"] for d in val}
    assert all(d["split"] == "train" for d in train + val) and all(
        d["split"] == "test" for d in test
    )
    types = list(cfg.MODEL.MULTITASK.DOMAINS)
    assert MetadataCatalog.get("midog_train").domains == types
    assert all(
        d["domain_label"] == (types.index(d["tumor_type"]) if d["tumor_type"] in types else -1)
        for d in train
    )

    # The paper's setting: the five labelled MIDOG 2022 tumor types, neuroendocrine held out.
    cfg.merge_from_list(
        [
            "DATASETS.MIDOG.SPLIT",
            "leave_one_tumor_out",
            "DATASETS.MIDOG.VAL_FRACTION",
            0.0,
            "DATASETS.MIDOG.TUMOR_FILTER",
            [
                "human breast cancer",
                "canine lung cancer",
                "canine lymphoma",
                "canine cutaneous mast cell tumor",
                "human neuroendocrine tumor",
            ],
        ]
    )
    assert sorted(register_from_config(cfg)) == ["midog_test", "midog_train"]
    assert "midog_val" not in DatasetCatalog.list()
    train, test = DatasetCatalog.get("midog_train"), DatasetCatalog.get("midog_test")
    assert {d["tumor_type"] for d in test} == {"human neuroendocrine tumor"} and len(test) == 55
    assert len({d["tumor_type"] for d in train}) == 4 and len(train) == 150 + 44 + 55 + 50
    cfg.merge_from_list(["DATASETS.MIDOG.SPLIT", "random"])
    with pytest.raises(ValueError, match="DATASETS.MIDOG.SPLIT='random'"):
        register_from_config(cfg)


# ---------------------------------------------------------------- image check


def test_check_images_and_tool(tmp_path):
    images = [
        {"id": 1, "file_name": "ok.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "missing.tiff", "width": 64, "height": 48},
        {"id": 3, "file_name": "broken.tiff", "width": 64, "height": 48},
        {"id": 4, "file_name": "small.png", "width": 64, "height": 48},
    ]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 20, 20]} for i in range(1, 5)]
    path = write_json(tmp_path, images=images, annotations=anns)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "broken.tiff").write_bytes(b"II*\x00" + b"\x00" * 60)
    problems = dict(check_images(load_midog_json(path, str(tmp_path))))
    assert set(problems) == {
        str(tmp_path / f) for f in ("missing.tiff", "broken.tiff", "small.png")
    }
    assert problems[str(tmp_path / "missing.tiff")] == "missing"
    assert problems[str(tmp_path / "broken.tiff")].startswith("unreadable")
    assert "64 x 40 differs" in problems[str(tmp_path / "small.png")]

    tool = [
        sys.executable,
        str(REPO / "tools" / "check_dataset.py"),
        "--json",
        path,
        "--image-root",
        str(tmp_path),
    ]
    out = subprocess.run(tool, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 1, out.stderr
    assert f"{tmp_path / 'missing.tiff'}: missing" in out.stdout
    assert f"{tmp_path / 'broken.tiff'}: unreadable" in out.stdout
    assert "3 of 4 images have problems" in out.stderr
    assert str(tmp_path / "ok.png") not in out.stdout

    good = write_json(tmp_path, images=images[:1], annotations=anns[:1], name="good.json")
    from importlib import util

    spec = util.spec_from_file_location("check_dataset", REPO / "tools" / "check_dataset.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--json", good, "--image-root", str(tmp_path)]) == 0
    assert module.main(["--json", str(tmp_path / "nope.json"), "--image-root", str(tmp_path)]) == 2


def test_domain_split_holds_out_tumor_and_scanner():
    dicts = [
        {"image_id": i, "tumor_type": tumor, "scanner": scanner, "annotations": []}
        for i, (tumor, scanner) in enumerate(
            [("breast", "A")] * 6
            + [("lung", "B")] * 6
            + [("net", "A")] * 3
            + [("breast", "Leica")] * 3
        )
    ]
    splits = split_for_domain_study(dicts, "net", "Leica", val_fraction=0.25, seed=0)
    ids = {k: {d["image_id"] for d in v} for k, v in splits.items()}
    assert ids["unseen_tumor"] == {12, 13, 14}
    assert ids["unseen_scanner"] == {15, 16, 17}
    assert ids["train"].isdisjoint(ids["val"]) and ids["train"] | ids["val"] == set(range(12))
    assert len(ids["val"]) == 4  # a quarter of each training tumor type, by image
    with pytest.raises(ValueError, match="unseen_scanner.*empty"):
        split_for_domain_study(dicts, "net", "Philips", val_fraction=0.25, seed=0)


def _image(**over):
    img = {"id": 1, "file_name": "a.tiff", "width": 500, "height": 400}
    img.update(over)
    return img


@pytest.mark.parametrize(
    "image, match",
    [
        (_image(file_name=7), r"image 1: file_name 7 is not a file name"),
        (_image(file_name=""), r"image 1: file_name '' is not a file name"),
        (_image(height=None), r"image 1: height None is not a positive whole number"),
        (_image(height=[400]), r"image 1: height \[400\] is not a positive whole number"),
        (_image(width=0), r"image 1: width 0 is not a positive whole number"),
        (_image(width=499.5), r"image 1: width 499.5 is not a positive whole number"),
        (_image(width=True), r"image 1: width True is not a positive whole number"),
        (_image(id=[1]), r"image #0: id \[1\] is not an integer or a string"),
        (_image(id={"a": 1}), r"image #0: id \{'a': 1\} is not an integer or a string"),
        (_image(labelled="no"), r"image 1: labelled 'no' is not true or false"),
        (_image(tumor_type=3), r"image 1: tumor_type 3 is not a string"),
    ],
)
def test_image_entries_of_the_wrong_type_are_named(tmp_path, image, match):
    ann = [{"id": 10, "image_id": image["id"], "category_id": 1, "bbox": [1, 1, 9, 9]}]
    if not isinstance(image["id"], (int, str)):
        ann = []
    path = write_json(tmp_path, images=[image], annotations=ann)
    with pytest.raises(ValueError, match=r"ann\.json: " + match):
        load_midog_json(path, "")


def test_infinite_sizes_and_whole_floats(tmp_path):
    raw = json.dumps(
        {
            "images": [_image(width=500.0)],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}],
            "categories": [{"id": 1, "name": "mitotic figure"}],
        }
    )
    (d,) = load_midog_json(write_json(tmp_path, raw=raw), "")
    assert d["width"] == 500 and isinstance(d["width"], int)
    path = write_json(tmp_path, raw=raw.replace("500.0", "Infinity"), name="inf.json")
    with pytest.raises(ValueError, match=r"inf\.json: image 1: width inf is not a positive"):
        load_midog_json(path, "")


@pytest.mark.parametrize(
    "ann, match",
    [
        ({"id": 10, "image_id": [1], "category_id": 1}, r"image_id \[1\] is not an integer"),
        ({"id": 10, "image_id": 1, "category_id": {"x": 1}}, r"category_id \{'x': 1\} is not an"),
        ({"id": [10], "image_id": 1, "category_id": 1}, r"id \[10\] is not an integer"),
        ({"id": 10, "image_id": 1, "category_id": 1, "labels": 3}, r"labels 3 is not a list"),
    ],
)
def test_annotation_fields_of_the_wrong_type_are_named(tmp_path, ann, match):
    ann = dict(ann, bbox=[1, 1, 9, 9])
    path = write_json(tmp_path, images=[_image()], annotations=[ann])
    with pytest.raises(ValueError, match=r"ann\.json: annotation .*: " + match):
        load_midog_json(path, "")


def test_duplicate_annotation_ids_are_refused(tmp_path):
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]},
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [20, 20, 29, 29]},
    ]
    path = write_json(tmp_path, images=[_image()], annotations=anns)
    with pytest.raises(ValueError, match=r"annotation 10 .*: annotation id 10 appears twice"):
        load_midog_json(path, "")


def test_category_ids_of_the_wrong_type_are_named(tmp_path):
    path = write_json(tmp_path, categories=[{"id": [1], "name": "mitotic figure"}])
    with pytest.raises(ValueError, match=r"category entry .*'id' must be an integer or a string"):
        load_midog_json(path, "")
