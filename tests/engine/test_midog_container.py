"""tools/midog_container.py without Docker: generated ROIs as TIFF and as MHA (SimpleITK), the
challenge's JSON read back as the reference evaluator reads it, millimetres against the
pixels infer_slides.py writes, one ROI per job and a local batch, bad inputs."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from conftest import CONFIGS, save_firing_model

from midog_d2.checkpoint import save_threshold
from midog_d2.fileio.challenge import mha_as_tiff
from midog_d2.fileio.points import parse_points_json

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import infer_slides  # noqa: E402
import midog_container  # noqa: E402

CONFIG = CONFIGS / "dev" / "Demo-CPU-R18.yaml"
SMALL = ["MODEL.DEVICE", "cpu", "TEST.TILE.SIZE", "256"]
MPP = 0.25


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    _, weights = save_firing_model(tmp_path_factory.mktemp("weights"), CONFIG)
    save_threshold(weights, 0.48, dataset="test")  # splits the scores
    return weights


def roi_pixels():
    rng = np.random.default_rng(5)
    return rng.integers(70, 220, (300, 420, 3), dtype=np.uint8)


def write_tiff(path, pixels, mpp=MPP):
    per_cm = 1e4 / mpp
    tifffile.imwrite(path, pixels, photometric="rgb", tile=(256, 256),
                     resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", metadata=None)  # fmt: skip


def write_mha(path, pixels, spacing_mm=MPP / 1000, origin=(0.0, 0.0)):
    image = sitk.GetImageFromArray(pixels, isVector=True)
    image.SetSpacing((spacing_mm, spacing_mm))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def read_as_the_evaluator_does(path):
    """What the challenge's evaluation reads: `points`, the mitotic figures among them, in mm."""
    with open(path) as f:
        data = json.load(f)
    assert set(data) == {"name", "type", "points", "version"}
    assert data["name"] == "Points of interest" and data["type"] == "Multiple points"
    assert data["version"] == {"major": 1, "minor": 0}
    for p in data["points"]:
        assert set(p) == {"name", "point", "probability"} and len(p["point"]) == 3
    return data, [p["point"][:2] for p in data["points"] if p["name"] == "mitotic figure"]


def test_tiff_and_mha_rois_give_the_same_millimetres_as_the_pixels(tmp_path, weights):
    rois = tmp_path / "in"
    rois.mkdir()
    pixels = roi_pixels()
    write_tiff(rois / "a.tif", pixels)
    write_mha(rois / "b.mha", pixels)
    out = tmp_path / "out" / "mitotic-figures.json"
    rc = midog_container.main(
        ["--config-file", str(CONFIG), "--input-dir", str(rois), "--output", str(out),
         "MODEL.WEIGHTS", weights, *SMALL]
    )  # fmt: skip
    assert rc == 0
    # a local batch: one file an ROI beside --output
    a, a_mitoses = read_as_the_evaluator_does(out.parent / "a.mitotic-figures.json")
    b, b_mitoses = read_as_the_evaluator_does(out.parent / "b.mitotic-figures.json")
    assert a_mitoses and np.allclose(a_mitoses, b_mitoses, atol=1e-9)
    assert len(a["points"]) > len(a_mitoses)  # the candidates below the threshold stay in
    assert all((p["probability"] >= 0.48) == (p["name"] == "mitotic figure") for p in a["points"])
    # our own reader takes it as a MIDOG file
    assert len(parse_points_json(b, "b")[0]) == len(b["points"])

    # the same TIFF through infer_slides.py: its CSV's pixels x µm/px are the millimetres
    slides_out = tmp_path / "slides"
    infer_slides.main(
        ["--config-file", str(CONFIG), "--input", str(rois / "a.tif"), "--output", str(slides_out),
         "--no-progress", "MODEL.WEIGHTS", weights, *SMALL, "TEST.TISSUE.ENABLED", "False"]
    )  # fmt: skip
    with open(slides_out / "a.csv", newline="") as f:
        px = [
            (float(r["x"]), float(r["y"]))
            for r in csv.DictReader(f)
            if r["label"] == "mitotic figure"
        ]
    assert np.allclose(np.asarray(px) * MPP / 1000, a_mitoses, atol=0.006 * MPP / 1000)


def test_one_roi_writes_the_challenges_file_and_the_mha_origin_counts(tmp_path, weights):
    rois = tmp_path / "in"
    rois.mkdir()
    write_mha(rois / "only.mha", roi_pixels(), origin=(1.0, 2.0))
    out = tmp_path / "mitotic-figures.json"
    argv = ["--config-file", str(CONFIG), "--input-dir", str(rois), "--output", str(out)]
    assert midog_container.main([*argv, "MODEL.WEIGHTS", weights, *SMALL]) == 0
    _, mitoses = read_as_the_evaluator_does(out)
    assert mitoses and all(x >= 1.0 and y >= 2.0 for x, y in mitoses)
    # SimpleITK's physical points: origin + index x spacing
    _, mpp, to_mm = mha_as_tiff(str(rois / "only.mha"), str(tmp_path))
    assert mpp == pytest.approx(MPP)
    assert np.allclose(to_mm(np.array([[0.0, 0.0], [400.0, 100.0]])), [[1.0, 2.0], [1.1, 2.025]])


def test_bad_inputs_are_named(tmp_path, weights):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [
        "--config-file",
        str(CONFIG),
        "--output",
        str(tmp_path / "o.json"),
        "MODEL.WEIGHTS",
        weights,
        *SMALL,
    ]
    with pytest.raises(SystemExit, match="empty: no ROI in it"):
        midog_container.main(["--input-dir", str(empty), *argv])
    with pytest.raises(SystemExit, match="no such input folder"):
        midog_container.main(["--input-dir", str(tmp_path / "nope"), *argv])
    rois = tmp_path / "in"
    rois.mkdir()
    write_tiff(rois / "good.tif", roi_pixels())
    write_mha(rois / "micrometres.mha", roi_pixels(), spacing_mm=0.25)  # µm taken for mm
    (rois / "broken.mha").write_bytes(b"ObjectType = Image\nNDims = 2\n")
    assert midog_container.main(["--input-dir", str(rois), *argv]) == 1
    assert (tmp_path / "good.mitotic-figures.json").is_file()  # the others are written
    assert not (tmp_path / "broken.mitotic-figures.json").exists()
    with pytest.raises(ValueError, match=r"micrometres\.mha: spacing .* not a microscope's in mm"):
        mha_as_tiff(str(rois / "micrometres.mha"), str(tmp_path))
    with pytest.raises(ValueError, match=r"broken\.mha: SimpleITK cannot read it"):
        mha_as_tiff(str(rois / "broken.mha"), str(tmp_path))
