"""TiledPredictor: tile grid, seam merging, coordinates, aux outputs, and the real model
under Detectron2's inference_on_dataset."""

import math
import uuid

import numpy as np
import pytest
import torch
from conftest import make_cfg
from fake_models import ArrayReader, BlobDetector, make_image
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from midog_d2.evaluation import ImagePoints, MidogEvaluator, evaluate_points
from midog_d2.inference import TiledPredictor, scaled_tile_grid, suppress_close_points, tile_grid


def predictor(image, **kw):
    reader = ArrayReader(image)
    args = dict(
        tile_size=512,
        overlap=52,
        batch_size=3,
        merge_radius_um=6.25,
        input_format="BGR",
        reader=reader,
    )
    args.update(kw)
    model = BlobDetector().eval()
    return TiledPredictor(model, **args).eval(), reader, model


def centres(inst):
    b = inst.pred_boxes.tensor
    return ((b[:, :2] + b[:, 2:]) / 2).tolist()


# --- grid and merging ---------------------------------------------------------------


def test_tile_grid_uses_the_stride_and_ends_flush_with_the_edge():
    tiles = tile_grid((0, 0, 1500, 1000), 512, 52)
    xs = sorted({t[0] for t in tiles})
    ys = sorted({t[1] for t in tiles})
    assert xs == [0, 460, 920, 988] and ys == [0, 460, 488]
    assert all(t[2] - t[0] == 512 and t[3] - t[1] == 512 for t in tiles)
    assert max(t[2] for t in tiles) == 1500 and max(t[3] for t in tiles) == 1000
    # A region smaller than a tile is one smaller tile; an offset region stays inside.
    assert tile_grid((0, 0, 300, 200), 512, 52) == [(0, 0, 300, 200)]
    assert tile_grid((100, 50, 700, 400), 512, 52) == [(100, 50, 612, 400), (188, 50, 700, 400)]
    with pytest.raises(ValueError, match="overlap"):
        tile_grid((0, 0, 100, 100), 512, 512)
    with pytest.raises(ValueError, match="empty region"):
        tile_grid((10, 0, 10, 100), 512, 52)


def test_suppress_close_points_keeps_the_best_of_each_cluster_per_class():
    c = np.array([[0, 0], [10, 0], [24.9, 0], [25, 0], [0, 100], [5, 100]], dtype=float)
    s = np.array([0.5, 0.9, 0.4, 0.3, 0.6, 0.7])
    cls = np.array([0, 0, 0, 0, 0, 1])
    keep = suppress_close_points(c, s, cls, 25.0)
    # 0.9 at x=10 removes x=0 and x=24.9 (14.9 px); x=25 is 15 px from x=10: removed too.
    # (0, 100) and (5, 100) differ in class: both stay.
    assert keep.tolist() == [1, 5, 4]
    assert suppress_close_points(c, s, cls, 0).tolist() == [1, 5, 4, 0, 2, 3]
    # Exactly at the radius is not "closer than": both stay.
    assert suppress_close_points(
        np.array([[0.0, 0], [25, 0]]), np.array([0.9, 0.8]), np.zeros(2), 25
    ).tolist() == [0, 1]


# --- the wrapper with a deterministic model -----------------------------------------


def test_a_cell_on_a_tile_seam_comes_out_once():
    # Tiles start at x = 0 and 460 (stride 460), so x in [460, 512) is in both. The seam
    # blob at x = 486 is whole in both tiles; the one at x = 505 is cut by the first
    # tile's edge (seen off-centre there, at lower score). Plus two ordinary cells.
    blobs = [(486, 200), (505, 300), (100, 100), (800, 400)]
    image = make_image((600, 1000), blobs)
    tp, reader, model = predictor(image)
    out = tp([{"file_name": "mem", "height": 600, "width": 1000}])[0]
    inst = out["instances"]
    assert inst.image_size == (600, 1000)
    got = sorted(centres(inst))
    assert got == sorted([[float(x), float(y)] for x, y in blobs])
    assert inst.scores.tolist() == [pytest.approx(0.9)] * 4  # the uncut view wins
    # Without merging, every tile that shows (part of) a cell reports it.
    tp0, _, _ = predictor(image, merge_radius_um=0.0)
    seen = sum(
        x0 < x + 10 and x - 10 < x1 and y0 < y + 10 and y - 10 < y1
        for x0, y0, x1, y1 in tile_grid((0, 0, 1000, 600), 512, 52)
        for x, y in blobs
    )
    assert seen > 4
    assert len(tp0([{"file_name": "mem", "height": 600, "width": 1000}])[0]["instances"]) == seen


def test_tiles_are_read_batch_by_batch_in_the_models_format():
    image = make_image((1000, 1500), [(700, 700)])
    tp, reader, model = predictor(image, batch_size=4)
    out = tp([{"file_name": "mem", "height": 1000, "width": 1500}])[0]
    # 4 columns x 3 rows of 512-px tiles, each read on its own.
    assert len(reader.requests) == 12 and all(r[2] <= 512 and r[3] <= 512 for r in reader.requests)
    assert model.calls == [(3, 512, 512)] * 12
    assert out["tiles"].shape == (12, 4)
    fg = out["foreground_prob"]
    # The blob lies in exactly the tiles that contain (700, 700) with its 20-px extent.
    expected = [
        float(x0 <= 690 and x1 >= 710 and y0 <= 690 and y1 >= 710)
        for x0, y0, x1, y1 in out["tiles"].tolist()
    ]
    assert fg.tolist() == expected and 1 <= sum(expected) < 12
    n_fg = sum(expected)
    assert out["domain_probs"].tolist() == pytest.approx(
        [(0.9 * n_fg + 0.1 * (12 - n_fg)) / 12, (0.1 * n_fg + 0.9 * (12 - n_fg)) / 12]
    )
    assert centres(out["instances"]) == [[700.0, 700.0]]
    # An RGB model would not see blue markers as BGR channel 0: the conversion is real.
    tp_rgb, _, _ = predictor(image, input_format="RGB")
    assert len(tp_rgb([{"file_name": "mem", "height": 1000, "width": 1500}])[0]["instances"]) == 0


def test_region_limits_inference_and_keeps_image_coordinates():
    image = make_image((800, 1200), [(150, 150), (700, 500), (1100, 700)])
    tp, reader, _ = predictor(image)
    out = tp([{"file_name": "mem", "height": 800, "width": 1200, "region": (500, 300, 1000, 800)}])[
        0
    ]
    assert out["instances"].image_size == (800, 1200)
    assert centres(out["instances"]) == [[700.0, 500.0]]
    assert all(
        500 <= x and x + w <= 1000 and 300 <= y and y + h <= 800 for x, y, w, h in reader.requests
    )


def test_merge_radius_is_converted_with_the_inputs_mpp():
    # Two cells 20 px apart: one at 0.25 µm/px (25 px radius), two at 0.5 µm/px (12.5 px).
    image = make_image((300, 300), [(100, 100), (120, 100)], half=4)
    tp, _, _ = predictor(image)
    assert len(tp([{"file_name": "m", "height": 300, "width": 300}])[0]["instances"]) == 1
    assert (
        len(tp([{"file_name": "m", "height": 300, "width": 300, "mpp": 0.5}])[0]["instances"]) == 2
    )


def test_bad_reader_output_is_an_error_naming_the_file():
    tp, _, _ = predictor(
        np.zeros((100, 100, 3), dtype=np.uint8), reader=lambda p, x, y, w, h, s: np.zeros((h, w))
    )
    with pytest.raises(ValueError, match="slide.tiff: reading tile"):
        tp([{"file_name": "slide.tiff", "height": 100, "width": 100}])
    tp.train()
    with pytest.raises(RuntimeError, match="eval"):
        tp([{"file_name": "slide.tiff", "height": 100, "width": 100}])


# --- the real model -----------------------------------------------------------------


@pytest.fixture
def real_model_cfg():
    cfg = make_cfg()
    cfg.merge_from_list(
        [
            # A small MultiTaskRetinaNet (R-18 FPN, 64 channels): the real code path, fast on a CPU.
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
            "MODEL.FPN.OUT_CHANNELS",
            "64",
            "MODEL.RETINANET.SCORE_THRESH_TEST",
            "0.0",  # keep the random model's detections
            "TEST.DETECTIONS_PER_IMAGE",
            "20",
            # compared with the model called directly, in fp32 ("auto" is bf16 on some CPUs)
            "TEST.TILE.PRECISION",
            "fp32",
            "TEST.TILE.SIZE",
            "256",
            "TEST.TILE.OVERLAP",
            "52",
            "TEST.TILE.BATCH_SIZE",
            "2",
        ]
    )
    return cfg


def test_real_model_single_tile_equals_the_model_itself(real_model_cfg, tmp_path):
    torch.manual_seed(0)
    model = build_model(real_model_cfg).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    tp = TiledPredictor(
        real_model_cfg, model, tile_size=256, merge_radius_um=0.0, reader=ArrayReader(image)
    ).eval()
    out = tp([{"file_name": "m", "height": 200, "width": 240}])[0]
    with torch.no_grad():
        bgr = torch.as_tensor(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)))
        ref = model([{"image": bgr, "height": 200, "width": 240}])[0]
    assert len(out["instances"]) == len(ref["instances"]) > 0
    order = torch.argsort(ref["instances"].scores, descending=True, stable=True)
    assert torch.allclose(
        out["instances"].pred_boxes.tensor, ref["instances"].pred_boxes.tensor[order]
    )
    assert torch.allclose(out["instances"].scores, ref["instances"].scores[order])
    assert torch.allclose(out["domain_probs"], ref["domain_probs"])
    assert out["foreground_prob"].tolist() == pytest.approx([float(ref["foreground_prob"])])


def test_real_model_under_inference_on_dataset(real_model_cfg, tmp_path):
    """A small MultiTaskRetinaNet, random weights, tiled over two PNG images read through
    midog_d2.fileio.read_region, scored by MidogEvaluator via inference_on_dataset."""
    torch.manual_seed(0)
    model = build_model(real_model_cfg)
    rng = np.random.default_rng(1)
    name = f"midog_tiled_test_{uuid.uuid4().hex[:8]}"
    dicts = []
    for k, (h, w) in enumerate([(300, 400), (200, 256)], start=1):
        path = tmp_path / f"{k:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        dicts.append(
            {
                "image_id": k,
                "file_name": str(path),
                "height": h,
                "width": w,
                "tumor_type": "human breast cancer",
                "domain_label": 0,
                "labelled": True,
                "annotations": [{"bbox": [100, 100, 150, 150], "bbox_mode": 0, "category_id": 0}],
            }
        )
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["mitotic figure", "hard negative"], mpp=0.25)
    try:
        loader = [[{k: d[k] for k in ("image_id", "file_name", "height", "width")}] for d in dicts]
        # The model is built in training mode: inference_on_dataset's inference_context
        # must switch the wrapper, and with it the model, to eval (else forward raises).
        assert model.training
        tp = TiledPredictor(real_model_cfg, model)
        results = inference_on_dataset(tp, loader, MidogEvaluator(name, real_model_cfg))
        res = results["midog"]
        assert res["num_images"] == 2
        # The evaluator scored exactly what the wrapper returns.
        tp.eval()
        outs = [tp(batch)[0] for batch in loader]
        images = []
        for o in outs:
            b = o["instances"].pred_boxes.tensor.numpy()
            images.append(
                ImagePoints(
                    gt=[[125, 125]],
                    pred=(b[:, :2] + b[:, 2:]) / 2,
                    scores=o["instances"].scores.numpy(),
                )
            )
        expected = evaluate_points(images, threshold=0.5)
        assert (res["TP"], res["FP"], res["FN"]) == (expected["tp"], expected["fp"], expected["fn"])
        assert res["best_F1"] == pytest.approx(expected["best_f1"])
        assert 0.0 <= res["foreground_AUC"] <= 1.0 or np.isnan(res["foreground_AUC"])
        assert res["domain_accuracy"] in (0.0, 0.5, 1.0)
        out = outs[0]
        assert out["instances"].image_size == (300, 400)
        assert len(out["tiles"]) == 4 and out["foreground_prob"].shape == (4,)
        assert out["domain_probs"].shape == (6,) and float(
            out["domain_probs"].sum()
        ) == pytest.approx(1.0, abs=1e-5)
        b = out["instances"].pred_boxes.tensor
        c = (b[:, :2] + b[:, 2:]) / 2
        assert len(b) > 0 and bool(
            (c[:, 0] >= 0).all() and (c[:, 0] <= 400).all() and (c[:, 1] <= 300).all()
        )
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# --- images at another µm/px than the model's -----------------------------------------------


def test_scaled_tile_grid_covers_the_region_in_model_pixels():
    region = (100, 50, 1300, 950)
    assert scaled_tile_grid(region, 512, 52) == [
        (a, b, c - a, d - b) for a, b, c, d in tile_grid(region, 512, 52)
    ]
    for scale in (2.0, 1.996, 0.5, 0.8):
        tiles = scaled_tile_grid(region, 512, 52, scale)
        covered = np.zeros((900, 1200), bool)
        # the region in model pixels: 2400 x 1800 at scale 2, 600 x 450 at 0.5, ...
        mw = math.floor(1300 * scale) - math.ceil(100 * scale)
        mh = math.floor(950 * scale) - math.ceil(50 * scale)
        for x, y, w, h in tiles:
            assert (w, h) == (min(512, mw), min(512, mh))
            # inside the region, and neighbours overlap by about OVERLAP model pixels
            assert region[0] <= x and x + w / scale <= region[2] + 1e-9
            assert region[1] <= y and y + h / scale <= region[3] + 1e-9
            covered[
                y - 50 : int(np.ceil(y + h / scale)) - 50,
                x - 100 : int(np.ceil(x + w / scale)) - 100,
            ] = True
        assert covered.all(), scale
        xs = sorted({t[0] for t in tiles})
        steps = np.diff(xs)[:-1]  # the last column is shifted to end on the edge
        assert all(abs(st - 460 / scale) <= 1 for st in steps), (scale, steps)


@pytest.mark.parametrize("mpp, scale", [(0.5, 2.0), (0.499, 1.996), (0.125, 0.5), (0.3, 1.2)])
def test_tiles_are_read_at_the_models_mpp_and_detections_mapped_back(mpp, scale):
    # Cells 150+ px apart (the merge radius at 0.125 µm/px is 50 px), one on a seam.
    blobs = [(100, 100), (480, 300), (700, 650), (1100, 200), (1300, 850), (250, 800)]
    image = make_image((1000, 1500), blobs, half=12)
    tp, reader, _ = predictor(image, model_mpp=0.25, mpp_tolerance=0.1)
    out = tp([{"file_name": "mem", "height": 1000, "width": 1500, "mpp": mpp}])[0]
    assert out["scale"] == pytest.approx(scale)
    assert reader.scales == [pytest.approx(scale)] * len(reader.requests)
    assert all(w <= 512 and h <= 512 for _, _, w, h in reader.requests)
    # Every output is in level-0 pixels: image size, tiles, detections.
    assert out["instances"].image_size == (1000, 1500)
    tiles = out["tiles"].numpy()
    assert tiles[:, 0].min() == 0 and tiles[:, 2].max() == pytest.approx(1500, abs=1)
    assert tiles[:, 3].max() == pytest.approx(1000, abs=1)
    assert np.allclose(tiles[:, 2] - tiles[:, 0], 512 / scale, atol=1e-3)
    got = sorted(centres(out["instances"]))
    assert len(got) == len(blobs)
    np.testing.assert_allclose(got, sorted(blobs), atol=0.6)
    # The boxes are the detector's 50 model pixels, 50 / scale level-0 pixels.
    b = out["instances"].pred_boxes.tensor
    assert torch.allclose(b[:, 2] - b[:, 0], torch.full((len(b),), 50 / scale), atol=1e-3)


def test_a_resolution_within_tolerance_is_read_as_it_is():
    image = make_image((600, 1000), [(486, 200)])
    tp, reader, _ = predictor(image, model_mpp=0.25, mpp_tolerance=0.1)
    out = tp([{"file_name": "mem", "height": 600, "width": 1000, "mpp": 0.2273}])[0]
    assert out["scale"] == 1.0 and set(reader.scales) == {1.0}
    assert reader.requests == [
        (x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in tile_grid((0, 0, 1000, 600), 512, 52)
    ]
    # The merge radius stays in µm: 6.25 µm at 0.2273 µm/px is 27.5 px.
    assert centres(out["instances"]) == [[486.0, 200.0]]


def test_config_supplies_the_models_mpp(cfg):
    cfg.merge_from_list(["INPUT.MODEL_MPP", 0.25, "INPUT.MPP_TOLERANCE", 0.05])
    image = make_image((600, 800), [(300, 300)])
    reader = ArrayReader(image)
    tp = TiledPredictor(cfg, BlobDetector().eval(), reader=reader).eval()
    assert (tp.model_mpp, tp.mpp_tolerance) == (0.25, 0.05)
    out = tp([{"file_name": "mem", "height": 600, "width": 800, "mpp": 0.5}])[0]
    assert out["scale"] == 2.0 and centres(out["instances"]) == [[300.0, 300.0]]


# --- the one image -> batch -> model path ---------------------------------------------------------


def test_model_inputs_give_the_model_its_channel_order():
    from midog_d2.inference import model_inputs

    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 2] = 255  # blue
    (bgr,) = model_inputs([rgb], "BGR")
    assert bgr["image"].shape == (3, 5, 7) and bgr["image"].dtype == torch.uint8
    assert (bgr["image"][0] == 255).all() and (bgr["image"][2] == 0).all()
    assert (bgr["height"], bgr["width"]) == (5, 7)
    (same,) = model_inputs([rgb], "RGB")
    assert (same["image"][2] == 255).all() and (same["image"][0] == 0).all()
    with pytest.raises(ValueError, match="image_format"):
        model_inputs([rgb], "HSV")


def test_predict_images_batches_like_one_call_per_image():
    from midog_d2.inference import predict_images

    images = [make_image((64, 96), [(20 + 10 * i, 30)]) for i in range(5)]
    model = BlobDetector().eval()
    batched = predict_images(model, images, "BGR", batch_size=2)
    assert model.calls == [(3, 64, 96)] * 5 and len(batched) == 5
    single = [predict_images(BlobDetector().eval(), [im], "BGR")[0] for im in images]
    for a, b in zip(batched, single):
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
    assert centres(batched[3]["instances"]) == [[50.0, 30.0]]  # blob x 40-60, y 20-40
    with pytest.raises(RuntimeError, match="eval"):
        predict_images(BlobDetector().train(), images, "BGR")
    with pytest.raises(ValueError, match="batch size"):
        predict_images(model, images, "BGR", batch_size=0)


def test_tiled_predictor_from_config_takes_the_tile_keys():
    cfg = make_cfg()
    cfg.merge_from_list(["TEST.TILE.SIZE", 256, "TEST.TILE.OVERLAP", 32, "TEST.TILE.BATCH_SIZE", 2])
    tp = TiledPredictor(cfg, BlobDetector().eval(), batch_size=5)
    assert (tp.tile_size, tp.overlap, tp.batch_size) == (256, 32, 5)  # keyword overrides cfg
    assert tp.model_mpp == cfg.INPUT.MODEL_MPP and tp.input_format == cfg.INPUT.FORMAT


def test_detection_caps_follow_the_tile_area():
    """RetinaNet keeps its candidates and detections per input: the tiled predictor sets them
    per 512 x 512 px of tile, so a 2048-px tile keeps sixteen times the 512-px tile's (a
    cap per input dropped figures from whole 2048-px regions, issue 27)."""
    cfg = make_cfg()
    cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST, cfg.TEST.DETECTIONS_PER_IMAGE = 1000, 100
    model = build_model(cfg).eval()
    for size, topk, kept in ((256, 1000, 100), (512, 1000, 100), (1024, 4000, 400)):
        cfg.TEST.TILE.SIZE = size
        TiledPredictor(cfg, model)
        assert (model.test_topk_candidates, model.max_detections_per_image) == (topk, kept)
    cfg.TEST.TILE.SIZE = 2048
    TiledPredictor(cfg, model)
    assert (model.test_topk_candidates, model.max_detections_per_image) == (16000, 1600)
