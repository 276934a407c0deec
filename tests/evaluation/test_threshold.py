"""The operating threshold stored beside the weights (midog_d2.checkpoint): bound to the
weights' bytes, resolved config > stored > default, and refused when malformed."""

import json
import logging
from pathlib import Path

import pytest
from conftest import make_cfg

from midog_d2.checkpoint import (
    file_sha256,
    load_threshold,
    resolve_score_threshold,
    save_threshold,
    threshold_file,
)
from midog_d2.constants import DEFAULT_SCORE_THRESHOLD


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"some weights")
    return path


def test_round_trip_and_binding_to_the_weights_bytes(weights, caplog):
    path = save_threshold(str(weights), 0.63, dataset="midog_val", best_f1=0.71)
    assert path == threshold_file(str(weights)) and path.endswith(".pth.threshold.json")
    record = load_threshold(str(weights))
    assert record["threshold"] == 0.63 and record["dataset"] == "midog_val"
    assert record["best_f1"] == 0.71
    weights.write_bytes(b"other weights")  # retrained in place: the record no longer applies
    with caplog.at_level(logging.WARNING):
        assert load_threshold(str(weights)) is None
    assert "other weights" in caplog.text and str(weights) in caplog.text


def test_resolution_order_config_then_stored_then_default(weights):
    cfg = make_cfg()
    cfg.MODEL.WEIGHTS = str(weights)
    assert cfg.TEST.MIDOG.SCORE_THRESHOLD == -1.0  # the default: take what the weights carry
    value, source = resolve_score_threshold(cfg)
    assert value == DEFAULT_SCORE_THRESHOLD and "default" in source
    save_threshold(str(weights), 0.42)
    assert resolve_score_threshold(cfg) == (0.42, f"stored with {weights}")
    cfg.TEST.MIDOG.SCORE_THRESHOLD = 0.3
    assert resolve_score_threshold(cfg)[0] == 0.3
    cfg.TEST.MIDOG.SCORE_THRESHOLD = -1.0
    cfg.MODEL.WEIGHTS = ""
    assert resolve_score_threshold(cfg)[0] == DEFAULT_SCORE_THRESHOLD


def test_malformed_records_and_values_are_refused(weights):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_threshold(str(weights), 1.5)
    with pytest.raises(FileNotFoundError):
        save_threshold(str(weights) + ".missing", 0.5)
    side = threshold_file(str(weights))
    for text in ("not json", json.dumps({"threshold": "x", "weights_sha256": "0"}), "{}"):
        with open(side, "w") as f:
            f.write(text)
        with pytest.raises(ValueError, match="not a threshold record") as e:
            load_threshold(str(weights))
        assert side in str(e.value)
    with open(side, "w") as f:
        json.dump({"threshold": 7, "weights_sha256": "0"}, f)
    with pytest.raises(ValueError, match="not in"):
        load_threshold(str(weights))


def test_the_evaluator_applies_the_stored_threshold_and_says_where_it_came_from(weights, caplog):
    from midog_d2.evaluation import MidogEvaluator

    cfg = make_cfg()
    cfg.MODEL.WEIGHTS = str(weights)
    with caplog.at_level(logging.INFO, logger="midog_d2"):
        assert MidogEvaluator("any_dataset", cfg)._threshold == DEFAULT_SCORE_THRESHOLD
    assert "default (no threshold stored with MODEL.WEIGHTS)" in caplog.text
    save_threshold(str(weights), 0.37)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="midog_d2"):
        assert MidogEvaluator("any_dataset", cfg)._threshold == 0.37
    assert f"stored with {weights}" in caplog.text
    assert MidogEvaluator("any_dataset", cfg, score_threshold=0.2)._threshold == 0.2


def test_one_name_per_quantity_and_old_records_still_load(weights):
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['val_f1'\]"):
        save_threshold(str(weights), 0.5, val_f1=0.7)
    # a record of an earlier version, which called the best F1 "f1"
    old = {"threshold": 0.6, "weights": weights.name, "f1": 0.7, "dataset": "midog_val"}
    old["weights_sha256"] = file_sha256(str(weights))
    Path(threshold_file(str(weights))).write_text(json.dumps(old))
    record = load_threshold(str(weights))
    assert record["best_f1"] == 0.7 and "f1" not in record and record["threshold"] == 0.6
