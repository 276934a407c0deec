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
from conftest import CONFIGS, save_firing_model
from PIL import Image

from midog_d2.checkpoint import save_threshold
from midog_d2.engine import setup_cfg
from midog_d2.jobs.slide_job import MARKER_SUFFIX, run_binding, slide_outputs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import infer_slides  # noqa: E402

CONFIG = CONFIGS / "dev" / "Demo-CPU-R18.yaml"
SMALL = ["MODEL.DEVICE", "cpu", "TEST.TILE.SIZE", "256", "TEST.TISSUE.THUMBNAIL_SIZE", "256"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A Demo-config model with random weights whose classifier fires, saved as Detectron2
    saves checkpoints."""
    return save_firing_model(tmp_path_factory.mktemp("weights"), CONFIG)[1]


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


def check_review_pages(out, rows):
    """Each finished slide's page opens from disk: every image is inlined (a data URI that
    decodes), its numbers are summary.csv's, its gallery holds every detection at or above
    the threshold; index.html links every finished slide's page and no failed one's."""
    import base64
    import re

    import cv2

    index = (out / "index.html").read_text()
    for name, r in rows.items():
        stem = name.rsplit(".", 1)[0]
        if r["status"] == "error":
            assert f'href="{stem}.html"' not in index and name in index
            continue
        assert f'href="{stem}.html"' in index
        page = (out / f"{stem}.html").read_text()
        sources = re.findall(r'<img src="([^"]+)"', page) + re.findall(
            r'<image href="([^"]+)"', page
        )
        assert len(sources) >= 1 + int(r["count"])
        for src in sources:
            assert src.startswith("data:image/")  # nothing outside the page
            pixels = cv2.imdecode(
                np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), 1
            )
            assert pixels is not None and pixels.size
        fields = dict(re.findall(r'data-field="([a-z_0-9]+)">([^<]*)<', page))
        assert int(fields["count"]) == int(r["count"])
        for key in ("count_per_mm2", "tissue_mm2", "mpp", "threshold"):
            assert float(fields[key]) == pytest.approx(float(r[key]), rel=5e-3), key
        assert page.count('<figure id="d') == int(r["count"]) + min(
            24, int(r["candidates"]) - int(r["count"])
        )
        assert page.count("<circle ") == int(r["count"])  # a ring a detection, linked


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
    console = capsys.readouterr()
    assert "broken.svs" in console.err
    # the corrupt slide is one line on the console, its traceback in the log only
    (line,) = [x for x in console.out.splitlines() if "broken.svs: failed" in x]
    assert "Traceback" not in console.out and "Traceback" in (out / "log.txt").read_text()
    rows = read_summary(out)
    assert set(rows) == {"roi.tif", "tile.png", "broken.svs"}
    assert rows["broken.svs"]["status"] == "error"
    assert "broken.svs" in rows["broken.svs"]["message"]
    for name in ("roi.tif", "tile.png"):
        r = rows[name]
        assert r["status"] == "done" and float(r["threshold"]) == pytest.approx(0.3)
        stem = name.rsplit(".", 1)[0]
        for suffix in list(slide_outputs(name).values()) + [MARKER_SUFFIX]:
            assert (out / f"{stem}{suffix}").stat().st_size > 0
        points = json.loads((out / f"{stem}.midog.json").read_text())["points"]
        above = sum(p["name"] == "mitotic figure" for p in points)
        assert above == int(r["count"]) and sum(p["probability"] >= 0.3 for p in points) == above
        assert float(r["count_per_mm2"]) == pytest.approx(
            int(r["count"]) / float(r["tissue_mm2"]), rel=1e-4
        )
    # the PNG has no µm/px: the fallback, said in the log and in the summary; ASAP cannot
    # open a PNG, so no ASAP XML for it, and the summary says that too
    log = (out / "log.txt").read_text()
    assert (
        "no resolution metadata" in log
        and "ASSUMED the fallback 0.25" in log
        and "stored with" in log
    )
    assert (rows["roi.tif"]["mpp_source"], rows["tile.png"]["mpp_source"]) == (
        "metadata",
        "fallback",
    )
    assert "ASSUMED 0.25" in rows["tile.png"]["message"]
    assert not (out / "tile.asap.xml").exists() and (out / "roi.asap.xml").is_file()
    assert "no ASAP XML: ASAP cannot open .png" in rows["tile.png"]["message"]
    assert "ASSUMED" not in rows["roi.tif"]["message"]
    page = (out / "tile.html").read_text()  # each note whole, in a paragraph of its own
    assert "(DATASETS.MIDOG.FALLBACK_MPP; --mpp sets it), so every mm and mm² is too</p>" in page
    # Images far smaller than 10 HPF: the hotspot window is the image, and the summary
    # says so with the window's real area; its density is over the tissue in it.
    r = rows["roi.tif"]
    area, tissue = float(r["hotspot_area_mm2"]), float(r["hotspot_tissue_mm2"])
    assert area == pytest.approx(420 * 300 * 0.25**2 / 1e6, rel=1e-6)
    assert 0 < tissue < area and f"{area:.3g} mm² ({tissue:.3g} mm² of tissue)" in r["message"]
    assert float(r["hotspot_per_mm2"]) == pytest.approx(int(r["hotspot_count"]) / tissue, rel=1e-4)
    check_review_pages(out, rows)

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


def test_the_output_folder_may_be_the_input_folder(tmp_path, weights, slides):
    """Rerun into the folder it reads: its overlays and other outputs are not slides."""
    folder = tmp_path / "both"
    folder.mkdir()
    for name in ("roi.tif", "tile.png"):
        (folder / name).write_bytes((slides / name).read_bytes())
    argv = ["--config-file", CONFIG, "--input", folder, "--output", folder, "--no-progress"]
    assert run_tool(*argv, "MODEL.WEIGHTS", weights, *SMALL) == 0
    assert (folder / "tile.overlay.png").is_file()
    assert run_tool(*argv, "MODEL.WEIGHTS", weights, *SMALL) == 0
    assert sorted(read_summary(folder)) == ["roi.tif", "tile.png"]
    with pytest.raises(SystemExit, match="an output of tools/infer_slides.py, not a slide"):
        run_tool(*argv[:3], folder / "tile.overlay.png", *argv[4:], "MODEL.WEIGHTS", weights)


def test_a_rerun_writes_the_same_geojson_ids_and_qupaths_frame_follows_the_bounds(
    tmp_path, weights, slides, monkeypatch
):
    """Ids from the slide's and the weights' SHA-256 and the point: a redone slide's GeoJSON
    is byte for byte the first one's. A slide that declares openslide.bounds is shown by
    QuPath from the bounds' corner: the GeoJSON is shifted by it, the CSV is not."""
    argv = ["--config-file", CONFIG, "--input", slides / "roi.tif", "--no-progress"]
    argv += ["MODEL.WEIGHTS", weights, *SMALL, "--threshold", "0.2"]  # an option at the end
    assert run_tool(*argv, "--output", tmp_path / "a") == 0
    assert run_tool(*argv, "--output", tmp_path / "b") == 0
    a = (tmp_path / "a" / "roi.geojson").read_bytes()
    assert a == (tmp_path / "b" / "roi.geojson").read_bytes()
    features = json.loads(a)["features"]
    assert features and len({f["id"] for f in features}) == len(features)

    import midog_d2.jobs.slide_outputs as slides_mod

    monkeypatch.setattr(slides_mod, "slide_bounds", lambda path: (100, 40, 300, 200))
    assert run_tool(*argv, "--output", tmp_path / "c") == 0
    shifted = json.loads((tmp_path / "c" / "roi.geojson").read_text())
    with open(tmp_path / "c" / "roi.csv", newline="") as f:
        csv_xy = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(f)]
    assert [f["geometry"]["coordinates"] for f in shifted["features"]] == [
        pytest.approx([x - 100, y - 40], abs=0.006) for x, y in csv_xy  # CSV: 2 decimals
    ]
    assert "x - 100, y - 40" in shifted["midog_d2"]["frame"]


def test_mpp_option_sets_the_units_of_every_slide(tmp_path, weights, slides):
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--input", slides / "roi.tif", slides / "tile.png"]
    assert run_tool(*argv, "--output", out, "--mpp", 0.5, "MODEL.WEIGHTS", weights, *SMALL) == 0
    rows = read_summary(out)
    for r in rows.values():
        assert (float(r["mpp"]), r["mpp_source"]) == (0.5, "option") and "ASSUMED" not in r[
            "message"
        ]
    # the tiled TIFF says 0.25: analysed at 0.5 as asked, and the log says it disagrees
    assert (
        "its metadata says 0.25 µm/px; analysed at the given 0.5" in (out / "log.txt").read_text()
    )
    with pytest.raises(SystemExit, match="--mpp must be"):
        run_tool(*argv, "--output", out, "--mpp", 300, "MODEL.WEIGHTS", weights, *SMALL)


def test_options_after_the_overrides_and_bad_override_lists(tmp_path, weights, slides, capsys):
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--input", slides / "roi.tif", "--output", out]
    assert run_tool(*argv, "MODEL.WEIGHTS", weights, *SMALL, "--no-progress") == 0
    with pytest.raises(SystemExit, match="KEY VALUE pairs, got an odd number"):
        run_tool(*argv, "MODEL.WEIGHTS", weights, "MODEL.DEVICE")
    with pytest.raises(SystemExit) as e:
        run_tool(*argv, "MODEL.WEIGHTS", weights, "--frobnicate")
    assert e.value.code == 2 and "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_outputs_are_bound_to_the_precision_auto_resolves_to_on_the_device():
    """A job resumed where "auto" means another precision redoes its slides."""
    cpu = setup_cfg(str(CONFIG), ["MODEL.DEVICE", "cpu", "TEST.TILE.PRECISION", "auto"])
    gpu = setup_cfg(str(CONFIG), ["MODEL.DEVICE", "cuda", "TEST.TILE.PRECISION", "auto"])
    a, b = run_binding(cpu, 0.5, "w"), run_binding(gpu, 0.5, "w")
    assert a["options_sha256"] == b["options_sha256"]  # the device is not an option...
    assert (a["device"], b["device"]) == ("cpu", "cuda") and a != b  # ...but it is bound
    assert a["precision"] in ("fp32", "bf16", "fp16")


CHROMIUM = ("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync")  # fmt: skip


@pytest.mark.slow
def test_review_pages_in_a_real_browser(tmp_path, weights, slides):
    """Debian's Chromium, headless (`make test-slow` installs it): each page loads from disk
    with every image decoded, and its numbers as rendered are summary.csv's; the
    screenshot is written beside the pages for a person to look at."""
    import re
    import shutil

    if shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed: `make test-slow` installs Debian's package")
    out = tmp_path / "out"
    run_tool(
        "--config-file", CONFIG, "--input", slides, "--output", out, "--no-progress",
        "--threshold", "0.3", "MODEL.WEIGHTS", weights, *SMALL,
    )  # fmt: skip
    rows = read_summary(out)
    profile = ["--user-data-dir=" + str(tmp_path / "chrome")]
    for page in ["index"] + [n.rsplit(".", 1)[0] for n, r in rows.items() if r["status"] == "done"]:
        url = (out / f"{page}.html").as_uri()
        dom = subprocess.run(
            [*CHROMIUM, *profile, "--virtual-time-budget=5000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        if page == "index":
            assert all(f'data-slide="{n}"' in dom for n in rows)
            continue
        body = re.search(r"<body([^>]*)>", dom).group(1)
        ok, bad = (
            int(re.search(f'data-images-{k}="(\\d+)"', body).group(1)) for k in ("ok", "bad")
        )
        (r,) = [r for n, r in rows.items() if n.startswith(page + ".")]
        assert bad == 0 and ok >= 1 + int(r["count"])
        assert re.search(r'data-field="count">(\d+)<', dom).group(1) == r["count"]
        shot = tmp_path / f"{page}.png"
        subprocess.run(
            [*CHROMIUM, *profile, "--window-size=1200,1600", f"--screenshot={shot}", url],
            capture_output=True, timeout=120,
        )  # fmt: skip
        assert shot.stat().st_size > 10_000
        # the check itself: a page with one image broken says so
        broken = tmp_path / f"{page}.broken.html"
        html = (out / f"{page}.html").read_text()
        broken.write_text(html.replace("data:image/jpeg;base64,", "data:image/jpeg;base64,AAAA", 1))
        dom = subprocess.run(
            [*CHROMIUM, *profile, "--virtual-time-budget=5000", "--dump-dom", broken.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        assert 'data-images-bad="1"' in dom and "1 image(s) of this page did not load" in dom


def test_the_jobs_time_left_counts_the_tiles_left_and_the_slides_not_started(monkeypatch):
    import midog_d2.jobs.slide_progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    job = progress.JobProgress(3)
    assert np.isnan(job.eta_s())
    job.slide_started(10)
    clock[0] += 5.0
    job.tiles(5)  # 1 s a tile: 5 left here, then 2 slides of 10 tiles (this one's size)
    assert job.eta_s() == pytest.approx(5 + 20)
    clock[0] += 5.0
    job.tiles(5)
    job.slide_done()
    job.slide_started(30)  # the mean of 10 and 30 tiles for the last slide
    assert job.eta_s() == pytest.approx(30 + 20)
    assert progress.fmt_eta(3725) == "1:02:05" and progress.fmt_eta(65) == "1:05"


def test_without_a_config_the_shipped_model_runs_and_says_so(tmp_path, slides, capsys):
    from midog_d2.checkpoint import REFERENCE_WEIGHTS, load_threshold

    out = tmp_path / "out"
    rc = run_tool(
        "--input", slides / "roi.tif", "--output", out, "--no-progress",
        "MODEL.DEVICE", "cpu", "TEST.TISSUE.THUMBNAIL_SIZE", "256",
    )  # fmt: skip
    assert rc == 0
    assert f"running the shipped reference model {REFERENCE_WEIGHTS}" in capsys.readouterr().err
    assert f"the shipped reference model {REFERENCE_WEIGHTS}" in (out / "log.txt").read_text()
    row = read_summary(out)["roi.tif"]
    assert row["status"] == "done"
    assert float(row["threshold"]) == pytest.approx(load_threshold(REFERENCE_WEIGHTS)["threshold"])
    with pytest.raises(SystemExit, match="needs the --config-file"):
        run_tool("--input", slides, "--output", tmp_path / "o", "--exported", tmp_path / "x.pt")
