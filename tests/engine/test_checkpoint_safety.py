"""Crash-safe checkpoints (MidogCheckpointer.save / resume_or_load): a full disk or a file
cut short never costs the previous checkpoint, and resuming skips a checkpoint that does
not load."""

import errno
import os

import pytest
import torch
from torch import nn

from midog_d2.checkpoint import MidogCheckpointer


def checkpointer(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    return model, MidogCheckpointer(model, str(tmp_path))


def test_save_leaves_the_checkpoint_and_its_tag_and_no_temporary(tmp_path):
    model, ck = checkpointer(tmp_path)
    ck.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    data = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert data["iteration"] == 9
    assert torch.equal(data["model"]["weight"], model.weight.detach())


def test_a_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _, ck = checkpointer(tmp_path)
    ck.save("model_final", iteration=1)
    before = (tmp_path / "model_final.pth").read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        OSError, match=r"could not save .*model_final.pth .*previous file is intact"
    ):
        ck.save("model_final", iteration=2)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(tmp_path, caplog):
    model, ck = checkpointer(tmp_path, seed=1)
    ck.save("model_0000004", iteration=4)
    good = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ck.save("model_0000009", iteration=9)
    # the tagged checkpoint cut short (as an in-place write killed half-way leaves it)
    path = tmp_path / "model_0000009.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    os.utime(tmp_path / "model_0000004.pth", (1, 1))  # older than the damaged one

    fresh, ck2 = checkpointer(tmp_path, seed=2)
    with caplog.at_level("WARNING", logger="midog_d2.checkpoint"):
        data = ck2.resume_or_load("", resume=True)
    assert data["iteration"] == 4
    assert torch.equal(fresh.weight.detach(), good)
    assert "cannot resume from" in caplog.text and "model_0000009.pth" in caplog.text


def test_resume_with_nothing_loadable_says_so(tmp_path):
    _, ck = checkpointer(tmp_path)
    ck.save("model_final", iteration=1)
    (tmp_path / "model_final.pth").write_bytes(b"not a checkpoint")
    _, ck2 = checkpointer(tmp_path)
    with pytest.raises(RuntimeError, match="no checkpoint in .* can be loaded to resume"):
        ck2.resume_or_load("", resume=True)


KILLED_MID_SAVE = """
import os, signal, sys, torch
from torch import nn
from midog_d2.checkpoint import MidogCheckpointer
torch.manual_seed(5)
model = nn.Linear(4, 3)
ck = MidogCheckpointer(model, sys.argv[1])
real_save = torch.save
def half_then_die(obj, f, *a, **k):
    f.write(b"PK\\x03\\x04" + bytes(1000))
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = half_then_die
ck.save("model_final", iteration=99)
"""


def test_killed_while_saving_the_previous_checkpoint_resumes(tmp_path):
    import subprocess
    import sys

    model, ck = checkpointer(tmp_path, seed=3)
    ck.save("model_final", iteration=50)
    before = (tmp_path / "model_final.pth").read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(tmp_path)])
    assert proc.returncode == -9  # SIGKILL, in the middle of writing model_final.pth
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    fresh, ck2 = checkpointer(tmp_path, seed=4)
    assert ck2.resume_or_load("", resume=True)["iteration"] == 50
    assert torch.equal(fresh.weight.detach(), model.weight.detach())
    # the killed run's temporary goes with the next save of that name
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    ck2.save("model_final", iteration=51)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


def test_non_finite_weights_are_never_saved_over_the_last_good_checkpoint(tmp_path):
    model, ck = checkpointer(tmp_path)
    ck.save("model_0000001", iteration=1)
    good = (tmp_path / "model_0000001.pth").read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(
        FloatingPointError,
        match=r"not saving model_0000003: .*\(weight\); .*model_0000001\.pth is kept",
    ):
        ck.save("model_0000003", iteration=3)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """Training itself: weights turned NaN at iteration 3 (before its periodic checkpoint)
    stop the run with FloatingPointError; model_0000001.pth stays the last checkpoint and
    loads with finite weights."""
    from conftest import CONFIGS, tiny_train_opts
    from midog_fixtures import write_midog_dataset

    from detectron2.engine import HookBase

    from midog_d2.engine import MidogTrainer, setup_cfg

    data = write_midog_dataset(tmp_path / "data", seed=3)
    cfg = setup_cfg(
        str(CONFIGS / "dev" / "Demo-CPU-R18.yaml"),
        tiny_train_opts(
            data,
            tmp_path / "run",
            {"DATASETS.TEST": "()", "SOLVER.MAX_ITER": 8, "SOLVER.CHECKPOINT_PERIOD": 2},
        ),
    )

    class Poison(HookBase):
        def after_step(self):
            if self.trainer.iter == 3:
                with torch.no_grad():
                    next(self.trainer.model.parameters()).fill_(float("nan"))

    trainer = MidogTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer._hooks.insert(0, Poison())  # before the periodic checkpointer
    trainer._hooks[0].trainer = trainer
    with pytest.raises(FloatingPointError, match="not saving model_0000003"):
        trainer.train()
    run = tmp_path / "run"
    assert (run / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (run / "model_0000003.pth").exists() and not (run / "model_final.pth").exists()
    state = torch.load(run / "model_0000001.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
