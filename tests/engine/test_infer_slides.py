"""tools/infer_slides.py end to end: a real (small, random) model loaded from a checkpoint,
real files, the stored threshold, a corrupt slide, the summary, the log, resume, and two CPU
processes under Detectron2's launch."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import CONFIGS, make_cfg
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from midog_d2.checkpoint import save_threshold
from midog_d2.engine.slides import MARKER_SUFFIX, OUTPUT_SUFFIXES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import infer_slides  # noqa: E402

CONFIG = CONFIGS / "dev" / "Demo-CPU-R18.yaml"
SMALL = ["MODEL.DEVICE", "cpu", "TEST.TILE.SIZE", "256", "TEST.TISSUE.THUMBNAIL_SIZE", "256"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A Demo-config model with random weights whose classifier fires, saved as Detectron2
    saves checkpoints."""
    folder = tmp_path_factory.mktemp("weights")
    cfg = make_cfg(CONFIG, "MODEL.DEVICE", "cpu")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.head.cls_score.bias.fill_(-1.0)
    DetectionCheckpointer(model, str(folder)).save("model")
    return str(folder / "model.pth")


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two good slides (tiled TIFF with µm/px, PNG) and a corrupt one."""
    folder = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(0)
    img = np.full((300, 420, 3), 240, np.uint8)
    img[40:260, 40:380] = rng.integers(90, 200, (220, 340, 3))
    tifffile.imwrite(
        folder / "roi.tif",
        img,
        photometric="rgb",
        tile=(256, 256),
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    Image.fromarray(img[:, ::-1].copy()).save(folder / "tile.png")
    (folder / "broken.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    return folder


def run_tool(*argv):
    return infer_slides.main([str(a) for a in argv])


def read_summary(out):
    with open(Path(out) / "summary.csv", newline="") as f:
        return {os.path.basename(r["slide"]): r for r in csv.DictReader(f)}


def test_a_folder_of_slides_with_the_stored_threshold_and_a_corrupt_one(
    tmp_path, weights, slides, capsys
):
    save_threshold(weights, 0.3, dataset="test")
    out = tmp_path / "out"
    rc = run_tool(
        "--config-file", CONFIG, "--input", slides, "--output", out, "--no-progress",
        "MODEL.WEIGHTS", weights, *SMALL,
    )  # fmt: skip
    assert rc == 1  # a slide failed
    assert "broken.svs" in capsys.readouterr().err
    rows = read_summary(out)
    assert set(rows) == {"roi.tif", "tile.png", "broken.svs"}
    assert rows["broken.svs"]["status"] == "error"
    assert "broken.svs" in rows["broken.svs"]["message"]
    for name in ("roi.tif", "tile.png"):
        r = rows[name]
        assert r["status"] == "done" and float(r["threshold"]) == pytest.approx(0.3)
        stem = name.rsplit(".", 1)[0]
        for suffix in list(OUTPUT_SUFFIXES.values()) + [MARKER_SUFFIX]:
            assert (out / f"{stem}{suffix}").stat().st_size > 0
        points = json.loads((out / f"{stem}.midog.json").read_text())["points"]
        above = sum(p["name"] == "mitotic figure" for p in points)
        assert above == int(r["count"]) and sum(p["probability"] >= 0.3 for p in points) == above
        assert float(r["count_per_mm2"]) == pytest.approx(
            int(r["count"]) / float(r["tissue_mm2"]), rel=1e-4
        )
    # the PNG has no µm/px: the fallback, logged
    log = (out / "log.txt").read_text()
    assert "no resolution metadata" in log and "stored with" in log

    # a rerun does only what failed; --threshold overrides the stored one and redoes all
    rc = run_tool(
        "--config-file", CONFIG, "--input", slides, "--output", out, "--no-progress",
        "MODEL.WEIGHTS", weights, *SMALL,
    )  # fmt: skip
    rows = read_summary(out)
    assert [rows[n]["status"] for n in ("roi.tif", "tile.png")] == ["skipped", "skipped"]
    rc = run_tool(
        "--config-file", CONFIG, "--input", slides / "roi.tif", "--output", out,
        "--threshold", 0.9, "--no-progress", "MODEL.WEIGHTS", weights, *SMALL,
    )  # fmt: skip
    assert rc == 0
    (row,) = read_summary(out).values()
    assert row["status"] == "done" and float(row["threshold"]) == 0.9


def test_two_cpu_processes_share_the_slides_and_write_one_summary(tmp_path, weights, slides):
    out = tmp_path / "out"
    rc = run_tool(
        "--config-file", CONFIG, "--input", slides / "roi.tif", slides / "tile.png",
        "--output", out, "--num-gpus", 2, "--no-progress", "MODEL.WEIGHTS", weights, *SMALL,
    )  # fmt: skip
    assert rc == 0
    rows = read_summary(out)
    assert [r["status"] for r in rows.values()] == ["done", "done"]
    assert (out / "log.txt").is_file() and (out / "log.txt.rank1").is_file()
    # each rank did one slide
    assert "roi.tif" in (out / "log.txt").read_text()
    assert "tile.png" in (out / "log.txt.rank1").read_text()


def test_an_output_that_is_a_file_is_one_sentence(tmp_path, slides, weights):
    (tmp_path / "o").write_text("x")
    with pytest.raises(SystemExit, match="exists and is not a folder"):
        run_tool(
            "--config-file", CONFIG, "--input", slides, "--output", tmp_path / "o",
            "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
        )  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input", "{slides}/none.svs"], "no such file or folder"),
        (["--input", "{slides}"], "MODEL.WEIGHTS is empty"),
        (["--input", "{slides}", "--threshold", "1.5"], "--threshold must be in"),
        (["--input", "{slides}", "MODEL.WEIGHTS", "{slides}/w.pth"], "is not a file"),
    ],
)
def test_usage_errors_are_one_sentence(tmp_path, slides, weights, argv, message):
    argv = [a.format(slides=slides) for a in argv]
    if "MODEL.WEIGHTS" not in argv and "none.svs" in argv[1]:
        argv += ["MODEL.WEIGHTS", weights]
    with pytest.raises(SystemExit, match=message):
        run_tool("--config-file", CONFIG, "--output", tmp_path / "o", *argv, "MODEL.DEVICE", "cpu")


def test_killed_mid_way_a_rerun_loses_at_most_the_slide_in_progress(tmp_path, weights):
    """SIGKILL once the first slide's marker exists: no output of the slide in progress
    looks complete, and the rerun does only the slides without a marker."""
    folder = tmp_path / "slides"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(4):
        img = rng.integers(90, 200, (600, 700, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"s{k}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "infer_slides.py"), "--config-file", str(CONFIG)]
    cmd += ["--input", str(folder), "--output", str(out), "--no-progress"]
    cmd += ["MODEL.WEIGHTS", weights, *SMALL]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / f"s0{MARKER_SUFFIX}").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    markers = sorted(p.name for p in out.glob(f"*{MARKER_SUFFIX}"))
    assert markers and len(markers) < 4
    # no half-written file under a final name; temporaries only under hidden names
    for p in out.iterdir():
        if p.name.startswith("."):
            assert p.name.endswith(".tmp")
    rc = run_tool(
        "--config-file", CONFIG, "--input", folder, "--output", out, "--no-progress",
        "MODEL.WEIGHTS", weights, *SMALL,
    )  # fmt: skip
    assert rc == 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    rows = read_summary(out)
    done_before = {m[: -len(MARKER_SUFFIX)] + ".png" for m in markers}
    for name, r in rows.items():
        assert r["status"] == ("skipped" if name in done_before else "done"), name
    assert len(rows) == 4
