"""End to end: tools/train_net.py on a tiny generated dataset, then --eval-only from its
checkpoint."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS, REPO, make_cfg, tiny_train_opts
from midog_fixtures import write_midog_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_midog")
    return write_midog_dataset(out, seed=3)


def _train_net(args, cwd):
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_train_then_eval_only_reproduces_metrics(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    config = ["--config-file", str(CONFIGS / "dev" / "Demo-CPU-R18.yaml")]
    opts = tiny_train_opts(tiny_dataset, out, {"TEST.EVAL_PERIOD": 2})
    _train_net([*config, *opts], tmp_path)
    checkpoint = out / "model_final.pth"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["iteration"] == 2
    assert any(k.startswith("domain_head.") for k in state["model"])
    # Periodic evaluation at iteration 2 fed the best-checkpoint hook (TEST.BEST_CHECKPOINT_METRIC).
    assert (out / "model_best.pth").is_file()
    metrics_file = out / "inference" / "midog_test" / "midog_metrics.json"
    trained = json.loads(metrics_file.read_text())
    assert trained["num_images"] == 1 and trained["tp"] + trained["fn"] > 0
    shutil.move(str(metrics_file), str(tmp_path / "after_training.json"))

    _train_net([*config, "--eval-only", *opts, "MODEL.WEIGHTS", str(checkpoint)], tmp_path)
    again = json.loads(metrics_file.read_text())
    for key in ("tp", "fp", "fn", "f1", "best_f1", "best_threshold", "ap50"):
        assert again[key] == trained[key], key
    # Detectron2's metrics.json holds the training losses, auxiliary ones included.
    events = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("loss_domain" in e and "loss_foreground" in e for e in events)


def test_two_cpu_processes_train_one_checkpoint_and_gather_evaluation(tiny_dataset, tmp_path):
    """--num-gpus 2 on the CPU: two gloo processes, the same iteration count, one loadable
    checkpoint, evaluation gathered from both ranks."""
    out = tmp_path / "ddp"
    config = ["--config-file", str(CONFIGS / "dev" / "Demo-CPU-R18.yaml"), "--num-gpus", "2"]
    r = _train_net([*config, *tiny_train_opts(tiny_dataset, out)], tmp_path)
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_final.pth"]
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 2
    metrics = json.loads((out / "inference" / "midog_test" / "midog_metrics.json").read_text())
    assert metrics["num_images"] == 1 and metrics["tp"] + metrics["fn"] > 0
    assert r.returncode == 0


def test_num_gpus_on_a_cuda_config_without_gpus_says_how_to_use_cpu_processes(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--num-gpus", "2"]
    cmd += ["--config-file", str(CONFIGS / "Base-MultiTask-RetinaNet.yaml"), "MODEL.DEVICE", "cuda"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert (
        "has 0 CUDA GPU(s); to train with 2 CPU processes (gloo) add MODEL.DEVICE cpu" in r.stderr
    )


def test_a_training_set_emptied_by_its_filter_ends_in_one_sentence(tiny_dataset, tmp_path):
    opts = tiny_train_opts(tiny_dataset, tmp_path / "empty")
    # no image of the tiny set has this tumor type
    opts += ["DATASETS.MIDOG.TUMOR_FILTER", "['no such tumor']"]
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py")]
    cmd += ["--config-file", str(CONFIGS / "dev" / "Demo-CPU-R18.yaml"), *opts]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "no image left after the tumor filter ['no such tumor']" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_an_empty_registered_training_set_is_named():
    from detectron2.data import DatasetCatalog

    from midog_d2.data import build_midog_train_loader

    DatasetCatalog.register("midog_test_empty_train", lambda: [])
    try:
        cfg = make_cfg(
            CONFIGS / "dev" / "Demo-CPU-R18.yaml", "DATASETS.TRAIN", "('midog_test_empty_train',)"
        )
        with pytest.raises(
            ValueError, match=r"the training set \('midog_test_empty_train',\) holds no images"
        ):
            build_midog_train_loader(cfg)
        cfg = make_cfg(CONFIGS / "dev" / "Demo-CPU-R18.yaml", "DATASETS.TRAIN", "()")
        with pytest.raises(ValueError, match="DATASETS.TRAIN is empty"):
            build_midog_train_loader(cfg)
    finally:
        DatasetCatalog.remove("midog_test_empty_train")


def test_an_output_folder_that_is_a_file_is_one_sentence(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py")]
    cmd += ["--config-file", str(CONFIGS / "dev" / "Demo-CPU-R18.yaml"), "OUTPUT_DIR", str(taken)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: cannot write the output folder (OUTPUT_DIR):") and "taken" in last
    )
    assert taken.read_text() == "not a folder"
