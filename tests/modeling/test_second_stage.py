"""The second stage (midog_d2.modeling.second_stage): it re-scores only the candidates it
sees, travels in the checkpoint (loaded without running code), an old checkpoint still runs,
and tools/train_second_stage.py trains it end to end."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS, REPO, make_cfg, make_inputs, tiny_train_opts
from midog_fixtures import write_midog_dataset

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from midog_d2.checkpoint import MidogCheckpointer, WeightsError, load_model_weights
from midog_d2.engine.second_stage import train_candidate_classifier
from midog_d2.modeling.second_stage import combine_scores, crop_patches

R18 = CONFIGS / "dev" / "Demo-CPU-R18.yaml"
THRESHOLD = 0.3


def _model(second_stage: bool, seed: int = 0):
    cfg = make_cfg(R18, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
                   "MODEL.SECOND_STAGE.ON", str(second_stage),
                   "MODEL.SECOND_STAGE.CANDIDATE_THRESHOLD", str(THRESHOLD))  # fmt: skip
    torch.manual_seed(seed)
    return cfg, build_model(cfg).eval()


def _detect(model, inputs):
    with torch.no_grad():
        return [o["instances"] for o in model(inputs)]


def test_crop_patches_are_centred_and_zero_outside():
    img = torch.arange(2 * 1 * 10 * 10, dtype=torch.float32).reshape(2, 1, 10, 10)
    p = crop_patches(img, [torch.tensor([[5.0, 5.0]]), torch.tensor([[-5.0, -5.0], [5.0, 4.0]])], 2)
    assert p.shape == (3, 1, 2, 2)
    torch.testing.assert_close(p[0, 0], img[0, 0, 4:6, 4:6])
    torch.testing.assert_close(p[2, 0], img[1, 0, 3:5, 4:6])
    assert (p[1] == 0).all()  # outside the image
    torch.testing.assert_close(combine_scores(torch.tensor([0.64]), torch.tensor([0.25])),
                               torch.tensor([0.4]))  # fmt: skip


def test_it_changes_only_the_scores_of_the_candidates_it_sees():
    _, plain = _model(False)
    _, staged = _model(True)
    staged.load_state_dict(plain.state_dict(), strict=False)  # the same detector
    inputs = make_inputs(2, size=128)
    before = _detect(plain, inputs)
    # An untrained detector's scores are all small: the candidates are its upper half.
    staged.candidate_threshold = float(torch.cat([b.scores for b in before]).median())
    after = _detect(staged, inputs)
    seen = 0
    for b, a in zip(before, after):
        assert torch.equal(b.pred_boxes.tensor, a.pred_boxes.tensor)
        low = b.scores < staged.candidate_threshold
        assert torch.equal(a.scores[low], b.scores[low])
        assert low.any() and (~low).any()
        assert not torch.allclose(a.scores[~low], b.scores[~low])
        assert (a.scores[~low] <= b.scores[~low].sqrt() + 1e-6).all()  # sqrt(s * p), p <= 1
        seen += int((~low).sum())
    assert seen > 0


def test_it_travels_in_the_checkpoint_and_an_old_checkpoint_still_runs(tmp_path):
    cfg_plain, plain = _model(False)
    cfg_staged, staged = _model(True, seed=1)
    MidogCheckpointer.from_config(cfg_plain, plain, str(tmp_path)).save("detector")
    MidogCheckpointer.from_config(cfg_staged, staged, str(tmp_path)).save("both")
    saved = torch.load(tmp_path / "both.pth", weights_only=True)  # tensors only: no code runs
    assert any(k.startswith("second_stage.") for k in saved["model"])
    inputs = make_inputs(1, size=128)
    # A checkpoint without a second stage loads and runs as it always did...
    _, fresh = _model(False, seed=2)
    load_model_weights(cfg_plain, fresh, str(tmp_path / "detector.pth"))
    assert torch.equal(_detect(fresh, inputs)[0].scores, _detect(plain, inputs)[0].scores)
    # ...a model with the second stage on refuses it unless that part is to be trained...
    _, needs = _model(True, seed=3)
    with pytest.raises(WeightsError, match="second_stage"):
        load_model_weights(cfg_staged, needs, str(tmp_path / "detector.pth"))
    load_model_weights(
        cfg_staged, needs, str(tmp_path / "detector.pth"), untrained=("second_stage.",)
    )
    # ...and the checkpoint with both gives the same detections as the model saved.
    _, again = _model(True, seed=4)
    load_model_weights(cfg_staged, again, str(tmp_path / "both.pth"))
    assert torch.equal(_detect(again, inputs)[0].scores, _detect(staged, inputs)[0].scores)
    # Without the second stage the same file is the detector alone (its extra keys unused).
    _, detector_only = _model(False, seed=5)
    load_model_weights(cfg_plain, detector_only, str(tmp_path / "both.pth"))


def test_training_separates_figure_patches_from_imposters():
    g = torch.Generator().manual_seed(0)
    bright = torch.randn(64, 3, 32, 32, generator=g) * 0.3 + 1.0
    dark = torch.randn(64, 3, 32, 32, generator=g) * 0.3 - 1.0
    patches, labels = torch.cat([bright, dark]), torch.cat([torch.ones(64), torch.zeros(64)])
    _, staged = _model(True)
    clf = staged.second_stage
    stats = train_candidate_classifier(clf, patches, labels, 30, 1e-3, 16)
    assert stats == {**stats, "positives": 64, "negatives": 64, "candidates": 128}
    with torch.no_grad():
        p = clf(patches).sigmoid()
    assert p[:64].min() > 0.5 > p[64:].max()
    # Batches without a single mitotic figure cannot train it: a clear error, not a rejector.
    with pytest.raises(ValueError, match="no mitotic figure among the 64 candidates"):
        train_candidate_classifier(clf, dark, torch.zeros(64), 3, 1e-3, 16)


def test_train_second_stage_tool_end_to_end(tmp_path):
    data = write_midog_dataset(tmp_path / "data", seed=3)
    opts = tiny_train_opts(data, tmp_path / "det")
    run = lambda tool, *a: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "tools" / tool), *a],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    r = run("train_net.py", "--config-file", str(R18), *opts)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "two_stage"
    r = run(
        "train_second_stage.py", "--config-file", str(R18), *opts,
        "MODEL.WEIGHTS", str(tmp_path / "det" / "model_final.pth"),
        # A fixed seed: which patches the loader draws (and whether they hold a figure).
        "SEED", "7", "MODEL.SECOND_STAGE.ON", "True", "MODEL.SECOND_STAGE.CANDIDATE_BATCHES", "4",
        "MODEL.SECOND_STAGE.MAX_ITER", "3", "MODEL.SECOND_STAGE.IMS_PER_BATCH", "8",
        "OUTPUT_DIR", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(r.stdout.splitlines()[-1])
    assert stats["positives"] > 0 and stats["iterations"] == 3
    weights = out / "model_second_stage.pth"
    state = torch.load(weights, weights_only=True)["model"]
    detector = torch.load(tmp_path / "det" / "model_final.pth", weights_only=True)["model"]
    for k, v in detector.items():
        assert torch.equal(state[k], v), k  # the detector stayed frozen
    r = run("train_net.py", "--config-file", str(out / "config.yaml"), "--eval-only", *opts,
            "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # Without the second stage switched on, the tool says so.
    r = run("train_second_stage.py", "--config-file", str(R18), *opts)
    assert r.returncode == 2 and "MODEL.SECOND_STAGE.ON is False" in r.stderr


def test_the_detectors_training_leaves_the_second_stage_alone():
    cfg, model = _model(True)
    assert not any(p.requires_grad for p in model.second_stage.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("head."))
    model.train()
    with torch.no_grad():
        before = [p.clone() for p in model.second_stage.parameters()]
    with EventStorage():
        losses = model(make_inputs(2, size=128))
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.second_stage.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.second_stage.parameters()))


def test_switched_on_it_leaves_the_detector_and_its_training_as_they_were():
    """Built after the detector and frozen, the second stage takes nothing from the
    detector's random initialisation nor from its losses: a detector trained with it is the
    one trained without it (which is why a study's second-stage cell reuses that one)."""
    _, off = _model(False)
    _, on = _model(True)
    a = off.state_dict()
    b = {k: v for k, v in on.state_dict().items() if not k.startswith("second_stage.")}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    inputs = make_inputs(2, size=128)
    off.train()
    on.train()
    with EventStorage():
        la, lb = off(inputs), on(inputs)
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
