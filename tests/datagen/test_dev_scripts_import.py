"""The development scripts find ``midog_dev`` (not installed) from the checkout, whatever the
working folder: each one's ``--help`` runs from a folder outside the repository."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    p
    for folder in (REPO / "tools" / "dev", REPO / "benchmarks")
    for p in folder.glob("*.py")
    if "midog_dev" in p.read_text()
)


def test_the_scripts_that_use_midog_dev_are_found():
    names = {p.name for p in SCRIPTS}
    assert {"demo.py", "run_scanner_study.py", "bench_gpu.py", "bench_synthetic.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_development_script_runs_from_outside_the_checkout(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower()
