"""ImageNet weights (torchvision conversion, Detectron2's C2 R-50 pickle), optimizers, set-up
checks."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from conftest import CONFIGS, REPO, make_cfg

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler

from midog_d2.solver import build_optimizer


def _tv_name_to_d2(name: str) -> str:
    """Where a torchvision ResNet tensor must land in our model (written out by hand)."""
    stage_map = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}
    parts = name.split(".")
    if parts[0] in stage_map:
        stage, block, rest = stage_map[parts[0]], parts[1], parts[2:]
        if rest[0] == "downsample":
            sub = "shortcut" if rest[1] == "0" else "shortcut.norm"
            return f"backbone.bottom_up.{stage}.{block}.{sub}.{rest[-1]}"
        layer = rest[0]
        if layer.startswith("bn"):
            return f"backbone.bottom_up.{stage}.{block}.conv{layer[2:]}.norm.{rest[-1]}"
        return f"backbone.bottom_up.{stage}.{block}.{layer}.{rest[-1]}"
    if parts[0] == "bn1":
        return f"backbone.bottom_up.stem.conv1.norm.{parts[-1]}"
    return f"backbone.bottom_up.stem.{name}"


def test_torchvision_resnet50_converts_and_loads(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    # Non-trivial BatchNorm statistics, so a mix-up of mean/var/weight/bias shows.
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    src = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), src)
    dst = tmp_path / "R-50-tv.pkl"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_torchvision_to_d2.py"), str(src), str(dst)],
        check=True,
        capture_output=True,
        text=True,
    )

    cfg = make_cfg(CONFIGS / "R50-torchvision-weights.yaml")
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(dst))
    ours = model.state_dict()
    checked = 0
    for name, tensor in tv.state_dict().items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        target = _tv_name_to_d2(name)
        assert torch.equal(ours[target], tensor), (name, target)
        checked += 1
    assert checked == 265  # every conv and BatchNorm tensor of ResNet-50


def test_converter_rejects_a_non_resnet_file(tmp_path):
    bad = tmp_path / "not_resnet.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, bad)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "convert_torchvision_to_d2.py"),
            str(bad),
            str(tmp_path / "x.pkl"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "not_resnet.pth" in result.stderr and "No ResNet weights" in result.stderr


def _d2_to_c2_name(name: str) -> str:
    """Inverse of Detectron2's C2 renaming, for the blobs of ImageNetPretrained/MSRA/R-50.pkl."""
    name = name.replace("backbone.bottom_up.", "")
    if name.startswith("stem.conv1.norm."):
        return "res_conv1_bn_" + {"weight": "s", "bias": "b"}[name.split(".")[-1]]
    if name == "stem.conv1.weight":
        return "conv1_w"
    stage, block, layer, *rest = name.split(".")
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[
        layer
    ]
    suffix = (
        {"weight": "w"}[rest[0]]
        if rest[0] != "norm"
        else {"weight": "bn_s", "bias": "bn_b"}[rest[1]]
    )
    return f"{stage}_{block}_{branch}_{suffix}"


def test_detectron2_msra_r50_pickle_loads(tmp_path):
    cfg = make_cfg()
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    blobs = {}
    expected = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith("backbone.bottom_up.") or "running_" in name:
            continue  # MSRA's pickle holds folded BatchNorm: scale and bias only
        value = rng.standard_normal(tuple(tensor.shape)).astype(np.float32)
        blobs[_d2_to_c2_name(name)] = value
        expected[name] = value
    blobs["fc1000_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)
    DetectionCheckpointer(model).load(str(path))
    state = model.state_dict()
    for name, value in expected.items():
        assert np.array_equal(state[name].numpy(), value), name
    # ResNet-50: 53 convolutions, each with a folded BatchNorm (scale, bias).
    assert len(expected) == 53 * 3


@pytest.mark.parametrize(
    "name,cls", [("ADAM", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("SGD", torch.optim.SGD)]
)
def test_optimizer_selected_by_config(name, cls):
    cfg = make_cfg(
        CONFIGS / "Base-MultiTask-RetinaNet.yaml", "SOLVER.OPTIMIZER", name, "SOLVER.BASE_LR", 0.001
    )
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, cls)
    assert all(g["lr"] == 0.001 for g in opt.param_groups)
    # Every trainable parameter is optimised exactly once.
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    build_lr_scheduler(cfg, opt)  # Detectron2's schedulers accept it


def test_adam_with_gradient_clipping_clips():
    cfg = make_cfg(
        CONFIGS / "Base-MultiTask-RetinaNet.yaml",
        "SOLVER.CLIP_GRADIENTS.ENABLED",
        True,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
        "norm",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE",
        1.0,
    )
    layer = torch.nn.Linear(4, 1)
    opt = build_optimizer(cfg, layer)
    assert isinstance(opt, torch.optim.Adam)
    layer.weight.grad = torch.full_like(layer.weight, 100.0)
    layer.bias.grad = torch.full_like(layer.bias, 100.0)
    opt.step()
    assert float(layer.weight.grad.norm()) <= 1.0 + 1e-5


def test_unknown_optimizer_is_a_clear_error():
    cfg = make_cfg(CONFIGS / "Base-MultiTask-RetinaNet.yaml", "SOLVER.OPTIMIZER", "LAMB")
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.*LAMB"):
        build_optimizer(cfg, torch.nn.Linear(2, 2))


def test_import_without_detectron2_says_how_to_install():
    code = "import sys; sys.modules['detectron2'] = None; import midog_d2"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: midog_d2 needs Detectron2")
    assert "make venv" in last and "README" in last


def test_collect_env_reports_versions_and_compiled_ops():
    result = subprocess.run(
        [sys.executable, "-m", "midog_d2.collect_env"], capture_output=True, text=True, check=True
    )
    out = result.stdout
    for key in (
        "detectron2",
        "detectron2 compiled ops (_C)",
        "torch",
        "CUDA available",
        "OpenSlide library",
    ):
        assert key in out
    import detectron2

    assert detectron2.__version__ in out
