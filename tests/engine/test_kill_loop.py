"""make test-slow: tools/train_net.py killed with SIGKILL at many moments (in start-up,
right at a checkpoint, between checkpoints, in the next save) and resumed each time
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
from conftest import CONFIGS, REPO, tiny_train_opts
from midog_fixtures import write_midog_dataset

MAX_ITER, PERIOD = 40, 4


def _cmd(data, out, resume):
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py")]
    cmd += ["--config-file", str(CONFIGS / "dev" / "Demo-CPU-R18.yaml")]
    cmd += ["--resume"] if resume else []
    return cmd + tiny_train_opts(
        data,
        out,
        {
            "DATASETS.TEST": "()",
            "SOLVER.MAX_ITER": MAX_ITER,
            "SOLVER.CHECKPOINT_PERIOD": PERIOD,
        },
    )


def _tagged_name(out):
    tag = out / "last_checkpoint"
    return tag.read_text().strip() if tag.exists() else None


def _tagged_iteration(out):
    """The iteration of the checkpoint ``last_checkpoint`` names, loading it (it must load)."""
    name = _tagged_name(out)
    if name is None:
        return None
    return torch.load(out / name, map_location="cpu", weights_only=True)["iteration"]


def _wait_for_checkpoint(proc, out, iteration, timeout=300.0):
    """Until the tagged checkpoint is at ``iteration`` or later, or the process ends."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        name = _tagged_name(out) or ""
        m = re.match(r"model_(\d+)\.pth$", name)
        if name == "model_final.pth" or (m and int(m.group(1)) >= iteration):
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_at_many_moments_then_resume(tmp_path):
    data = write_midog_dataset(tmp_path / "data", seed=3)
    out = tmp_path / "run"
    report = []
    # Kill points: during start-up, then right at / shortly after the checkpoint of a given
    # iteration (delays of 0-0.6 s land between checkpoints, in a step or in the next save).
    plan = [(None, 2.0), (3, 0.0), (7, 0.3), (11, 0.05), (15, 0.6), (19, 0.0), (23, 0.2)]
    plan += [(27, 0.4), (31, 0.1)]
    log = out / "log.txt"
    resume, tagged = False, None

    def run_starts(since):
        text = log.read_bytes()[since:].decode("utf-8", "replace") if log.exists() else ""
        return [int(m) for m in re.findall(r"Starting training from iteration (\d+)", text)]

    for target, delay in plan:
        since = log.stat().st_size if log.exists() else 0
        proc = subprocess.Popen(
            _cmd(data, out, resume),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if target is not None:
            _wait_for_checkpoint(proc, out, target)
        time.sleep(delay)
        if proc.poll() is not None:  # finished before the kill
            tagged = _tagged_iteration(out)
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        row = {
            "kill_point": f"{delay} s after "
            + ("start" if target is None else f"checkpoint {target}"),
            "checkpoint_before": tagged,
        }
        started = run_starts(since)
        if started:
            # resumed right after the newest whole checkpoint: at most one period lost
            assert started[0] == (0 if tagged is None else tagged + 1)
            row["started_at"] = started[0]
        resume = True
        tagged = _tagged_iteration(out) if (out / "last_checkpoint").exists() else None
        row["checkpoint_after"] = tagged
        row["temporaries_left"] = (
            [n for n in os.listdir(out) if n.endswith(".tmp")] if out.exists() else []
        )
        report.append(row)
    since = log.stat().st_size if log.exists() else 0
    final = subprocess.run(_cmd(data, out, True), cwd=tmp_path, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    assert run_starts(since) == [0 if tagged is None else tagged + 1]
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == MAX_ITER - 1
    assert sum(1 for r in report if r["checkpoint_after"] is not None) >= 3
    report_path = os.environ.get("MIDOG_D2_KILL_REPORT")
    if report_path:
        with open(report_path, "w") as f:
            json.dump({"max_iter": MAX_ITER, "period": PERIOD, "kills": report}, f, indent=1)
