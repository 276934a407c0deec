"""Whole-slide inference (midog_d2.inference.SlidePredictor, midog_d2.jobs.slide_job): tissue
only, seams, µm/px, the clinical read-out, the five outputs, completion markers and resume,
on real image files read through the project's readers and a detector whose answers are known.
"""

import csv
import json
import os
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import CONFIGS, make_cfg
from fake_models import BlobDetector, make_image
from midog_fixtures import write_tiled_tiff

from detectron2.modeling import build_model

from midog_d2.constants import MITOTIC_NAME, NON_MITOTIC_NAME
from midog_d2.evaluation.scoring import evaluate_prediction_file
from midog_d2.fileio import clear_cache, read_region_scaled
from midog_d2.fileio.exports import CLASS_COLORS
from midog_d2.inference import (
    SlidePredictor,
    TiledPredictor,
    native_bf16_cpu,
    predict_images,
    resolve_precision,
    slide_readout,
)
from midog_d2.jobs.slide_job import (
    MARKER_SUFFIX,
    expand_inputs,
    infer_slides,
    slide_outputs,
    slide_stems,
    write_summary,
)

PINK = (205, 130, 175)  # eosin-like tissue (RGB): saturated, no channel at 255


def tissue(h, w, box=None, blobs=(), half=10, seed=0):
    """White glass with textured pink tissue in ``box`` (x0, y0, x1, y1; None: all of it)
    and pure-blue blobs (what BlobDetector finds) centred at ``blobs``."""
    img = make_image((h, w), blobs, half)
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = box or (0, 0, w, h)
    tex = np.clip(np.array(PINK) + rng.normal(0, 12, (y1 - y0, x1 - x0, 3)), 0, 250)
    region = img[y0:y1, x0:x1]
    blue = (region == (0, 0, 255)).all(axis=2)
    region[~blue] = tex.astype(np.uint8)[~blue]
    img[y0:y1, x0:x1] = region
    return img


def slide_cfg(*opts):
    return make_cfg(
        CONFIGS / "Base-MultiTask-RetinaNet.yaml",
        "TEST.TILE.SIZE",
        256,
        "TEST.TILE.OVERLAP",
        52,
        "TEST.TILE.BATCH_SIZE",
        3,
        "TEST.TISSUE.THUMBNAIL_SIZE",
        512,
        *opts,
    )


class Recording:
    """The library's reader, recording each request (x, y, w, h, scale)."""

    def __init__(self):
        self.requests = []

    def __call__(self, path, x, y, w, h, scale):
        self.requests.append((x, y, w, h, scale))
        return read_region_scaled(path, x, y, w, h, scale)


def slide_predictor(cfg, reader=None):
    model = BlobDetector().eval()
    tiled = TiledPredictor(cfg, model)
    if reader is not None:
        tiled.reader = reader
    return SlidePredictor(cfg, model, tiled=tiled), model


@pytest.fixture(autouse=True)
def _fresh_handles():
    clear_cache()
    yield
    clear_cache()


# --- seams, tissue, µm/px ------------------------------------------------------------


def test_a_cell_across_a_seam_and_a_corner_of_four_tiles_is_reported_once(tmp_path):
    # 256-px tiles at stride 204: x, y in [204, 256) lie in four tiles. (250, 250) is cut
    # by the first tile's edges (found off-centre there) and whole in the others.
    blobs = [(250, 250), (230, 100)]
    path = write_tiled_tiff(tmp_path / "corner.tif", tissue(600, 600, blobs=blobs), 0.25)
    pred, model = slide_predictor(slide_cfg())
    res = pred.predict(path)
    holding = [t for t in res.read_tiles if t[0] <= 250 < t[0] + 256 and t[1] <= 250 < t[1] + 256]
    assert len(holding) == 4
    assert len(res.scores) == 2
    got = sorted(map(tuple, np.round(res.xy).astype(int).tolist()))
    assert got == sorted(blobs)
    assert res.scores.tolist() == pytest.approx([0.9, 0.9])  # the whole view of each cell wins


def test_a_half_blank_slide_skips_that_half(tmp_path):
    w, h = 2048, 1024
    img = tissue(h, w, box=(0, 0, 1024, h), blobs=[(500, 500), (1500, 500)])
    # a speck on glass inside a tile that is read (the tile reaches the tissue); too small
    # for the mask, which opens away specks
    img[297:303, 1047:1053] = (0, 0, 255)
    path = write_tiled_tiff(tmp_path / "half.tif", img, 0.25)
    reader = Recording()
    pred, model = slide_predictor(slide_cfg(), reader)
    res = pred.predict(path)
    assert res.tiles_read == len(reader.requests)
    assert 0 < res.tiles_read < res.tiles_total
    # every tile read holds tissue; none lies wholly on the glass
    assert all(x < 1024 for x, *_ in reader.requests)
    x_starts = sorted({x for x, *_ in reader.requests})
    assert x_starts[-1] < 1024 and max(x + 256 for x in x_starts) >= 1024 - 1
    # the blob on the glass half is never seen (and would be, were that half read); the one
    # on glass in a tile that is read is dropped
    assert np.round(res.xy).astype(int).tolist() == [[500, 500]]
    pred_keep, _ = slide_predictor(slide_cfg("TEST.TISSUE.DROP_OUTSIDE", False))
    kept = sorted(np.round(pred_keep.predict(path).xy).astype(int).tolist())
    assert kept == [[500, 500], [1050, 300]]
    assert res.tissue_mm2 == pytest.approx(1024 * 1024 * 0.25**2 / 1e6, rel=0.05)

    reader_all = Recording()
    pred_all, _ = slide_predictor(slide_cfg("TEST.TISSUE.ENABLED", False), reader_all)
    res_all = pred_all.predict(path)
    assert res_all.tiles_read == res_all.tiles_total == len(reader_all.requests)
    assert res_all.tiles_total == res.tiles_total
    assert len(res_all.scores) == 3
    assert res_all.tissue_mm2 == pytest.approx(w * h * 0.25**2 / 1e6)


def test_a_slide_at_half_a_micron_is_read_at_the_models_mpp(tmp_path):
    # 0.5 µm/px: the model (0.25) sees it enlarged 2x; outputs are the slide's own pixels.
    blobs = [(100, 120), (400, 300)]
    path = write_tiled_tiff(tmp_path / "x20.tif", tissue(500, 600, blobs=blobs, half=5), 0.5)
    reader = Recording()
    pred, _ = slide_predictor(slide_cfg(), reader)
    res = pred.predict(path)
    assert res.mpp == pytest.approx(0.5) and res.scale == pytest.approx(2.0)
    assert {r[4] for r in reader.requests} == {2.0}
    assert (res.width, res.height) == (600, 500)
    np.testing.assert_allclose(sorted(res.xy.tolist()), sorted(blobs), atol=1.0)
    # boxes are 50 model pixels = 25 slide pixels
    np.testing.assert_allclose(res.boxes[:, 2] - res.boxes[:, 0], 25.0, atol=0.5)


def test_bf16_runs_a_real_model_and_fp16_needs_cuda():
    cfg = make_cfg(CONFIGS / "dev/Demo-CPU-R18.yaml", "MODEL.DEVICE", "cpu")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.head.cls_score.bias.fill_(-1.0)  # so that a random model detects something
    img = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    fp32 = predict_images(model, [img], "BGR", precision="fp32")[0]["instances"]
    bf16 = predict_images(model, [img], "BGR", precision="bf16")[0]["instances"]
    assert len(fp32) > 0 and len(bf16) > 0
    assert bf16.scores.dtype == torch.float32 and bf16.pred_boxes.tensor.dtype == torch.float32
    assert bf16.scores.max().item() == pytest.approx(fp32.scores.max().item(), abs=0.05)
    auto = predict_images(model, [img], "BGR", precision="auto")[0]["instances"]
    # auto is bf16 on a CPU with native bf16, fp32 on others
    expected = bf16 if native_bf16_cpu() else fp32
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16_cpu() else "fp32")
    assert torch.equal(auto.scores, expected.scores)
    assert resolve_precision("auto", "cuda:0") == "fp32"
    with pytest.raises(ValueError, match="fp16 inference needs a CUDA device"):
        predict_images(model, [img], "BGR", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        predict_images(model, [img], "BGR", precision="int8")


def test_evaluation_reads_auto_as_fp32_and_slide_inference_goes_channels_last():
    cfg = make_cfg(CONFIGS / "dev/Demo-CPU-R18.yaml", "MODEL.DEVICE", "cpu")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.head.cls_score.bias.fill_(-1.0)
    assert TiledPredictor(cfg, model, evaluation=True).precision == "fp32"
    assert TiledPredictor(cfg, model).precision == "auto"
    explicit = make_cfg(CONFIGS / "dev/Demo-CPU-R18.yaml", "TEST.TILE.PRECISION", "bf16")
    assert TiledPredictor(explicit, model, evaluation=True).precision == "bf16"

    def spatial_weights():
        return [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 < p.shape[-1]]

    assert all(p.is_contiguous() for p in spatial_weights())
    img = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    before = predict_images(model, [img], "BGR", precision="fp32")[0]["instances"]
    SlidePredictor(cfg, model)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in spatial_weights())
    assert not any(p.is_contiguous() for p in spatial_weights())
    after = predict_images(model, [img], "BGR", precision="fp32")[0]["instances"]
    assert len(before) == len(after) > 0
    assert torch.allclose(before.scores, after.scores, atol=1e-4)
    off = make_cfg(CONFIGS / "dev/Demo-CPU-R18.yaml", "TEST.TILE.CHANNELS_LAST", False)
    fresh = build_model(off).eval()
    SlidePredictor(off, fresh)
    assert all(p.is_contiguous() for p in fresh.parameters())


# --- read-out and outputs ------------------------------------------------------------

# A 1/100 of 10 HPF window (0.0237 mm², 711 x 533 px at 0.25 µm/px) keeps the image small.
CLUSTER = [(1300, 500), (1450, 560), (1600, 640), (1350, 800), (1700, 820)]
SCATTERED = [(150, 150), (150, 1050), (700, 1100)]
HOTSPOT_OPTS = ("TEST.HOTSPOT.AREA_MM2", 0.0237)


def test_counts_and_hotspot_of_a_hand_made_layout(tmp_path):
    path = write_tiled_tiff(
        tmp_path / "layout.tif", tissue(1200, 2000, blobs=CLUSTER + SCATTERED), 0.25
    )
    cfg = slide_cfg(*HOTSPOT_OPTS)
    pred, _ = slide_predictor(cfg)
    res = pred.predict(path)
    out = slide_readout(res, 0.5, cfg.TEST.HOTSPOT.AREA_MM2, cfg.TEST.HOTSPOT.ASPECT)
    assert out.count == 8
    assert out.tissue_mm2 == pytest.approx(2000 * 1200 * 0.25**2 / 1e6, rel=0.02)
    assert out.per_mm2 == pytest.approx(8 / out.tissue_mm2)
    hs = out.hotspot
    assert hs.count == 5
    assert hs.area_mm2 == pytest.approx(0.0237)
    assert (hs.x1 - hs.x0) / (hs.y1 - hs.y0) == pytest.approx(4 / 3)
    assert all(hs.x0 <= x < hs.x1 and hs.y0 <= y < hs.y1 for x, y in CLUSTER)
    assert hs.per_mm2 == pytest.approx(5 / 0.0237)
    assert slide_readout(res, 0.95).count == 0 and slide_readout(res, 0.95).hotspot is None


def _run(cfg, inputs, out, model=None, **kw):
    model = model or BlobDetector().eval()
    return infer_slides(cfg, model, inputs, str(out), 0.5, "0" * 64, progress=False, **kw), model


def test_the_five_outputs_follow_their_formats(tmp_path):
    mpp = 0.23
    path = write_tiled_tiff(tmp_path / "s1.tif", tissue(1200, 2000, blobs=CLUSTER + SCATTERED), mpp)
    out = tmp_path / "out"
    (row,), _ = _run(slide_cfg(*HOTSPOT_OPTS), [path], out)
    assert row["status"] == "done" and row["count"] == 8 and row["hotspot_count"] == 5
    assert row["mpp"] == pytest.approx(mpp)
    files = {k: out / f"s1{s}" for k, s in slide_outputs(str(path)).items()}
    assert all(f.is_file() for f in files.values()) and (out / f"s1{MARKER_SUFFIX}").is_file()
    truth = np.array(sorted(CLUSTER + SCATTERED), float)

    # CSV: level-0 pixels
    with open(files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    xy = np.array(sorted((float(r["x"]), float(r["y"])) for r in rows))
    np.testing.assert_allclose(xy, truth, atol=1.0)
    assert {r["label"] for r in rows} == {MITOTIC_NAME}

    # MIDOG JSON: millimetres with the slide's own µm/px, and it scores through our scorer
    obj = json.loads(files["midog"].read_text())
    assert obj["type"] == "Multiple points" and obj["version"] == {"major": 1, "minor": 0}
    mm = np.array(sorted(p["point"][:2] for p in obj["points"]))
    np.testing.assert_allclose(mm, xy * mpp / 1000.0, atol=1e-6)
    assert all(p["point"][2] == 0 and p["name"] == MITOTIC_NAME for p in obj["points"])
    gt = tmp_path / "gt.json"
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x - 25, y - 25, x + 25, y + 25]}
        for i, (x, y) in enumerate(truth.tolist())
    ]
    image = {"id": 1, "file_name": "s1.tif", "width": 2000, "height": 1200}
    cats = [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}]
    gt.write_text(json.dumps({"images": [image], "annotations": anns, "categories": cats}))
    scored = evaluate_prediction_file(gt, files["midog"], mpp=mpp, use_point_names=True)
    assert (scored["tp"], scored["fp"], scored["fn"]) == (8, 0, 0)

    # QuPath GeoJSON: midog.md §5, field by field
    gj = json.loads(files["geojson"].read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 8
    for feat in gj["features"]:
        assert set(feat) == {"type", "id", "geometry", "properties"}
        assert str(uuid.UUID(feat["id"])) == feat["id"]
        assert feat["geometry"]["type"] == "Point"
        props = feat["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {
            "name": MITOTIC_NAME,
            "color": list(CLASS_COLORS[MITOTIC_NAME]),
        }
        assert set(props["measurements"]) == {"score"}
    gxy = np.array(sorted(f["geometry"]["coordinates"] for f in gj["features"]))
    np.testing.assert_allclose(gxy, xy, atol=0.01)

    # ASAP XML: Dots in declared groups, level-0 pixels, Order from 0
    root = ET.parse(files["asap"]).getroot()
    assert root.tag == "ASAP_Annotations"
    groups = {g.get("Name") for g in root.find("AnnotationGroups")}
    assert groups == {MITOTIC_NAME, NON_MITOTIC_NAME}
    anns = root.find("Annotations").findall("Annotation")
    assert len(anns) == 8
    for a in anns:
        assert a.get("Type") == "Dot" and a.get("PartOfGroup") in groups
        assert a.get("Color").startswith("#") and len(a.get("Color")) == 7
        (c,) = a.find("Coordinates").findall("Coordinate")
        assert c.get("Order") == "0"
    axy = np.array(sorted((float(c.get("X")), float(c.get("Y"))) for c in root.iter("Coordinate")))
    np.testing.assert_allclose(axy, xy, atol=0.01)

    # the overlay: the thumbnail with open red rings of 12 µm around the detections (the
    # cell inside stays visible), the legend in a white band below it, not over it
    overlay = cv2.imread(str(files["overlay"]))
    h = int(round(1200 * 512 / 2000))
    assert overlay.shape[1] == 512 and overlay.shape[0] > h + 40
    assert (overlay[h + 2 :] > 200).all(axis=2).mean() > 0.8
    red = (overlay[:, :, 2] > 200) & (overlay[:, :, 1] < 60) & (overlay[:, :, 0] < 60)
    s = 512 / 2000
    r = max(4, int(round(12 / mpp * s)))
    for x, y in SCATTERED:
        cx, cy = int(round(x * s)), int(round(y * s))
        assert red[cy - r - 2 : cy - r + 3, cx - 1 : cx + 2].any()  # on the ring
        assert not red[cy - 1 : cy + 2, cx - 1 : cx + 2].any()  # not on the cell


def test_rerun_skips_complete_slides_and_redoes_incomplete_ones(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    paths = [
        write_tiled_tiff(folder / f"{n}.tif", tissue(400, 500, blobs=[(100 + 50 * k, 200)]), 0.25)
        for k, n in enumerate("abc")
    ]
    out = tmp_path / "out"
    cfg = slide_cfg()
    inputs = expand_inputs([str(folder)])
    assert inputs == paths

    rows, _ = _run(cfg, inputs[:1], out)  # slide a only
    assert [r["status"] for r in rows] == ["done"]

    rows, model = _run(cfg, inputs, out)
    assert [r["status"] for r in rows] == ["skipped", "done", "done"]
    assert rows[0]["count"] == 1  # its row comes back from the marker
    calls_for_two = len(model.calls)
    assert calls_for_two > 0

    # b's marker lost (killed before it was written): only b is redone
    os.remove(out / f"b{MARKER_SUFFIX}")
    rows, model = _run(cfg, inputs, out)
    assert [r["status"] for r in rows] == ["skipped", "done", "skipped"]
    assert len(model.calls) == calls_for_two / 2

    # an output changed after the marker: redone; so is everything under another threshold
    with open(out / "c.geojson", "a") as f:
        f.write(" ")
    rows, _ = _run(cfg, inputs, out)
    assert [r["status"] for r in rows] == ["skipped", "skipped", "done"]
    rows = infer_slides(cfg, BlobDetector().eval(), inputs, str(out), 0.7, "0" * 64, progress=False)
    assert [r["status"] for r in rows] == ["done", "done", "done"]
    # and under other weights
    rows = infer_slides(cfg, BlobDetector().eval(), inputs, str(out), 0.7, "1" * 64, progress=False)
    assert [r["status"] for r in rows] == ["done", "done", "done"]


def test_a_corrupt_slide_is_reported_and_the_others_go_on(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    good = write_tiled_tiff(folder / "good.tif", tissue(400, 500, blobs=[(200, 200)]), 0.25)
    bad = folder / "bad.svs"
    bad.write_bytes(b"II*\x00" + os.urandom(2000))
    png = folder / "plain.png"
    cv2.imwrite(str(png), tissue(300, 300, blobs=[(150, 150)])[:, :, ::-1])
    inputs = expand_inputs([str(folder)])
    out = tmp_path / "out"
    rows, _ = _run(slide_cfg(), inputs, out)
    status = {os.path.basename(r["slide"]): r for r in rows}
    assert status["bad.svs"]["status"] == "error"
    assert str(bad) in status["bad.svs"]["message"]
    assert status["good.tif"]["status"] == "done" and status["good.tif"]["count"] == 1
    assert status["plain.png"]["status"] == "done" and status["plain.png"]["count"] == 1
    assert not any(n.startswith("bad.") for n in os.listdir(out))
    write_summary(rows, str(out / "summary.csv"))
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["slide"] for r in summary] == inputs
    assert [r["status"] for r in summary] == [status[os.path.basename(p)]["status"] for p in inputs]


def test_inputs_files_folders_globs_and_their_errors(tmp_path):
    (tmp_path / "d").mkdir()
    a = write_tiled_tiff(tmp_path / "d" / "a.tif", tissue(64, 64), 0.25)
    b = write_tiled_tiff(tmp_path / "b.svs", tissue(64, 64), 0.25)
    (tmp_path / "d" / "notes.txt").write_text("x")
    assert expand_inputs([str(tmp_path / "d"), b, str(tmp_path / "*.svs")]) == [a, b]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        expand_inputs([str(tmp_path / "missing.svs")])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.ndpi")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no slide in it"):
        expand_inputs([str(tmp_path / "empty")])
    c = write_tiled_tiff(tmp_path / "a.tiff", tissue(64, 64), 0.25)
    with pytest.raises(ValueError, match="both write outputs named 'a'"):
        slide_stems([a, c])


def test_a_hotspot_on_the_images_border_stays_visible_and_the_legend_fits_the_width():
    from midog_d2.utils.visualizer import draw_slide_overlay

    for width in (300, 2048):
        thumb = np.full((width * 3 // 4, width, 3), 128, np.uint8)
        scale = width / 4000.0  # a 4000-px-wide image
        image_px = (0, 0, 4000, 3000)  # the window is the whole image, on all four borders
        out = draw_slide_overlay(thumb, scale, np.zeros((0, 2)), np.zeros(0), 0.5,
                                 hotspot=image_px, hotspot_count=0, mpp=0.25,
                                 title="a slide with a name longer than the thumbnail is wide " * 3)  # fmt: skip
        h = thumb.shape[0]
        yellow = (out[:h, :, 2] > 200) & (out[:h, :, 1] > 150) & (out[:h, :, 0] < 60)
        assert yellow[:3].any() and yellow[h - 3 : h].any()  # top and bottom edges
        assert yellow[:, :3].any() and yellow[:, -3:].any()  # left and right edges
        assert out.shape[1] == width and out.shape[0] > h  # the legend below, as wide


def test_a_new_output_format_is_one_row_of_the_table(tmp_path, monkeypatch):
    """A format added as a row (name, suffix, writer, which slides) is written for the
    slides it applies to, recorded in the completion marker, checked on a rerun and never
    taken for a slide."""
    from midog_d2.jobs import slide_outputs as table

    def write_count(ctx, path):
        Path(path).write_text(f"{ctx.readout.count} at {ctx.threshold}\n")

    row = table.SlideOutput("count", ".count.txt", write_count, lambda p: p.endswith(".tif"))
    monkeypatch.setattr(table, "OUTPUTS", table.OUTPUTS + (row,))
    folder = tmp_path / "slides"
    folder.mkdir()
    write_tiled_tiff(folder / "a.tif", tissue(400, 500, blobs=[(100, 200), (300, 200)]), 0.25)
    cv2.imwrite(str(folder / "b.png"), tissue(400, 500, blobs=[(200, 200)])[:, :, ::-1])
    out = tmp_path / "out"
    inputs = expand_inputs([str(folder)])
    rows, _ = _run(slide_cfg(), inputs, out)
    assert [r["status"] for r in rows] == ["done", "done"]
    assert (out / "a.count.txt").read_text() == "2 at 0.5\n"
    assert not (out / "b.count.txt").exists()  # the row does not apply to PNGs
    marker = json.loads((out / f"a{MARKER_SUFFIX}").read_text())
    assert "count" in marker["outputs"]
    (out / "a.count.txt").write_text("edited\n")
    rows, _ = _run(slide_cfg(), inputs, out)
    assert [r["status"] for r in rows] == ["done", "skipped"]
    with pytest.raises(ValueError, match="an output of tools/infer_slides.py"):
        expand_inputs([str(out / "a.count.txt")])
