"""The model declares its extra outputs once (midog_d2.modeling.outputs): a head made up here,
in the test, reaches the model's results, the tiled predictor's (combined over tiles as it
declares), the TorchScript file and the evaluator's files without any product file knowing
it; an output nobody declared is an error, never dropped."""

import json

import numpy as np
import pytest
import torch
from conftest import CONFIGS, make_cfg
from midog_fixtures import write_midog_dataset
from torch import nn

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from midog_d2.data.register import register_midog
from midog_d2.evaluation import MidogEvaluator
from midog_d2.inference import TiledPredictor, predict_images
from midog_d2.inference.torchscript import (
    TorchScriptDetector,
    load_torchscript_meta,
    save_torchscript,
)
from midog_d2.modeling import ExtraOutput

CONFIG = CONFIGS / "dev" / "Demo-CPU-R18.yaml"


class Staining(nn.Module):
    """Made up: three 'stain' logits from the auxiliary feature map's channel means."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def stain_fractions(logits):
    return logits.softmax(dim=1)


STAIN = ExtraOutput("stain_fractions", "stain_head", stain_fractions, combine="mean")
STAIN_PER_TILE = ExtraOutput("stain_per_tile", "stain_tile_head", stain_fractions, "per_tile")


@pytest.fixture(scope="module")
def model():
    cfg = make_cfg(
        CONFIG, "TEST.TILE.SIZE", "256", "TEST.TILE.OVERLAP", "0", "TEST.TILE.PRECISION", "fp32"
    )
    torch.manual_seed(0)
    m = build_model(cfg)
    channels = m.backbone.output_shape()[m.aux_in_feature].channels
    m.add_extra_output(STAIN, Staining(channels))
    m.add_extra_output(STAIN_PER_TILE, Staining(channels))
    return cfg, m.eval()


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_model_returns_what_it_declares(model):
    cfg, m = model
    out = predict_images(m, [rgb(256, 256, 0), rgb(256, 256, 1)], cfg.INPUT.FORMAT)
    names = [o.name for o in m.extra_outputs]
    assert names == ["domain_probs", "foreground_prob", "stain_fractions", "stain_per_tile"]
    for o in out:
        assert o["stain_fractions"].shape == (3,)
        assert float(o["stain_fractions"].sum()) == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(out[0]["stain_fractions"], out[1]["stain_fractions"])
    with pytest.raises(ValueError, match="already declares"):
        m.add_extra_output(STAIN, Staining(4))


def test_the_tiled_predictor_combines_it_as_declared(model, tmp_path):
    cfg, m = model
    image = rgb(256, 512, 2)  # two 256-px tiles side by side, no overlap
    path = tmp_path / "two_tiles.png"
    from PIL import Image

    Image.fromarray(image).save(path)
    res = TiledPredictor(cfg, m).predict_image(
        {"file_name": str(path), "height": 256, "width": 512, "mpp": 0.25}
    )
    assert len(res["tiles"]) == 2
    per_tile = predict_images(m, [image[:, :256], image[:, 256:]], cfg.INPUT.FORMAT)
    want_mean = (per_tile[0]["stain_fractions"] + per_tile[1]["stain_fractions"]) / 2
    torch.testing.assert_close(res["stain_fractions"], want_mean, atol=1e-5, rtol=0)
    want_stack = torch.stack([p["stain_per_tile"] for p in per_tile])
    torch.testing.assert_close(res["stain_per_tile"], want_stack, atol=1e-5, rtol=0)


def test_the_torchscript_file_carries_it(model, tmp_path):
    cfg, m = model
    path = str(tmp_path / "m.ts")
    save_torchscript(m, path, 256, {"input_format": cfg.INPUT.FORMAT})
    meta = load_torchscript_meta(path)
    assert [o["name"] for o in meta["outputs"]][2:] == ["stain_fractions", "stain_per_tile"]
    scripted = TorchScriptDetector(path)
    assert [o.name for o in scripted.extra_outputs] == [o.name for o in m.extra_outputs]
    x = torch.from_numpy(rgb(256, 256, 3)[:, :, ::-1].copy()).permute(2, 0, 1).float()
    with torch.no_grad():
        got, want = scripted([{"image": x}])[0], m([{"image": x}])[0]
    for name in ("stain_fractions", "stain_per_tile", "domain_probs"):
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0)


def test_the_evaluator_writes_it(model, tmp_path):
    cfg, m = model
    data = write_midog_dataset(tmp_path / "data", size=(256, 256))
    name = "extra_outputs_eval"
    register_midog(name, str(data["json_file"]), str(data["image_root"]))
    first = DatasetCatalog.get(name)[0]
    ev = MidogEvaluator(name, cfg, str(tmp_path / "eval"), score_threshold=0.5, distributed=False)
    ev.reset()
    inp = {k: first[k] for k in ("file_name", "image_id", "height", "width")}
    ev.process([dict(inp, mpp=0.25)], [TiledPredictor(cfg, m).predict_image(dict(inp, mpp=0.25))])
    ev.evaluate()
    written = json.loads((tmp_path / "eval" / "midog_extra_outputs.json").read_text())
    (values,) = written.values()
    assert len(values["stain_fractions"]) == 3 and len(values["stain_per_tile"]) == 1


def test_an_undeclared_output_is_an_error(model, tmp_path):
    cfg, m = model

    class Leaky(nn.Module):
        """Returns one more key than the model declares."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.extra_outputs = inner, inner.extra_outputs

        def forward(self, batched_inputs):
            return [dict(o, mystery=torch.zeros(2)) for o in self.inner(batched_inputs)]

    path = tmp_path / "one_tile.png"
    from PIL import Image

    Image.fromarray(rgb(256, 256, 4)).save(path)
    with pytest.raises(ValueError, match=r"one_tile\.png.*\['mystery'\].*does not declare"):
        TiledPredictor(cfg, Leaky(m).eval()).predict_image(
            {"file_name": str(path), "height": 256, "width": 256, "mpp": 0.25}
        )
