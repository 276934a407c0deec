"""Training patches (MidogPatchMapper), image sampling and the loader, test-time records."""

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import SHARED, make_cfg
from midog_fixtures import write_tiled_tiff
from PIL import Image

from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from midog_d2.data import (
    MidogPatchMapper,
    MidogTestMapper,
    MidogTrainingSampler,
    build_midog_train_loader,
    image_weights,
    labelled_images,
    patches_per_epoch,
)

BACKGROUND = (200, 190, 210)
S = 512


def anno(box, category_id):
    return {
        "bbox": [float(v) for v in box],
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": category_id,
    }


def make_dict(
    file_name, width, height, annotations, tumor_type="human breast cancer", domain_label=0, **extra
):
    return {
        "file_name": file_name,
        "image_id": 7,
        "width": width,
        "height": height,
        "tumor_type": tumor_type,
        "domain_label": domain_label,
        "labelled": True,
        "annotations": annotations,
        **extra,
    }


def mapper(fmt="RGB", augmentations=(), **kw):
    return MidogPatchMapper(
        is_train=True, augmentations=list(augmentations), image_format=fmt, **kw
    )


def box_center(box):
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


# --- geometry -------------------------------------------------------------------------------------
# Each box is painted in its own colour over the whole box; the window is pinned at (100, 100).
GEOM_BOXES = {  # name: (box, category, colour)
    "A": ((200, 150, 250, 200), 0, (220, 20, 20)),  # fully inside, off-centre
    "B": ((575, 300, 625, 350), 0, (20, 220, 20)),  # centre x 600 < 612: kept, clipped at 612
    "C": ((595, 450, 645, 500), 0, (20, 20, 220)),  # centre x 620 >= 612: dropped (partly visible)
    "D": ((300, 560, 350, 610), 1, (240, 240, 20)),  # hard negative near the bottom edge
    "E": ((900, 650, 950, 700), 0, (20, 240, 240)),  # far outside the window
}
WINDOW = (100, 100)


def _geometry_dict(folder, name: str, **tiff_kwargs):
    """A 1024 x 768 image of the GEOM_BOXES coloured boxes on BACKGROUND, and its dict."""
    rgb = np.empty((768, 1024, 3), np.uint8)
    rgb[:] = BACKGROUND
    for box, _, colour in GEOM_BOXES.values():
        x1, y1, x2, y2 = box
        rgb[y1:y2, x1:x2] = colour
    path = write_tiled_tiff(folder / name, rgb, **tiff_kwargs)
    return make_dict(path, 1024, 768, [anno(b, c) for b, c, _ in GEOM_BOXES.values()])


@pytest.fixture(scope="module")
def geometry_image(tmp_path_factory):
    return _geometry_dict(tmp_path_factory.mktemp("geom"), "geom.tiff")


def expected_box(box, flips):
    x1, y1, x2, y2 = (v - o for v, o in zip(box, WINDOW * 2))
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, S), min(y2, S)
    if "h" in flips:
        x1, x2 = S - x2, S - x1
    if "v" in flips:
        y1, y2 = S - y2, S - y1
    return [x1, y1, x2, y2]


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
@pytest.mark.parametrize("flips", ["", "h", "v", "hv"])
def test_boxes_follow_crop_and_flips(geometry_image, monkeypatch, flips, fmt):
    tfms = [T.HFlipTransform(S)] * ("h" in flips) + [T.VFlipTransform(S)] * ("v" in flips)
    m = mapper(fmt, tfms)
    monkeypatch.setattr(m, "sample_window", lambda *a, **k: (*WINDOW, "random"))
    out = m(geometry_image)

    assert out["patch_origin"] == WINDOW and out["height"] == out["width"] == S
    image = out["image"].numpy().transpose(1, 2, 0)
    if fmt == "BGR":
        image = image[..., ::-1]
    inst = out["instances"]
    kept = ["A", "B", "D"]
    assert inst.gt_classes.tolist() == [GEOM_BOXES[k][1] for k in kept]
    boxes = inst.gt_boxes.tensor.numpy()
    for name, got in zip(kept, boxes):
        box, _, colour = GEOM_BOXES[name]
        want = expected_box(box, flips)
        np.testing.assert_array_equal(got, want)
        # the painted pixels are exactly the transformed (clipped) box
        mask = (image == colour).all(-1)
        x1, y1, x2, y2 = (int(v) for v in want)
        rect = np.zeros_like(mask)
        rect[y1:y2, x1:x2] = True
        assert mask.any() and np.array_equal(mask, rect), name
    assert out["foreground"] == 1
    # C is visible but its centre is outside: not a target
    assert (image == GEOM_BOXES["C"][2]).all(-1).any()


def test_patch_dict_fields(geometry_image):
    cfg = make_cfg()
    out = MidogPatchMapper(cfg, is_train=True)(geometry_image)
    assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (3, S, S)
    assert out["file_name"] == geometry_image["file_name"] and out["image_id"] == 7
    assert out["domain_label"] == 0 and out["height"] == out["width"] == S
    assert out["instances"].image_size == (S, S)
    assert out["foreground"] == int(len(out["instances"]) > 0)
    assert "annotations" not in out
    # the dataset dict itself is left as it was (the loader reuses it)
    assert geometry_image["annotations"][0]["bbox"] == [200.0, 150.0, 250.0, 200.0]


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_output_is_in_input_format(geometry_image, fmt):
    cfg = make_cfg()
    cfg.merge_from_list(
        [
            "INPUT.FORMAT",
            fmt,
            "INPUT.COLOR_JITTER.ENABLED",
            False,
            "INPUT.RANDOM_FLIP_HV",
            False,
            "INPUT.PATCH.P_MITOTIC",
            0.0,
        ]
    )
    m = MidogPatchMapper(cfg)
    m.sample_window = lambda *a, **k: (*WINDOW, "random")
    image = m(geometry_image)["image"].numpy()
    x, y = 120, 70  # inside box A (220, 20, 20) once the window is subtracted
    r_channel = 0 if fmt == "RGB" else 2
    assert image[r_channel, y, x] == 220 and image[2 - r_channel, y, x] == 20


# --- images at another µm/px than the model's -----------------------------------------------------
@pytest.fixture(scope="module")
def geometry_image_20x(tmp_path_factory):
    """The geometry image as a 0.5 µm/px (20x) scan: patches are read enlarged 2x."""
    return _geometry_dict(tmp_path_factory.mktemp("geom20x"), "geom20x.tiff", mpp=0.5)


def test_patches_of_a_20x_image_are_read_at_the_models_mpp(geometry_image_20x, monkeypatch):
    from midog_d2.fileio import read_region_scaled

    m = mapper("RGB", model_mpp=0.25, mpp_tolerance=0.1)
    assert m.scale(geometry_image_20x["file_name"]) == 2.0
    monkeypatch.setattr(m, "sample_window", lambda *a, **k: (*WINDOW, "random"))
    out = m(geometry_image_20x)
    # 512 model pixels are 256 level-0 pixels: [100, 356)^2 holds only A's centre.
    assert out["patch_origin"] == WINDOW and out["height"] == out["width"] == S
    assert out["instances"].gt_classes.tolist() == [0]
    x1, y1, x2, y2 = (2 * (v - 100) for v in GEOM_BOXES["A"][0])
    assert out["instances"].gt_boxes.tensor.tolist() == [[x1, y1, x2, y2]]
    image = out["image"].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(
        image, read_region_scaled(geometry_image_20x["file_name"], 100, 100, S, S, 2.0)
    )
    # A's pixels are where its box says, to the blended boundary pixel.
    mask = (image == GEOM_BOXES["A"][2]).all(-1)
    assert mask[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].all()
    grown = np.zeros_like(mask)
    grown[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] = True
    assert not (mask & ~grown).any()


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_scaled_patches_stay_inside_and_keep_their_boxes(sampling_image, scale):
    m = mapper(
        "RGB", p_mitotic=0.7, max_center_offset=0.45, model_mpp=0.25 / scale, mpp_tolerance=0.1
    )
    assert m.scale(sampling_image["file_name"]) == scale
    extent = S / scale  # level-0 pixels under a patch
    np.random.seed(4)
    for _ in range(25):
        out = m(sampling_image)
        x0, y0 = out["patch_origin"]
        assert 0 <= x0 <= 2048 - extent and 0 <= y0 <= 1536 - extent
        assert tuple(out["image"].shape) == (3, S, S) and not (out["image"] == 255).all(0).any()
        inside = [
            a
            for a in sampling_image["annotations"]
            if x0 <= box_center(a["bbox"])[0] < x0 + extent
            and y0 <= box_center(a["bbox"])[1] < y0 + extent
        ]
        boxes = out["instances"].gt_boxes.tensor.numpy()
        want = np.clip(
            [
                [
                    (a["bbox"][0] - x0) * scale,
                    (a["bbox"][1] - y0) * scale,
                    (a["bbox"][2] - x0) * scale,
                    (a["bbox"][3] - y0) * scale,
                ]
                for a in inside
            ],
            0,
            S,
        )
        np.testing.assert_allclose(boxes, np.asarray(want).reshape(-1, 4), atol=1e-3)


def test_mpp_within_tolerance_reads_patches_as_they_are(sampling_image):
    native, close = mapper("RGB"), mapper("RGB", model_mpp=0.24, mpp_tolerance=0.1)
    assert close.scale(sampling_image["file_name"]) == 1.0
    for m in (native, close):
        np.random.seed(5)
        m.out = [m(sampling_image) for _ in range(3)]
    for a, b in zip(native.out, close.out):
        assert a["patch_origin"] == b["patch_origin"] and torch.equal(a["image"], b["image"])


def test_image_without_mpp_uses_the_fallback_or_names_the_file(tmp_path):
    png = tmp_path / "nompp.png"
    Image.fromarray(np.full((600, 700, 3), 90, np.uint8)).save(png)
    d = make_dict(str(png), 700, 600, [anno((300, 300, 350, 350), 0)])
    m = mapper("RGB", p_mitotic=1.0, model_mpp=0.25, fallback_mpp=0.5)
    assert m.scale(str(png)) == 2.0
    out = m(d)
    assert tuple(out["image"].shape) == (3, S, S) and (out["image"] == 90).all()
    with pytest.raises(ValueError, match=r"nompp\.png has no resolution metadata"):
        mapper("RGB", model_mpp=0.25)(d)


# --- sampling -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sampling_image(tmp_path_factory):
    """2048 x 1536 px, mitotic figures (some at the borders and corners) and hard negatives."""
    rng = np.random.default_rng(0)
    w, h = 2048, 1536
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = BACKGROUND
    centres = [(30, 30), (w - 20, 40), (25, h - 30), (w - 25, h - 25), (w // 2, 10), (1000, 700)]
    annotations = [anno((x - 25, y - 25, x + 25, y + 25), 0) for x, y in centres]
    for x, y in rng.integers(100, [w - 100, h - 100], size=(6, 2)):
        annotations.append(anno((x - 25, y - 25, x + 25, y + 25), 1))
    for a in annotations:
        x1, y1, x2, y2 = (int(v) for v in a["bbox"])
        rgb[max(y1, 0) : y2, max(x1, 0) : x2] = (
            (120, 40, 140) if a["category_id"] == 0 else (150, 90, 160)
        )
    path = write_tiled_tiff(tmp_path_factory.mktemp("sampling") / "sampling.tiff", rgb)
    return make_dict(path, w, h, annotations)


def test_centred_and_random_proportions_match_the_config(sampling_image):
    p_mit, p_hn, offset = 0.5, 0.2, 0.25
    m = mapper(p_mitotic=p_mit, p_hard_negative=p_hn, max_center_offset=offset)
    np.random.seed(0)
    n = 4000
    kinds = Counter()
    annos = sampling_image["annotations"]
    for _ in range(n):
        x0, y0, kind = m.sample_window(sampling_image)
        kinds[kind] += 1
        assert 0 <= x0 <= 2048 - S and 0 <= y0 <= 1536 - S
        if kind != "random":
            # some cell of the drawn kind lies in the patch, at most `offset` from its centre
            # on each axis unless the window was shifted at a border
            cls = 0 if kind == "mitotic" else 1
            cx, cy = x0 + S / 2, y0 + S / 2
            ok = False
            for a in annos:
                if a["category_id"] != cls:
                    continue
                ax, ay = box_center(a["bbox"])
                inside = x0 <= ax < x0 + S and y0 <= ay < y0 + S
                near = all(
                    abs(c - p) <= offset * S + 1 or p_edge
                    for c, p, p_edge in (
                        (ax, cx, x0 in (0, 2048 - S)),
                        (ay, cy, y0 in (0, 1536 - S)),
                    )
                )
                ok |= inside and near
            assert ok, (x0, y0, kind)
    for kind, p in (("mitotic", p_mit), ("hard_negative", p_hn), ("random", 1 - p_mit - p_hn)):
        assert abs(kinds[kind] - n * p) <= 3 * np.sqrt(n * p * (1 - p)), (kind, kinds)


def test_offsets_cover_the_configured_range(sampling_image):
    d = dict(
        sampling_image, annotations=[anno((1000, 700, 1050, 750), 0)]
    )  # one cell, far from borders
    m = mapper(p_mitotic=1.0, max_center_offset=0.25)
    np.random.seed(1)
    offs = np.array(
        [
            [x0 + S / 2 - 1025, y0 + S / 2 - 725]
            for x0, y0, _ in (m.sample_window(d) for _ in range(1000))
        ]
    )
    assert np.abs(offs).max() <= 0.25 * S + 1
    assert offs.min() < -0.2 * S and offs.max() > 0.2 * S  # not always at the centre
    m0 = mapper(p_mitotic=1.0, max_center_offset=0.0)
    assert {m0.sample_window(d)[:2] for _ in range(20)} == {(1025 - S // 2, 725 - S // 2)}
    # a cell cut by the border whose centre is outside the image is never "centred on"
    cut = dict(sampling_image, annotations=[anno((-40, 100, 10, 150), 0)])
    assert {m0.sample_window(cut)[2] for _ in range(20)} == {"random"}


def test_border_patches_are_full_size_and_foreground_matches_boxes(sampling_image):
    m = mapper(
        "RGB",
        [
            T.RandomFlip(horizontal=True, vertical=False),
            T.RandomFlip(horizontal=False, vertical=True),
        ],
        p_mitotic=0.7,
        max_center_offset=0.45,
    )
    np.random.seed(2)
    at_border = fg = 0
    for _ in range(60):
        out = m(sampling_image)
        x0, y0 = out["patch_origin"]
        image = out["image"]
        assert tuple(image.shape) == (3, S, S)
        at_border += x0 in (0, 2048 - S) or y0 in (0, 1536 - S)
        # no padding: the image is larger than a patch, so no white (out-of-image) pixel
        assert not (image == 255).all(0).any()
        boxes = out["instances"].gt_boxes.tensor
        assert ((boxes >= 0) & (boxes <= S)).all()
        assert out["foreground"] == int(len(boxes) > 0)
        # the boxes are exactly those whose centre falls in the window
        want = sum(
            x0 <= box_center(a["bbox"])[0] < x0 + S and y0 <= box_center(a["bbox"])[1] < y0 + S
            for a in sampling_image["annotations"]
        )
        assert len(boxes) == want
        fg += out["foreground"]
    assert at_border >= 10 and 0 < fg < 60


def test_empty_patches_are_returned(sampling_image):
    d = dict(sampling_image, annotations=[])
    m = mapper(p_mitotic=0.5, p_hard_negative=0.5)  # no cells: falls back to random patches
    np.random.seed(3)
    out = m(d)
    assert out is not None and len(out["instances"]) == 0 and out["foreground"] == 0
    assert tuple(out["instances"].gt_boxes.tensor.shape) == (0, 4)
    assert out["instances"].gt_classes.dtype == torch.int64


def test_image_smaller_than_patch_is_padded_white(tmp_path):
    rgb = np.full((300, 400, 3), 100, np.uint8)
    d = make_dict(
        write_tiled_tiff(tmp_path / "small.tiff", rgb), 400, 300, [anno((200, 100, 250, 150), 0)]
    )
    out = mapper(p_mitotic=1.0)(d)
    assert out["patch_origin"] == (0, 0)
    img = out["image"].numpy()
    assert (
        (img[:, :300, :400] == 100).all()
        and (img[:, 300:, :] == 255).all()
        and (img[:, :, 400:] == 255).all()
    )
    assert out["instances"].gt_boxes.tensor.tolist() == [[200, 100, 250, 150]]


def test_same_seed_same_patches(sampling_image):
    cfg = make_cfg()
    cfg.merge_from_list(["INPUT.HED.ENABLED", True])
    m = MidogPatchMapper(cfg)

    def draw(seed):
        np.random.seed(seed)
        return [m(sampling_image) for _ in range(4)]

    a, b, c = draw(11), draw(11), draw(12)
    for x, y in zip(a, b):
        assert x["patch_origin"] == y["patch_origin"]
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)
    assert any(
        x["patch_origin"] != z["patch_origin"] or not torch.equal(x["image"], z["image"])
        for x, z in zip(a, c)
    )


def test_bad_input_errors_name_the_file(sampling_image, tmp_path):
    d = dict(sampling_image, annotations=[anno((10, 10, 60, 60), 3)])
    with pytest.raises(ValueError, match=r"sampling\.tiff.*category_id"):
        mapper()(d)
    missing = str(tmp_path / "missing.tiff")
    with pytest.raises(FileNotFoundError, match="missing.tiff"):
        mapper()(dict(sampling_image, file_name=missing))
    with pytest.raises(ValueError, match="P_MITOTIC"):
        mapper(p_mitotic=0.8, p_hard_negative=0.3)
    with pytest.raises(ValueError, match="MAX_CENTER_OFFSET"):
        mapper(max_center_offset=0.5)
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        mapper("L")


# --- image sampler and loader ---------------------------------------------------------------------
def tumor_dicts(counts=(("a", 6), ("b", 3), ("c", 1))):
    return [
        {"tumor_type": t, "annotations": [], "labelled": True} for t, n in counts for _ in range(n)
    ]


@pytest.mark.parametrize("balance", [False, True])
def test_sampler_draws_images_by_weight(balance):
    dicts = tumor_dicts()
    sampler = MidogTrainingSampler(image_weights(dicts, balance), patches_per_epoch=500, seed=0)
    n = 6000
    it = iter(sampler)
    types = Counter(dicts[next(it)]["tumor_type"] for _ in range(n))
    want = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3} if balance else {"a": 0.6, "b": 0.3, "c": 0.1}
    for t, p in want.items():
        assert abs(types[t] - n * p) <= 3 * np.sqrt(n * p * (1 - p)), (t, types)


def test_sample_weight_oversamples_and_bad_weights_are_refused():
    dicts = [{"file_name": f"{i}.png", "annotations": []} for i in range(10)]
    dicts[0]["sample_weight"] = 9.0  # one image as likely as the nine others together
    w = image_weights(dicts)
    assert w[0].item() == pytest.approx(0.5) and w[1:].sum().item() == pytest.approx(0.5)
    with_types = [dict(d, tumor_type="a" if i < 5 else "b") for i, d in enumerate(dicts)]
    wt = image_weights(with_types, balance_tumor_types=True)  # balancing first, then the weight
    # per image 1/5 in each type, times the weight: 9/5 + 4/5 for type a, 5/5 for b
    assert wt[0].item() == pytest.approx(9 / 18) and wt[5:].sum().item() == pytest.approx(5 / 18)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="3.png"):
            image_weights(
                [dict(d, sample_weight=bad) if i == 3 else d for i, d in enumerate(dicts)]
            )
    with pytest.raises(ValueError, match="sample_weight 0"):
        image_weights([dict(d, sample_weight=0.0) for d in dicts])


def test_sampler_is_seeded_and_sharded_by_rank():
    w = image_weights(tumor_dicts(), True)
    first = lambda s, k=50: [i for _, i in zip(range(k), s)]  # noqa: E731
    full = first(MidogTrainingSampler(w, 7, seed=3), 100)
    assert full == first(MidogTrainingSampler(w, 7, seed=3), 100)
    assert full != first(MidogTrainingSampler(w, 7, seed=4), 100)
    shards = []
    for rank in range(2):
        s = MidogTrainingSampler(w, 7, seed=3)
        s._rank, s._world_size = rank, 2
        shards.append(first(s))
    assert full == [i for pair in zip(*shards) for i in pair]
    with pytest.raises(ValueError, match="weights"):
        MidogTrainingSampler([0.0, 0.0], 5, seed=0)


def test_patches_per_epoch_and_labelled_images():
    cfg = make_cfg()
    assert patches_per_epoch(cfg, 40) == 40
    cfg.DATALOADER.PATCHES_PER_EPOCH = 1000
    assert patches_per_epoch(cfg, 40) == 1000
    dicts = [
        {"annotations": [], "labelled": True},
        {"annotations": [], "labelled": False},
        {"annotations": []},
        {"annotations": [anno((0, 0, 50, 50), 0)]},
    ]
    assert labelled_images(dicts) == [dicts[0], dicts[3]]


def test_real_midogpp_unlabelled_images_are_left_out_and_types_balanced():
    json_file = SHARED / "data" / "MIDOGpp.json"
    if not json_file.is_file():
        pytest.skip(f"{json_file} not available")
    from midog_d2.data import load_midog_json

    dicts = load_midog_json(str(json_file), include_unlabelled=True)
    train = labelled_images(dicts)
    assert len(dicts) == 553 and len(train) == 503
    w = image_weights(train, balance_tumor_types=True)
    per_type = Counter()
    for d, wi in zip(train, w.tolist()):
        per_type[d["tumor_type"]] += wi
    assert len(per_type) == 7
    assert max(per_type.values()) - min(per_type.values()) < 1e-9


def test_train_loader_batches_reproducible_and_skips_unlabelled(sampling_image, tmp_path):
    cfg = make_cfg()
    cfg.merge_from_list(
        [
            "SOLVER.IMS_PER_BATCH",
            4,
            "DATALOADER.NUM_WORKERS",
            2,
            "SEED",
            5,
            "DATALOADER.BALANCE_TUMOR_TYPES",
            True,
        ]
    )
    unlabelled = make_dict(str(tmp_path / "never-read.tiff"), 2048, 1536, [], labelled=False)
    dataset = [sampling_image, unlabelled]

    def first_batch():
        loader = build_midog_train_loader(cfg, dataset=dataset)
        return next(iter(loader))

    a, b = first_batch(), first_batch()
    assert len(a) == 4
    for x, y in zip(a, b):
        assert x["file_name"] == sampling_image["file_name"]  # the unlabelled file is never read
        assert x["patch_origin"] == y["patch_origin"] and torch.equal(x["image"], y["image"])
    assert len({x["patch_origin"] for x in a}) > 1


# --- test-time records ----------------------------------------------------------------------------
def test_test_mapper_reads_no_pixels_and_keeps_the_region(sampling_image, monkeypatch, tmp_path):
    import midog_d2.data.mapper as mapper_module

    def no_pixels(*a, **k):
        raise AssertionError("the test mapper must not read pixels")

    monkeypatch.setattr(mapper_module, "read_region_scaled", no_pixels)
    cfg = make_cfg()
    m = MidogTestMapper(cfg)
    out = m(sampling_image)
    assert (out["width"], out["height"]) == (2048, 1536) and out["region"] == (0, 0, 2048, 1536)
    assert out["mpp"] == pytest.approx(0.25)
    assert out["tumor_type"] == "human breast cancer" and out["domain_label"] == 0
    assert len(out["instances"]) == len(sampling_image["annotations"])
    assert "image" not in out

    sub = m(dict(sampling_image, region=(0, 0, 1024, 768)))
    centres = [box_center(a["bbox"]) for a in sampling_image["annotations"]]
    assert len(sub["instances"]) == sum(x < 1024 and y < 768 for x, y in centres)
    assert sub["instances"].image_size == (1536, 2048)  # boxes stay in image coordinates

    png = tmp_path / "plain.png"
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(png)
    rec = MidogTestMapper(fallback_mpp=0.242)(make_dict(str(png), 96, 64, []))
    assert rec["mpp"] == pytest.approx(0.242) and len(rec["instances"]) == 0

    with pytest.raises(ValueError, match=r"sampling\.tiff.*width 2000"):
        m(dict(sampling_image, width=2000))
    with pytest.raises(ValueError, match=r"sampling\.tiff.*region"):
        m(dict(sampling_image, region=(0, 0, 4000, 100)))
