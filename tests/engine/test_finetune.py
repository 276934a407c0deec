"""Fine-tuning to a new domain: the domain head mapped by name (midog_d2.checkpoint.
MidogCheckpointer), frozen parts, and the whole workflow on generated MIDOG data with a new
tumor type, threshold stored with the model included."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS, REPO, make_cfg, make_inputs
from midog_fixtures import write_midog_dataset

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from midog_d2.checkpoint import MidogCheckpointer, load_threshold, save_threshold
from midog_d2.solver import build_optimizer

R18 = CONFIGS / "dev" / "Demo-CPU-R18.yaml"
ROWS = ("domain_head.predictor.weight", "domain_head.predictor.bias")


def _model(types, seed, *opts):
    cfg = make_cfg(R18, "MODEL.MULTITASK.DOMAINS", str(list(types)), *opts)
    torch.manual_seed(seed)
    return cfg, build_model(cfg)


def test_domain_rows_follow_their_names_and_new_rows_start_fresh(tmp_path):
    cfg, source = _model(["a", "b"], 0)
    MidogCheckpointer.from_config(cfg, source, str(tmp_path)).save("src")
    saved = torch.load(tmp_path / "src.pth", weights_only=True)
    assert saved["domains"] == ["a", "b"]
    cfg2, target = _model(["B", "c", "a"], 1)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    MidogCheckpointer.from_config(cfg2, target).load(str(tmp_path / "src.pth"))
    src, got = source.state_dict(), target.state_dict()
    for key in ROWS:
        assert torch.equal(got[key][0], src[key][1])  # "B" is "b": names match loosely
        assert torch.equal(got[key][2], src[key][0])  # "a"
        assert torch.equal(got[key][1], fresh[key][1])  # "c": new, left as initialised
    for k, v in got.items():
        if k not in ROWS:
            assert torch.equal(v, src[k]), k  # everything else is the checkpoint's


def test_reinit_domain_head_loads_all_but_the_head(tmp_path):
    cfg, source = _model(["a", "b"], 0)
    MidogCheckpointer.from_config(cfg, source, str(tmp_path)).save("src")
    cfg2, target = _model(["a", "b"], 1, "MODEL.MULTITASK.REINIT_DOMAIN_HEAD", "True")
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    incompatible = MidogCheckpointer.from_config(cfg2, target)._load_model(
        torch.load(tmp_path / "src.pth", weights_only=True)
    )
    assert incompatible.missing_keys == []
    for k, v in target.state_dict().items():
        want = fresh[k] if k.startswith("domain_head.") else source.state_dict()[k]
        assert torch.equal(v, want), k


def test_a_checkpoint_without_domain_names_loads_as_detectron2_loads_it(tmp_path):
    cfg, source = _model(["a", "b"], 0)
    DetectionCheckpointer(source, str(tmp_path)).save("plain")
    cfg2, target = _model(["x", "y"], 1)
    MidogCheckpointer.from_config(cfg2, target).load(str(tmp_path / "plain.pth"))
    for k, v in target.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k  # rows in order: same shape


@pytest.mark.parametrize(
    "opts, frozen, trained",
    [
        (("MODEL.BACKBONE.FREEZE_AT", "5"), ("backbone.bottom_up.",), ("backbone.fpn_", "head.")),
        (
            ("MODEL.BACKBONE.FREEZE_AT", "5", "MODEL.FPN.FREEZE", "True"),
            ("backbone.",),
            ("head.", "domain_head.", "foreground_head."),
        ),
    ],
)
def test_frozen_parameters_do_not_change_in_a_step(opts, frozen, trained):
    cfg, model = _model(["a", "b"], 0, *opts)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = build_optimizer(cfg, model)
    model.train()
    with EventStorage():
        losses = model(make_inputs(2, 128))
    sum(losses.values()).backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert any(k.startswith(frozen) for k in before)
    for k, v in after.items():
        if k.startswith(frozen):
            assert not v.requires_grad and torch.equal(v, before[k]), k
    changed = [k for k in after if k.startswith(trained) and not torch.equal(after[k], before[k])]
    assert changed, f"nothing under {trained} was trained"


def _train_net(*args, cwd):
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _tool(name, *args, cwd):
    cmd = [sys.executable, str(REPO / "tools" / name), *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_finetune_to_a_new_tumor_type_end_to_end(tmp_path):
    """Source: breast cancer only, a one-type domain head. Fine-tuned: the neuroendocrine
    tumor's images only, two types, ResNet frozen. Then the threshold is picked on the new
    type, stored with the weights, and used by --eval-only without a flag."""
    domains = (
        ("human breast cancer", "Hamamatsu XR", "train", 1),
        ("human neuroendocrine tumor", "Hamamatsu XR", "train", 1),
        ("human neuroendocrine tumor", "Aperio CS2", "test", 1),
    )
    data = write_midog_dataset(tmp_path / "data", domains, seed=5)
    common = [
        "MODEL.DEVICE", "cpu",
        "DATASETS.MIDOG.JSON_FILE", str(data["json_file"]),
        "DATASETS.MIDOG.IMAGE_ROOT", str(data["image_root"]),
        "DATASETS.MIDOG.CSV_FILE", str(data["csv_file"]),
        "DATASETS.MIDOG.SPLIT", "csv",
        "DATASETS.MIDOG.VAL_FRACTION", "0.0",
        "DATASETS.TRAIN", "('midog_train',)",
        "DATASETS.TEST", "('midog_test',)",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "2",
        "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()",
        "INPUT.PATCH.SIZE", "128",
        "TEST.TILE.SIZE", "256",
        "TEST.EVAL_PERIOD", "0",
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
        "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip
    src_dir, ft_dir = tmp_path / "source", tmp_path / "finetuned"
    _train_net(
        "--config-file", str(R18), *common,
        "DATASETS.MIDOG.TUMOR_FILTER", "['human breast cancer']",
        "MODEL.MULTITASK.DOMAINS", "['human breast cancer']",
        "DATASETS.TEST", "()",  # the test image is of the new type
        "OUTPUT_DIR", str(src_dir),
        cwd=tmp_path,
    )  # fmt: skip
    source = torch.load(src_dir / "model_final.pth", weights_only=True)
    assert source["domains"] == ["human breast cancer"]
    finetune = CONFIGS / "dev" / "finetune" / "Demo-NewTumor-CPU-R18.yaml"
    new_types = "['human breast cancer', 'human neuroendocrine tumor']"
    ft_opts = [
        *common,
        "DATASETS.MIDOG.TUMOR_FILTER", "['human neuroendocrine tumor']",
        "MODEL.MULTITASK.DOMAINS", new_types,
        "OUTPUT_DIR", str(ft_dir),
    ]  # fmt: skip
    _train_net(
        "--config-file", str(finetune), *ft_opts, "MODEL.WEIGHTS", str(src_dir / "model_final.pth"),
        cwd=tmp_path,
    )  # fmt: skip
    tuned = torch.load(ft_dir / "model_final.pth", weights_only=True)
    assert tuned["domains"] == ["human breast cancer", "human neuroendocrine tumor"]
    src, got = source["model"], tuned["model"]
    for k in ROWS:
        assert got[k].shape[0] == 2 and src[k].shape[0] == 1  # the new row exists
    # ResNet frozen (FREEZE_AT 5): equal to the source's; the detection head trained
    for k in got:
        if k.startswith("backbone.bottom_up."):
            assert torch.equal(got[k], src[k]), k
    assert any(not torch.equal(got[k], src[k]) for k in got if k.startswith("head."))

    weights = ft_dir / "model_final.pth"
    out = _tool(
        "calibrate_threshold.py", "--config-file", str(finetune), *ft_opts,
        "MODEL.WEIGHTS", str(weights), cwd=tmp_path,
    )  # fmt: skip
    stored = load_threshold(str(weights))
    assert stored is not None and json.loads(out.stdout.splitlines()[-1])["threshold"] == (
        stored["threshold"]
    )
    # At a stated density the stored threshold is the evaluator's argmax of the expected F1
    # there (tests/evaluation/test_prevalence.py checks that argmax by brute force); the
    # training images, which hold figures, stand in for a validation split here.
    _tool(
        "calibrate_threshold.py", "--config-file", str(finetune), "--dataset", "midog_train",
        "--output-dir", str(tmp_path / "calib"), *ft_opts, "TEST.MIDOG.OPERATING_DENSITY", "4.4",
        "MODEL.WEIGHTS", str(weights), cwd=tmp_path,
    )  # fmt: skip
    at_density = load_threshold(str(weights))
    full = json.loads((tmp_path / "calib" / "midog_metrics.json").read_text())
    assert full["num_gt"] > 0 and full["density"] == 4.4 and at_density["density"] == 4.4
    assert at_density["threshold"] == full["density_threshold"]
    assert at_density["best_f1_threshold"] == full["best_threshold"]
    assert "4.4 figures/mm²" in at_density["rule"]
    save_threshold(str(weights), stored["threshold"], dataset="restored for the steps below")
    metrics = ft_dir / "inference" / "midog_test" / "midog_metrics.json"
    _train_net(
        "--config-file", str(finetune), "--eval-only", *ft_opts, "MODEL.WEIGHTS", str(weights),
        cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(metrics.read_text())["threshold"] == stored["threshold"]
    points = json.loads((metrics.parent / "midog_points.json").read_text())
    for image in points.values():
        for p in image["points"]:
            mitotic = p["probability"] >= stored["threshold"]
            assert (p["name"] == "mitotic figure") == mitotic
    # a flag overrides it
    _train_net(
        "--config-file", str(finetune), "--eval-only", *ft_opts, "MODEL.WEIGHTS", str(weights),
        "TEST.MIDOG.SCORE_THRESHOLD", "0.01", cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(metrics.read_text())["threshold"] == 0.01
