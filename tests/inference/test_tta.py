"""Flip test-time augmentation: boxes come back to the unflipped pixels, readings are fused by
centre distance, and a detection only one reading makes loses its score."""

import numpy as np
import pytest
import torch
from fake_models import ArrayReader, BlobDetector, make_image

from detectron2.structures import Boxes, Instances

from midog_d2.inference import TiledPredictor, predict_images
from midog_d2.inference.tta import flip_image, fuse_flipped, unflip_instances


def instances(size_hw, boxes, scores, classes=None):
    inst = Instances(size_hw)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes or [0] * len(scores), dtype=torch.int64)
    return inst


class BlobAndGhost(BlobDetector):
    """BlobDetector plus one detection at a fixed place of its *input* (top left, 0.95): a
    detector that is not flip-equivariant there."""

    def forward(self, batched_inputs):
        outs = super().forward(batched_inputs)
        for out in outs:
            inst = out["instances"]
            ghost = instances(inst.image_size, [[10, 10, 60, 60]], [0.95])
            out["instances"] = Instances.cat([inst, ghost])
        return outs


def test_unflip_puts_boxes_back_where_they_were():
    h, w = 100, 200
    box = [10.0, 20.0, 40.0, 30.0]
    for flip, expected in [
        ("h", [160.0, 20.0, 190.0, 30.0]),
        ("v", [10.0, 70.0, 40.0, 80.0]),
        ("hv", [160.0, 70.0, 190.0, 80.0]),
    ]:
        inst = unflip_instances(instances((h, w), [box], [0.5]), flip)
        assert inst.pred_boxes.tensor[0].tolist() == expected
        # Unflipping twice is the identity.
        back = unflip_instances(inst, flip)
        assert back.pred_boxes.tensor[0].tolist() == box
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert (flip_image(img, "hv") == img[::-1, ::-1]).all()
    assert flip_image(img, "h").flags["C_CONTIGUOUS"]


def test_fusion_averages_over_all_readings_and_keeps_classes_apart():
    size = (100, 100)
    a = instances(size, [[0, 0, 20, 20], [50, 50, 70, 70], [80, 0, 100, 20]], [0.8, 0.9, 0.4])
    # The same first cell 3 px away; the second cell missed; a class-1 detection on the third.
    b = instances(size, [[3, 0, 23, 20], [80, 0, 100, 20]], [0.6, 0.7], classes=[0, 1])
    fused = fuse_flipped([a, b], radius_px=6.25)
    got = sorted(
        zip(fused.scores.tolist(), fused.pred_classes.tolist(), fused.pred_boxes.tensor.tolist())
    )[::-1]
    assert [round(s, 6) for s, _, _ in got] == [0.7, 0.45, 0.35, 0.2]
    # (0.8 + 0.6) / 2 keeps the better reading's box; 0.9 / 2 was missed by one reading;
    # the two detections at (90, 10) differ in class, so neither takes the other.
    assert got[0][2] == [0, 0, 20, 20] and got[1][2] == [50, 50, 70, 70]
    assert {(round(s, 6), c) for s, c, _ in got[2:]} == {(0.35, 1), (0.2, 0)}
    assert fused.scores.tolist() == sorted(fused.scores.tolist(), reverse=True)
    # A reading takes part in a cell once: two close detections of one reading stay two.
    c = instances(size, [[0, 0, 20, 20], [2, 0, 22, 20]], [0.9, 0.5])
    d = instances(size, [[1, 0, 21, 20]], [0.7])
    assert sorted(fuse_flipped([c, d], 6.25).scores.tolist()) == pytest.approx([0.25, 0.8])
    assert len(fuse_flipped([instances(size, [], []), instances(size, [], [])], 6.25)) == 0


def test_predict_images_with_flips_keeps_what_every_reading_finds():
    img = make_image((200, 300), [(60, 150), (220, 40)])
    plain = predict_images(BlobAndGhost().eval(), [img], "BGR", 1)[0]["instances"]
    # The ghost outscores both figures once; the blobs are found alike in every reading.
    assert max(plain.scores.tolist()) == pytest.approx(0.95)
    model = BlobAndGhost().eval()
    out = predict_images(model, [img], "BGR", 1, flips=["h", "v", "hv"], fuse_radius_px=25)
    inst = out[0]["instances"]
    assert len(model.calls) == 4
    scores = inst.scores.tolist()
    b = inst.pred_boxes.tensor
    found = ((b[:, :2] + b[:, 2:]) / 2)[:2].tolist()
    assert scores[:2] == pytest.approx([0.9, 0.9])
    assert sorted(found) == [[60.0, 150.0], [220.0, 40.0]]
    # The ghost lands in four different places of the image: a quarter of its score each.
    assert scores[2:] == pytest.approx([0.95 / 4] * 4)
    # The other outputs are the unflipped reading's.
    assert out[0]["domain_probs"].tolist() == pytest.approx([0.9, 0.1])
    with pytest.raises(ValueError, match="TTA_FLIPS"):
        predict_images(model, [img], "BGR", 1, flips=["x"], fuse_radius_px=25)
    with pytest.raises(ValueError, match="fusion radius"):
        predict_images(model, [img], "BGR", 1, flips=["h"], fuse_radius_px=0)


def test_tiled_predictor_runs_flip_tta_across_tiles():
    img = make_image((700, 900), [(100, 100), (470, 300), (800, 620)])
    args = dict(tile_size=512, overlap=52, batch_size=2, merge_radius_um=6.25, input_format="BGR")
    plain = TiledPredictor(BlobAndGhost().eval(), reader=ArrayReader(img), **args).eval()
    tta = TiledPredictor(
        BlobAndGhost().eval(), reader=ArrayReader(img), flips=["h", "v", "hv"], **args
    ).eval()
    inp = {"file_name": "x.png", "height": 700, "width": 900}
    p = plain([inp])[0]["instances"]
    t = tta([inp])[0]["instances"]
    figures = t[t.scores > 0.5]
    assert len(figures) == 3 and figures.scores.tolist() == pytest.approx([0.9] * 3)
    assert (p.scores > 0.9).sum() >= 1 and (t.scores > 0.9).sum() == 0
    with pytest.raises(ValueError, match="TTA_FLIPS"):
        TiledPredictor(BlobDetector().eval(), flips=["h", "h"], **args)
    with pytest.raises(ValueError, match="MERGE_RADIUS_UM"):
        TiledPredictor(BlobDetector().eval(), flips=["h"], **{**args, "merge_radius_um": 0})
