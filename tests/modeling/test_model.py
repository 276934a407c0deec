"""MultiTaskRetinaNet: losses, gradients, switches, equivalence with RetinaNet, outputs,
checkpoints."""

import copy
import logging

import pytest
import torch
from conftest import (
    CONFIGS,
    DATAGEN_CONFIGS,
    PROJECT_CONFIGS,
    assert_model_matches_config,
    make_cfg,
    make_inputs,
)

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.utils.events import EventStorage

# The development configs need add_datagen_config's keys too:
# tests/datagen/test_datagen_config.py builds them with the same assertions.
ALL_CONFIGS = [p for p in PROJECT_CONFIGS if p not in DATAGEN_CONFIGS]


def train_losses(model, inputs):
    model.train()
    with EventStorage() as storage:
        losses = model(copy.deepcopy(inputs))
    return losses, storage


@pytest.mark.parametrize("config_file", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_builds(config_file):
    assert_model_matches_config(make_cfg(config_file))


def test_ablation_configs_cover_the_papers_table():
    cells = set()
    for f in sorted((CONFIGS / "ablation").glob("*.yaml")):
        cfg = make_cfg(f)
        cells.add(
            (
                cfg.MODEL.MULTITASK.FOREGROUND_HEAD_ON,
                cfg.MODEL.MULTITASK.DOMAIN_HEAD_ON,
                cfg.INPUT.COLOR_JITTER.ENABLED,
            )
        )
    assert len(cells) == 8


def test_base_config_holds_the_papers_settings(cfg):
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA == 0.25
    assert cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA == 2.0
    assert cfg.SOLVER.OPTIMIZER == "ADAM"
    assert cfg.SOLVER.BASE_LR == 1e-5
    assert cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.MODEL.MULTITASK.IN_FEATURE == "p7"
    cj = cfg.INPUT.COLOR_JITTER
    assert (cj.BRIGHTNESS, cj.CONTRAST, cj.SATURATION, cj.HUE) == (0.35, 0.2, 0.1, 0.1)


def test_training_forward_returns_all_losses_finite(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    losses, storage = train_losses(model, make_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_domain", "loss_foreground"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    # Accuracies are logged, not returned as losses (DefaultTrainer sums the dict).
    logged = storage.latest()
    assert "multitask/domain_accuracy" in logged and "multitask/foreground_accuracy" in logged


def test_aux_losses_reach_heads_and_backbone(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    losses, _ = train_losses(model, make_inputs())
    (losses["loss_domain"] + losses["loss_foreground"]).backward()

    def grad_norm(module):
        grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
        return float(sum(grads)) if grads else 0.0

    assert grad_norm(model.domain_head) > 0
    assert grad_norm(model.foreground_head) > 0
    # p7 comes from res5 through FPN's P6/P7 block: both must learn from the heads.
    assert grad_norm(model.backbone.top_block) > 0
    assert grad_norm(model.backbone.bottom_up.res5) > 0
    # ...but the detection head did not take part in these two losses.
    assert grad_norm(model.head) == 0


@pytest.mark.parametrize("tumor_on,fg_on", [(True, False), (False, True), (False, False)])
def test_each_switch_removes_its_head_and_loss(tumor_on, fg_on):
    cfg = make_cfg()
    cfg.merge_from_list(
        ["MODEL.MULTITASK.DOMAIN_HEAD_ON", tumor_on, "MODEL.MULTITASK.FOREGROUND_HEAD_ON", fg_on]
    )
    model = build_model(cfg)
    keys = model.state_dict().keys()
    assert any(k.startswith("domain_head.") for k in keys) == tumor_on
    assert any(k.startswith("foreground_head.") for k in keys) == fg_on
    losses, _ = train_losses(model, make_inputs())
    assert ("loss_domain" in losses) == tumor_on
    assert ("loss_foreground" in losses) == fg_on
    model.eval()
    with torch.no_grad():
        out = model(make_inputs(1))[0]
    assert ("domain_probs" in out) == tumor_on
    assert ("foreground_prob" in out) == fg_on


def test_both_heads_off_is_stock_retinanet():
    opts = [
        "MODEL.MULTITASK.DOMAIN_HEAD_ON",
        False,
        "MODEL.MULTITASK.FOREGROUND_HEAD_ON",
        False,
        "MODEL.RETINANET.SCORE_THRESH_TEST",
        0.0,
    ]
    torch.manual_seed(0)
    ours = build_model(make_cfg(CONFIGS / "Base-MultiTask-RetinaNet.yaml", *opts))
    stock_cfg = make_cfg(CONFIGS / "Base-MultiTask-RetinaNet.yaml", *opts)
    stock_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    stock = build_model(stock_cfg)
    assert type(stock) is RetinaNet
    assert ours.state_dict().keys() == stock.state_dict().keys()
    stock.load_state_dict(ours.state_dict())

    # Mitotic figures only: stock RetinaNet has no notion of auxiliary-only classes.
    inputs = make_inputs(2)
    for x in inputs:
        x["instances"] = x["instances"][x["instances"].gt_classes == 0]
    ours_losses, _ = train_losses(ours, inputs)
    stock_losses, _ = train_losses(stock, inputs)
    assert ours_losses.keys() == stock_losses.keys() == {"loss_cls", "loss_box_reg"}
    for k in ours_losses:
        torch.testing.assert_close(ours_losses[k], stock_losses[k], rtol=0, atol=0)

    ours.eval(), stock.eval()
    with torch.no_grad():
        a = ours(make_inputs(2, seed=1))
        b = stock(make_inputs(2, seed=1))
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys() == {"instances"}
        assert len(ra["instances"]) > 0
        torch.testing.assert_close(
            ra["instances"].pred_boxes.tensor, rb["instances"].pred_boxes.tensor
        )
        torch.testing.assert_close(ra["instances"].scores, rb["instances"].scores)


def test_unknown_domain_labels_are_ignored(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    both = make_inputs(2)
    both[0]["domain_label"] = -1
    only_labelled = [both[1]]
    loss_both, _ = train_losses(model, both)
    loss_one, _ = train_losses(model, only_labelled)
    torch.testing.assert_close(loss_both["loss_domain"], loss_one["loss_domain"])

    none_labelled = make_inputs(2)
    for x in none_labelled:
        x["domain_label"] = -1
    losses, _ = train_losses(model, none_labelled)
    assert losses["loss_domain"].item() == 0.0
    # Still connected to the head, as DDP without find_unused_parameters needs.
    losses["loss_domain"].backward()
    assert all(p.grad is not None for p in model.domain_head.parameters())


def test_out_of_range_domain_label_is_an_error(cfg):
    model = build_model(cfg)
    inputs = make_inputs(1)
    inputs[0]["domain_label"] = len(cfg.MODEL.MULTITASK.DOMAINS)
    with pytest.raises(ValueError, match="domain_label"):
        train_losses(model, inputs)


def test_hard_negatives_feed_foreground_but_not_detection(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    inputs = make_inputs(1)
    hard_negative_only = copy.deepcopy(inputs)
    hard_negative_only[0]["instances"] = inputs[0]["instances"][
        inputs[0]["instances"].gt_classes == 1
    ]
    empty = make_inputs(1, with_boxes=False)
    empty[0]["image"] = inputs[0]["image"]

    assert model._foreground_targets(
        hard_negative_only, [x["instances"] for x in hard_negative_only]
    ).tolist() == [1.0]
    assert model._foreground_targets(empty, [x["instances"] for x in empty]).tolist() == [0.0]
    # Fresh copies: RetinaNet's loss normaliser is a running average across calls.
    hn, _ = train_losses(copy.deepcopy(model), hard_negative_only)
    bg, _ = train_losses(copy.deepcopy(model), empty)
    # The detector sees no object in either patch; only the foreground target differs.
    torch.testing.assert_close(hn["loss_cls"], bg["loss_cls"])
    assert hn["loss_foreground"].item() != pytest.approx(bg["loss_foreground"].item())
    # An explicit `foreground` from the mapper wins over the boxes.
    empty[0]["foreground"] = 1
    assert model._foreground_targets(empty, [x["instances"] for x in empty]).tolist() == [1.0]


def test_inference_returns_instances_and_aux_probabilities(cfg):
    model = build_model(cfg).eval()
    inputs = make_inputs(2)
    inputs[1]["height"], inputs[1]["width"] = 256, 256  # outputs rescale to the requested size
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 2
    for out, size in zip(outputs, [(128, 128), (256, 256)]):
        assert out["instances"].image_size == size
        probs = out["domain_probs"]
        assert probs.shape == (len(cfg.MODEL.MULTITASK.DOMAINS),)
        torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
        assert 0.0 <= float(out["foreground_prob"]) <= 1.0


def test_foreground_gate_scales_scores_and_off_changes_nothing():
    def detections(*opts):
        torch.manual_seed(0)
        model = build_model(make_cfg(CONFIGS / "Base-MultiTask-RetinaNet.yaml",
                                     "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", *opts))  # fmt: skip
        with torch.no_grad():
            return model.eval()(make_inputs(2))

    base = detections()
    off = detections("MODEL.MULTITASK.FOREGROUND_GATE", "False")
    gated = detections("MODEL.MULTITASK.FOREGROUND_GATE", "True")
    for b, o, g in zip(base, off, gated):
        assert len(b["instances"]) > 0
        fields = [(i.pred_boxes.tensor, i.scores, i.pred_classes) for i in
                  (b["instances"], o["instances"])]  # fmt: skip
        assert all(torch.equal(x, y) for x, y in zip(*fields))
        p = float(g["foreground_prob"])
        assert 0.0 < p < 1.0 and p == float(b["foreground_prob"])
        torch.testing.assert_close(g["instances"].scores, b["instances"].scores * p)
        assert torch.equal(g["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
    with pytest.raises(ValueError, match="FOREGROUND_GATE needs the foreground head"):
        detections("MODEL.MULTITASK.FOREGROUND_GATE", "True",
                   "MODEL.MULTITASK.FOREGROUND_HEAD_ON", "False")  # fmt: skip


def test_bad_aux_feature_is_a_clear_error():
    with pytest.raises(ValueError, match="p9.*available"):
        build_model(
            make_cfg(CONFIGS / "Base-MultiTask-RetinaNet.yaml", "MODEL.MULTITASK.IN_FEATURE", "p9")
        )


def test_checkpoint_saves_and_loads(cfg, tmp_path):
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_test")
    torch.manual_seed(1)
    other = build_model(cfg)
    DetectionCheckpointer(other).load(str(tmp_path / "model_test.pth"))
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_checkpoint_with_other_domain_count_loads_all_but_that_head(cfg, tmp_path, caplog):
    torch.manual_seed(0)
    source = build_model(cfg)
    DetectionCheckpointer(source, save_dir=str(tmp_path)).save("six_tumors")
    new_cfg = cfg.clone()
    new_cfg.MODEL.MULTITASK.DOMAINS = ["tumor a", "tumor b", "tumor c"]
    target = build_model(new_cfg)
    before = target.domain_head.predictor.weight.clone()
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(target).load(str(tmp_path / "six_tumors.pth"))
    assert "Skip loading parameter 'domain_head.predictor.weight'" in caplog.text
    assert torch.equal(target.domain_head.predictor.weight, before)
    assert target.domain_head.predictor.out_features == 3
    src = source.state_dict()
    for k, v in target.state_dict().items():
        if not k.startswith("domain_head.predictor."):
            assert torch.equal(v, src[k]), k


def test_folding_batchnorm_keeps_the_detections():
    """Reference R-18 BatchNorm model with running statistics that are not the identity:
    folded for inference, the same detections to float rounding; a training model is refused."""
    import copy

    from midog_d2.inference.fold import fold_batchnorm

    cfg = make_cfg(CONFIGS / "Reference-R18-BN.yaml", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg)
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(model)
    for m in model.modules():  # statistics as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:  # the head's per-level norms carry their affine part elsewhere
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    model.head.cls_score.bias.data.fill_(-1.0)
    model.eval()
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) > 20
    assert not any(isinstance(getattr(m, "norm", None), torch.nn.BatchNorm2d)
                   for m in folded.backbone.modules())  # fmt: skip
    inputs = make_inputs(2, 256)
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        fa, fb = model.backbone(images.tensor), folded.backbone(images.tensor)
        for k in fa:  # every FPN level
            assert torch.allclose(fa[k], fb[k], rtol=1e-4, atol=1e-4), k
        la = model.head([fa[k] for k in model.head_in_features])
        lb = folded.head([fb[k] for k in folded.head_in_features])
        for x, y in zip(la[0] + la[1], lb[0] + lb[1]):  # class logits and box deltas
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-4)
