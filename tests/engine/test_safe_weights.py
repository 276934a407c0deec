"""Weights, checkpoints and configs load without executing code; evaluation and inference
refuse weights that leave part of the model unloaded."""

import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO

from detectron2.modeling import build_model

from midog_d2.checkpoint import (
    MidogCheckpointer,
    WeightsError,
    load_model_weights,
    load_pickle_weights,
    torchvision_to_d2_checkpoint,
)
from midog_d2.engine import setup_cfg

R18 = CONFIGS / "dev/Demo-CPU-R18.yaml"


class _Payload:
    """Unpickled, this would run ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _model(config=R18, *opts):
    cfg = setup_cfg(str(config), ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def test_a_crafted_pkl_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "weights.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": {"w": _Payload(marker)}, "__author__": "x"}, f)
    cfg, model = _model()
    with pytest.raises(WeightsError, match=r"weights\.pkl: refused to load: .*posix\.system"):
        MidogCheckpointer.from_config(cfg, model).load(str(bad))
    assert not marker.exists()
    # Detectron2's own loader would have run it: the payload is real.
    with open(bad, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_a_crafted_pth_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model_final.pth"
    torch.save({"model": {}, "iteration": _Payload(marker)}, bad)
    cfg, model = _model()
    with pytest.raises(WeightsError, match=r"model_final\.pth: refused to load: it holds objects"):
        MidogCheckpointer.from_config(cfg, model).load(str(bad))
    assert not marker.exists()


def test_a_truncated_pkl_and_a_non_dict_pkl_are_named(tmp_path):
    good = tmp_path / "good.pkl"
    with open(good, "wb") as f:
        pickle.dump({"model": {"a": np.zeros((4, 4), np.float32)}, "__author__": "t"}, f)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(WeightsError, match=r"cut\.pkl: not a readable \.pkl"):
        load_pickle_weights(str(cut))
    listed = tmp_path / "list.pkl"
    with open(listed, "wb") as f:
        pickle.dump([1, 2], f)
    cfg, model = _model()
    with pytest.raises(WeightsError, match=r"list\.pkl: a \.pkl weights file must hold a dict"):
        MidogCheckpointer.from_config(cfg, model).load(str(listed))


def test_detectron2_msra_r50_pkl_layout_loads(tmp_path):
    """The layout of Detectron2's ImageNet R-50.pkl (Caffe2 blob names, numpy arrays, a
    protocol-2 pickle read with latin1; its ``*_momentum`` blobs dropped)."""
    rng = np.random.default_rng(0)
    blobs = {
        "conv1_w": rng.standard_normal((64, 3, 7, 7)).astype(np.float32),
        "res_conv1_bn_s": rng.standard_normal(64).astype(np.float32),
        "res_conv1_bn_b": rng.standard_normal(64).astype(np.float32),
        "res2_0_branch2a_w": rng.standard_normal((64, 64, 1, 1)).astype(np.float32),
        "res2_0_branch2a_bn_s": rng.standard_normal(64).astype(np.float32),
        "res2_0_branch2a_bn_b": rng.standard_normal(64).astype(np.float32),
        "conv1_w_momentum": np.zeros((64, 3, 7, 7), np.float32),
    }
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    cfg, model = _model(CONFIGS / "Base-MultiTask-RetinaNet.yaml", "MODEL.RESNETS.NORM", "FrozenBN")
    MidogCheckpointer.from_config(cfg, model).load(str(path))
    stem = model.backbone.bottom_up.stem.conv1
    assert np.array_equal(stem.weight.detach().numpy(), blobs["conv1_w"])
    assert np.array_equal(stem.norm.weight.detach().numpy(), blobs["res_conv1_bn_s"])
    conv = model.backbone.bottom_up.res2[0].conv1
    assert np.array_equal(conv.weight.detach().numpy(), blobs["res2_0_branch2a_w"])


def test_the_converters_pkl_loads(tmp_path):
    """tools/convert_torchvision_to_d2.py's output: a model-zoo dict, pickled as it does."""
    import torchvision

    torch.manual_seed(1)
    tv = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "R-50-torchvision.pkl"
    with open(path, "wb") as f:
        pickle.dump(torchvision_to_d2_checkpoint(tv), f)
    cfg, model = _model(
        CONFIGS / "Base-MultiTask-RetinaNet.yaml",
        "MODEL.RESNETS.NORM",
        "FrozenBN",
        "MODEL.PIXEL_MEAN",
        "[123.675, 116.28, 103.53]",
        "MODEL.PIXEL_STD",
        "[58.395, 57.12, 57.375]",
        "INPUT.FORMAT",
        "RGB",
    )
    MidogCheckpointer.from_config(cfg, model).load(str(path))
    got = model.backbone.bottom_up.res3[1].conv2.weight.detach()
    assert torch.equal(got, tv["layer2.1.conv2.weight"])


def test_own_checkpoints_load_with_weights_only(tmp_path):
    cfg, model = _model()
    ck = MidogCheckpointer.from_config(cfg, model, str(tmp_path))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ck.checkpointables["optimizer"] = opt
    ck.save("model_0000009", iteration=9)
    cfg2, fresh = _model()
    torch.manual_seed(5)
    for p in fresh.parameters():
        torch.nn.init.normal_(p)
    got = load_model_weights(cfg2, fresh, str(tmp_path / "model_0000009.pth"))
    assert got.last_incompatible.missing_keys == []
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_weights_that_leave_the_model_partly_unloaded_are_refused(tmp_path):
    cfg, model = _model()
    state = OrderedDict(
        (k, v) for k, v in model.state_dict().items() if not k.startswith("head.cls_score")
    )
    state["head.bbox_pred.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with pytest.raises(
        WeightsError,
        match=r"partial\.pth: does not fit the model: 1 of another shape \(head\.bbox_pred"
        r"\.weight\); 2 missing \(head\.cls_score",
    ):
        load_model_weights(cfg, model, str(path))
    load_model_weights(cfg, model, str(path), allow_partial=True)
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS is empty"):
        load_model_weights(cfg, model, "")
    with pytest.raises(FileNotFoundError, match="nothere.pth: no such file"):
        load_model_weights(cfg, model, str(tmp_path / "nothere.pth"))


def _train_net(*args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_eval_only_without_weights_or_with_partial_ones_exits_with_one_sentence(tmp_path):
    base = ["--config-file", str(R18), "--eval-only"]
    out = ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"]
    r = _train_net(*base, *out, cwd=tmp_path)
    assert r.returncode != 0
    assert "error: --eval-only: MODEL.WEIGHTS is empty" in r.stderr
    assert "Traceback" not in r.stderr
    cfg, model = _model()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    path = tmp_path / "backbone_only.pth"
    torch.save({"model": state}, path)
    r = _train_net(*base, *out, "MODEL.WEIGHTS", str(path), cwd=tmp_path)
    assert r.returncode != 0
    assert "backbone_only.pth: does not fit the model" in r.stderr
    assert "--allow-partial-weights" in r.stderr and "Traceback" not in r.stderr


def test_a_yaml_config_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(
        f'_BASE_: "{CONFIGS / "Base-MultiTask-RetinaNet.yaml"}"\n'
        f"OUTPUT_DIR: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(ValueError, match=r"evil\.yaml: refused: it uses a YAML tag"):
        setup_cfg(str(bad))
    assert not marker.exists()
