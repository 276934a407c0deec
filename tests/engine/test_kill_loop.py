"""make test-slow: tools/train_net.py killed with SIGKILL at many moments (between
checkpoints, while one is written, while model_final is written) and resumed each time
with --resume: every kill leaves a checkpoint that loads, the run resumes from it (at most
one checkpoint period lost) and ends with the full iteration count. With
``MIDOG_D2_KILL_REPORT=path.json`` each kill's figures are written there
(docs/reliability.md)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import CONFIGS, REPO

from midog_d2.datagen.synthetic import PRESETS, generate_dataset

MAX_ITER, PERIOD = 24, 4


def _cmd(data, out, resume):
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py")]
    cmd += ["--config-file", str(CONFIGS / "dev" / "Demo-CPU-R18.yaml")]
    cmd += ["--resume"] if resume else []
    return cmd + [
        "MODEL.DEVICE", "cpu",
        "DATASETS.MIDOG.JSON_FILE", str(data["json_file"]),
        "DATASETS.MIDOG.IMAGE_ROOT", str(data["image_root"]),
        "DATASETS.MIDOG.CSV_FILE", str(data["csv_file"]),
        "DATASETS.MIDOG.VAL_FRACTION", "0.0",
        "DATASETS.TRAIN", "('midog_train',)",
        "DATASETS.TEST", "()",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()",
        "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
        "INPUT.PATCH.SIZE", "128",
        "DATALOADER.NUM_WORKERS", "0",
        "TEST.EVAL_PERIOD", "0",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip


def _tagged_iteration(out):
    name = (out / "last_checkpoint").read_text().strip()
    return torch.load(out / name, map_location="cpu", weights_only=True)["iteration"]


@pytest.mark.slow
def test_sigkill_at_many_moments_then_resume(tmp_path):
    data = generate_dataset(tmp_path / "data", PRESETS["tiny"], seed=3)
    out = tmp_path / "run"
    report = []
    # kill delays (s) after the process starts, spread over start-up, steps and saves
    delays = [9.0, 11.5, 13.0, 14.5, 16.0, 18.5, 21.0, 24.0]
    log = out / "log.txt"
    resume, tagged = False, None

    def run_starts(since):
        text = log.read_bytes()[since:].decode("utf-8", "replace") if log.exists() else ""
        return [int(m) for m in re.findall(r"Starting training from iteration (\d+)", text)]

    for delay in delays:
        since = log.stat().st_size if log.exists() else 0
        proc = subprocess.Popen(
            _cmd(data, out, resume),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        if proc.poll() is not None:  # finished before the kill
            tagged = _tagged_iteration(out)
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        row = {"killed_after_s": delay, "checkpoint_before": tagged}
        started = run_starts(since)
        if started:
            # resumed right after the newest whole checkpoint: at most one period lost
            assert started[0] == (0 if tagged is None else tagged + 1)
            row["started_at"] = started[0]
        resume = True
        tagged = _tagged_iteration(out) if (out / "last_checkpoint").exists() else None
        row["checkpoint_after"] = tagged
        row["temporaries_left"] = [n for n in os.listdir(out) if n.endswith(".tmp")]
        report.append(row)
    since = log.stat().st_size if log.exists() else 0
    final = subprocess.run(_cmd(data, out, True), cwd=tmp_path, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    assert run_starts(since) == [0 if tagged is None else tagged + 1]
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == MAX_ITER - 1
    assert sum(1 for r in report if r["checkpoint_after"] is not None) >= 3
    target = os.environ.get("MIDOG_D2_KILL_REPORT")
    if target:
        with open(target, "w") as f:
            json.dump({"max_iter": MAX_ITER, "period": PERIOD, "kills": report}, f, indent=1)
