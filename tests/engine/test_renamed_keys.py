"""The domain head's earlier names: config keys written for them still work (with a
warning), and checkpoints saved with ``tumor_head.*`` parameters still load."""

import pytest
import torch
from conftest import CONFIGS

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from midog_d2 import add_midog_config
from midog_d2.checkpoint import MidogCheckpointer, load_model_weights
from midog_d2.config import RENAMED_KEYS, apply_renamed_keys
from midog_d2.engine import setup_cfg

R18 = CONFIGS / "dev/Demo-CPU-R18.yaml"
OLD = ["human breast cancer", "canine lymphoma"]


def _old_config(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        f"_BASE_: {R18}\n"
        "MODEL:\n"
        "  MULTITASK:\n"
        "    TUMOR_HEAD_ON: True\n"
        "    TUMOR_LOSS_WEIGHT: 0.5\n"
        f"    TUMOR_TYPES: {OLD}\n"
    )
    return path


def test_old_keys_in_a_file_and_on_the_command_line_move_to_the_new_ones(tmp_path):
    with pytest.warns(FutureWarning, match="MODEL.MULTITASK.TUMOR_TYPES is deprecated"):
        cfg = setup_cfg(str(_old_config(tmp_path)), ["MODEL.DEVICE", "cpu"])
    mt = cfg.MODEL.MULTITASK
    assert (mt.DOMAIN_HEAD_ON, mt.DOMAIN_LOSS_WEIGHT, list(mt.DOMAINS)) == (True, 0.5, OLD)
    assert (mt.TUMOR_HEAD_ON, mt.TUMOR_LOSS_WEIGHT, mt.TUMOR_TYPES) == (None, None, None)
    with pytest.warns(FutureWarning, match="TUMOR_HEAD_ON is deprecated: it is now"):
        cfg = setup_cfg(str(R18), ["MODEL.DEVICE", "cpu", "MODEL.MULTITASK.TUMOR_HEAD_ON", "False"])
    assert cfg.MODEL.MULTITASK.DOMAIN_HEAD_ON is False
    model = build_model(cfg)
    assert model.domain_head is None
    # New keys alone: no warning, nothing moved.
    plain = get_cfg()
    add_midog_config(plain)
    assert apply_renamed_keys(plain) == []
    assert set(RENAMED_KEYS.values()) == {
        "MODEL.MULTITASK.DOMAIN_HEAD_ON",
        "MODEL.MULTITASK.DOMAIN_LOSS_WEIGHT",
        "MODEL.MULTITASK.DOMAINS",
    }


def test_an_old_key_left_unmoved_is_an_error_not_ignored(tmp_path):
    cfg = get_cfg()
    add_midog_config(cfg)
    cfg.merge_from_file(str(_old_config(tmp_path)))
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(ValueError, match="TUMOR_HEAD_ON is deprecated .*apply_renamed_keys"):
        build_model(cfg)


def test_a_checkpoint_with_the_old_parameter_names_loads_whole(tmp_path):
    cfg = setup_cfg(str(R18), ["MODEL.DEVICE", "cpu", "MODEL.MULTITASK.DOMAINS", str(OLD)])
    saved = build_model(cfg)
    state = {
        k.replace("domain_head.", "tumor_head.", 1): v.clone()
        for k, v in saved.state_dict().items()
    }
    assert any(k.startswith("tumor_head.") for k in state)
    path = tmp_path / "old.pth"
    torch.save({"model": state, "domains": OLD}, path)
    torch.manual_seed(1)
    model = build_model(cfg)
    load_model_weights(cfg, model, str(path))  # refuses partial loads
    for k, v in saved.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # ... and saved again, under the new names only.
    MidogCheckpointer.from_config(cfg, model, str(tmp_path)).save("again")
    again = torch.load(tmp_path / "again.pth", weights_only=True)["model"]
    assert not any(k.startswith("tumor_head.") for k in again)
    assert any(k.startswith("domain_head.") for k in again)
