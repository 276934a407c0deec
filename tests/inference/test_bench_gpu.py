"""benchmarks/bench_gpu.py, shrunk to the CPU: the script a GPU session runs must run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_benchmark_runs_shrunk_on_the_cpu(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--cpu-smoke"]
    cmd += ["--roi-size", "1024", "768", "--slide-size", "2048", "2048", "--train-steps", "1"]
    cmd += ["--work-dir", str(tmp_path), "--out", str(out), "--skip-sahi"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=900)
    res = json.loads(out.read_text())
    assert res["cpu_smoke"] and res["train"]["steps"] == 1 and res["train"]["patches_s"] > 0
    compared = 0
    for name in ("roi", "slide"):
        assert res[name]["fp32"]["tiles"] > 0 and res[name]["fp32"]["seconds"] > 0
        # bf16 is compared with fp32's detections, as fp16 is on a GPU (None: fp32 found none).
        bf16 = res[name]["bf16"]
        if bf16["n_fp32"]:
            assert 0.5 <= bf16["reproduces_fp32"] <= 1.0
            compared += 1
        else:
            assert bf16["reproduces_fp32"] is None
    assert compared >= 1
    assert res["roi"]["fp32"]["model_only_tiles_s"] > 0
