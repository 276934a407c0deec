"""One command trains the whole model (midog_d2.engine.runs.train_model through
tools/train_net.py): the detector, then the second stage, both in one model_final.pth, then
the threshold chosen on the calibration set and stored beside it, which the final evaluation
uses; a resumed training continues from its last checkpoint on the same schedule and does not
train the second stage twice."""

import json
import subprocess
import sys

import torch
from conftest import CONFIGS, REPO, tiny_train_opts
from midog_fixtures import write_midog_dataset

from midog_d2.checkpoint import load_threshold

R18 = CONFIGS / "dev" / "Demo-CPU-R18.yaml"


def _train_net(args, cwd):
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def _lrs(out):
    """{iteration: learning rate} from the run's metrics.json."""
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return {r["iteration"]: r["lr"] for r in rows if "lr" in r}


def test_train_net_trains_both_stages_calibrates_and_resumes(tmp_path):
    data = write_midog_dataset(tmp_path / "data", seed=3)
    out = tmp_path / "run"
    opts = tiny_train_opts(
        data,
        out,
        {
            "DATASETS.MIDOG.VAL_FRACTION": "0.5",
            "TEST.MIDOG.CALIBRATION_DATASET": "midog_val",
            "SOLVER.MAX_ITER": "6",
            "SOLVER.STEPS": "(4,)",
            "SOLVER.CHECKPOINT_PERIOD": "3",
            "SEED": "7",
            "MODEL.SECOND_STAGE.ON": "True",
            "MODEL.SECOND_STAGE.CANDIDATE_BATCHES": "4",
            "MODEL.SECOND_STAGE.MAX_ITER": "3",
            "MODEL.SECOND_STAGE.IMS_PER_BATCH": "8",
            "MODEL.SECOND_STAGE.CANDIDATE_THRESHOLD": "0.0",
        },
    )
    args = ["--config-file", str(R18), *opts]
    log = _train_net(args, tmp_path)
    final = out / "model_final.pth"
    state = torch.load(final, weights_only=True)["model"]
    stage = {k: v for k, v in state.items() if k.startswith("second_stage.")}
    assert stage, "model_final.pth lacks the second stage"
    # trained: its weights moved away from the detector-only checkpoint's initialisation
    before = torch.load(out / "model_0000002.pth", weights_only=True)["model"]
    assert any(not torch.equal(v, before[k]) for k, v in stage.items() if k in before)
    last = torch.load(out / "model_0000005.pth", weights_only=True)["model"]
    for k, v in last.items():  # the detector trained to the end, frozen since
        if not k.startswith("second_stage."):
            assert torch.equal(state[k], v), k
    stats = json.loads((out / "second_stage.json").read_text())
    assert stats["iterations"] == 3 and stats["model_final_sha256"]
    record = load_threshold(str(final))  # checked against the weights' SHA-256
    assert record is not None and record["dataset"] == "midog_val"
    assert 0.0 <= record["threshold"] <= 1.0
    # the final evaluation of midog_test used the stored threshold
    assert f"operating threshold {record['threshold']:.3f} (stored with {final})" in log
    lrs_first = _lrs(out)

    # Resume from the checkpoint of iteration 2, as if the run had been stopped there.
    for name in ("model_final.pth", "model_final.pth.threshold.json", "second_stage.json"):
        (out / name).unlink(missing_ok=True)
    (out / "last_checkpoint").write_text("model_0000002.pth")
    (out / "metrics.json").unlink()
    log = _train_net(["--resume", *args], tmp_path)
    assert "Starting training from iteration 3" in log
    lrs_resumed = _lrs(out)
    assert min(lrs_resumed) >= 3
    for it, lr in lrs_resumed.items():  # the same schedule: warm-up done, the step at 4
        assert abs(lr - lrs_first[it]) < 1e-12, (it, lr, lrs_first[it])
    assert load_threshold(str(final)) is not None
    assert (out / "second_stage.json").exists()

    # Resumed once more after it finished: nothing is trained again.
    mtime = final.stat().st_mtime_ns
    log = _train_net(["--resume", *args], tmp_path)
    assert final.stat().st_mtime_ns == mtime
    assert "Second stage trained" not in log
