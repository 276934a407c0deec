"""The ablation-study runner (midog_d2.jobs.study): the study file, run order, resume after
a kill, failed runs, and the paired statistics."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import study_helpers
import torch
from conftest import CONFIGS, PRODUCT_STUDY_FILES, REPO, make_cfg
from midog_fixtures import write_midog_dataset

from midog_d2.checkpoint import load_threshold
from midog_d2.jobs.study import (
    load_study,
    markdown_summary,
    paired_effect,
    read_results,
    reused_weights,
    run_study,
    summarize_study,
)

HERE = Path(__file__).resolve().parent


def write_study(tmp_path, seeds="[0, 1]", extra=""):
    (tmp_path / "base.yaml").write_text("SEED: 0\n")
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(f"""\
            config: base.yaml
            seeds: {seeds}
            folds:
              f1: [DATASETS.REAL_FIGURES.TRAIN_DOMAINS, "['x', 'y']"]
              f2: [DATASETS.REAL_FIGURES.TRAIN_DOMAINS, "['y', 'z']"]
            cells:
              a: [MODEL.MULTITASK.DOMAIN_HEAD_ON, "False"]
              b: []
            baseline: a
            effects:
              head: [b, a]
            """) + extra)
    return path


def test_runs_are_seed_major_with_the_fold_and_cell_overrides(tmp_path):
    study = load_study(str(write_study(tmp_path)))
    runs = study.runs()
    assert len(runs) == 2 * 2 * 2
    assert [r.key for r in runs[:4]] == [
        ("a", "f1", 0),
        ("b", "f1", 0),
        ("a", "f2", 0),
        ("b", "f2", 0),
    ]
    assert runs[0].opts == (
        "DATASETS.REAL_FIGURES.TRAIN_DOMAINS",
        "['x', 'y']",
        "MODEL.MULTITASK.DOMAIN_HEAD_ON",
        "False",
        "SEED",
        "0",
    )
    assert study.config_file == str(tmp_path / "base.yaml")


def test_cells_that_reuse_a_detector_run_last_in_their_seed(tmp_path, caplog):
    path = write_study(tmp_path, extra="reuse:\n  a: b\n")
    runs = load_study(str(path)).runs()
    assert [r.key for r in runs[:4]] == [
        ("b", "f1", 0),
        ("b", "f2", 0),
        ("a", "f1", 0),
        ("a", "f2", 0),
    ]
    assert [r.base for r in runs[:4]] == [None, None, "b__f1__seed0", "b__f2__seed0"]
    assert runs[4].key == ("b", "f1", 1)
    # The base run's weights when they are there; else the run trains its own, and says so.
    out = tmp_path / "out"
    assert reused_weights(runs[0], str(out / runs[0].name)) is None
    assert reused_weights(runs[2], str(out / runs[2].name)) is None
    assert "b__f1__seed0" in caplog.text and "trains its detector itself" in caplog.text
    weights = out / "b__f1__seed0" / "model_final.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    assert reused_weights(runs[2], str(out / runs[2].name)) == str(weights)


@pytest.mark.parametrize(
    "reuse, message",
    [
        ("[a, b]", "reuse must be a mapping"),
        ("{a: nope}", "reuse 'a': 'nope' must name two different cells"),
        ("{a: a}", "reuse 'a': 'a' must name two different cells"),
        ("{a: b, b: a}", "its base 'b' reuses another cell"),
    ],
)
def test_bad_reuse_entries_name_the_file(tmp_path, reuse, message):
    path = write_study(tmp_path, extra=f"reuse: {reuse}\n")
    with pytest.raises(ValueError, match=message) as e:
        load_study(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("typo: 1\n", "unknown key"),
        ("", None),
    ],
)
def test_study_file_errors_name_the_file(tmp_path, extra, message):
    path = write_study(tmp_path, extra=extra)
    if message is None:
        load_study(str(path))
        return
    with pytest.raises(ValueError, match=message) as e:
        load_study(str(path))
    assert str(path) in str(e.value)


def test_bad_study_entries(tmp_path):
    path = write_study(tmp_path, seeds="[0, 0]")
    with pytest.raises(ValueError, match="seeds repeat"):
        load_study(str(path))
    path.write_text(
        path.read_text().replace("head: [b, a]", "head: [b, nope]").replace("[0, 0]", "[0]")
    )
    with pytest.raises(ValueError, match="effect 'head'"):
        load_study(str(path))
    path.write_text("config: missing.yaml\nseeds: [0]\ncells: {a: []}\n")
    with pytest.raises(ValueError, match="not found"):
        load_study(str(path))
    path.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_study(str(path))


def test_run_study_writes_one_row_a_run_and_skips_done_runs(tmp_path, monkeypatch):
    study = load_study(str(write_study(tmp_path)))
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("STUDY_LOG", str(log))
    results = tmp_path / "results.jsonl"
    rows = run_study(
        study, str(results), str(tmp_path / "out"), study_helpers.record_run, 2, limit=3
    )
    assert len(rows) == 3 and len(read_results(str(results))) == 3
    row = read_results(str(results))[0]
    assert {"cell", "fold", "seed", "config", "opts", "wall_s", "held_out"} <= set(row)
    run_study(study, str(results), str(tmp_path / "out"), study_helpers.record_run, 0)
    done = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    assert len(done) == 8 and len(set(done)) == 8  # nothing ran twice
    assert {(r["cell"], r["fold"], r["seed"]) for r in read_results(str(results))} == {
        r.key for r in study.runs()
    }


def test_a_failed_run_is_left_for_the_next_start(tmp_path, monkeypatch, caplog):
    study = load_study(str(write_study(tmp_path, seeds="[0]")))
    monkeypatch.setenv("STUDY_LOG", str(tmp_path / "log.jsonl"))
    results = tmp_path / "results.jsonl"
    run_study(study, str(results), str(tmp_path / "out"), study_helpers.fail_on_b, 0)
    assert {r["cell"] for r in read_results(str(results))} == {"a"}
    assert "cell b always fails" in caplog.text
    run_study(study, str(results), str(tmp_path / "out"), study_helpers.record_run, 0)
    assert len(read_results(str(results))) == 4


def test_killed_after_its_first_run_the_study_does_not_redo_it(tmp_path):
    study_file = write_study(tmp_path)
    results = tmp_path / "results.jsonl"
    log = tmp_path / "log.jsonl"
    script = textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import study_helpers
        from midog_d2.jobs.study import load_study, run_study
        fn = getattr(study_helpers, sys.argv[1])
        run_study(load_study({str(study_file)!r}), {str(results)!r}, {str(tmp_path / 'out')!r}, fn, 0)
        """)
    env = dict(os.environ, STUDY_LOG=str(log))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "first_fast_then_hang"], env=env, start_new_session=True
    )
    try:
        deadline = time.time() + 120
        while (
            time.time() < deadline and len(log.read_text().splitlines() if log.exists() else []) < 2
        ):
            time.sleep(0.2)
        assert len(read_results(str(results))) == 1  # run 1 written, run 2 hanging
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    subprocess.run([sys.executable, "-c", script, "record_run"], env=env, check=True, timeout=300)
    started = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    assert started.count(("a", "f1", 0)) == 1  # the finished run was not redone
    assert started.count(("b", "f1", 0)) == 2  # the killed one was
    assert len(read_results(str(results))) == 8


def test_cut_off_last_line_is_ignored_and_a_bad_line_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"cell": "a", "fold": "f", "seed": 0}\n{"cell": "b", "fo')
    assert len(read_results(str(path))) == 1
    path.write_text(
        '{"cell": "a", "fold": "f", "seed": 0}\nnot json\n{"cell": "b", "fold": "f", "seed": 0}\n'
    )
    with pytest.raises(ValueError, match="line 2"):
        read_results(str(path))


def test_paired_effect_mean_interval_and_sign_test():
    e = paired_effect([0.1, 0.2, 0.3, 0.4, 0.5], n_boot=2000)
    assert e["mean"] == pytest.approx(0.3)
    assert e["lo"] < 0.3 < e["hi"] and 0.1 <= e["lo"] and e["hi"] <= 0.5
    assert e["positive"] == 5 and e["negative"] == 0
    assert e["sign_p"] == pytest.approx(2 / 32)
    mixed = paired_effect([0.1, -0.1, 0.2, -0.2])
    assert mixed["sign_p"] == pytest.approx(1.0) and mixed["lo"] < 0 < mixed["hi"]


def test_summary_pairs_runs_on_fold_and_seed(tmp_path):
    study = load_study(str(write_study(tmp_path)))
    rows = [
        {
            "cell": c,
            "fold": f,
            "seed": s,
            "wall_s": 1.0,
            "held_out": {"f1": {"a": 0.5, "b": 0.6}[c] + 0.01 * s},
            "in_domain": {"f1": {"a": 0.7, "b": 0.7}[c]},
        }
        for c in ("a", "b")
        for f in ("f1", "f2")
        for s in (0, 1)
    ]
    rows.append({"cell": "a", "fold": "other", "seed": 0, "held_out": {"f1": 9.0}})
    metrics = ["held_out.f1", "in_domain.f1"]
    s = summarize_study(study, rows, metrics)
    assert s["cells"]["a"]["runs"] == 4
    assert s["cells"]["a"]["held_out.f1"][0] == pytest.approx(0.505)
    assert s["effects"]["head"]["held_out.f1"]["mean"] == pytest.approx(0.1)
    assert s["effects"]["head"]["held_out.f1"]["n"] == 4
    assert s["gap"]["f1"]["mean"] == pytest.approx(0.7 - 0.505)
    text = markdown_summary(study, s, metrics, {"held_out.f1": "held-out F1"})
    assert "| a | 4 | 0.505 ± 0.006" in text and "held-out F1" in text
    assert "`b` − `a`" in text


@pytest.mark.parametrize("study_file", PRODUCT_STUDY_FILES, ids=lambda p: p.name)
def test_every_run_of_a_product_study_has_a_valid_config(study_file):
    study = load_study(str(study_file))
    for run in study.runs():
        cfg = make_cfg(Path(study.config_file), *run.opts)
        assert cfg.SEED == run.seed and len(cfg.DATASETS.TEST) >= 2


def test_run_study_tool_on_generated_midog_data(tmp_path):
    """tools/run_study.py end to end: two cells, one fold, one seed of two iterations each on
    a tiny generated dataset; rows with in-domain and held-out scores, the threshold stored
    beside each run's weights, the tables written between their markers."""
    data = write_midog_dataset(tmp_path / "data", seed=3)
    study = tmp_path / "study.yaml"
    study.write_text(textwrap.dedent(f"""\
            config: {CONFIGS / 'dev' / 'Demo-CPU-R18.yaml'}
            seeds: [0]
            folds:
              heldout_net: [DATASETS.MIDOG.SPLIT, leave_one_tumor_out,
                            DATASETS.MIDOG.HOLDOUT_TUMOR, "human neuroendocrine tumor",
                            DATASETS.MIDOG.VAL_FRACTION, "0.5",
                            DATASETS.TRAIN, "('midog_train',)",
                            DATASETS.TEST, "('midog_val', 'midog_test')"]
            cells:
              none: [MODEL.MULTITASK.DOMAIN_HEAD_ON, "False", MODEL.MULTITASK.FOREGROUND_HEAD_ON, "False"]
              both: []
              both+gate: [MODEL.MULTITASK.FOREGROUND_GATE, "True"]
              both+2nd: [MODEL.SECOND_STAGE.ON, "True", MODEL.SECOND_STAGE.CANDIDATE_BATCHES, "4",
                         MODEL.SECOND_STAGE.MAX_ITER, "3", MODEL.SECOND_STAGE.IMS_PER_BATCH, "8"]
            baseline: none
            effects:
              heads: [both, none]
            reuse:
              both+gate: both
              both+2nd: both
            """))
    md = tmp_path / "results.md"
    md.write_text(
        "# x\n<!-- BEGIN study: study -->\nPLACEHOLDER\n<!-- END study: study -->\ntail\n"
    )
    results = tmp_path / "rows.jsonl"
    opts = [
        "MODEL.DEVICE", "cpu",
        "DATASETS.MIDOG.JSON_FILE", str(data["json_file"]),
        "DATASETS.MIDOG.IMAGE_ROOT", str(data["image_root"]),
        "DATASETS.MIDOG.CSV_FILE", str(data["csv_file"]),
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.STEPS", "()", "INPUT.PATCH.SIZE", "128", "TEST.TILE.SIZE", "256",
        "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
    ]  # fmt: skip
    cmd = [
        sys.executable, str(REPO / "tools" / "run_study.py"), "--study", str(study),
        "--results", str(results), "--output-root", str(tmp_path / "runs"), "--jobs", "0",
        "--results-md", str(md), *opts,
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = read_results(str(results))
    assert sorted(row["cell"] for row in rows) == ["both", "both+2nd", "both+gate", "none"]
    # The gate's run scored the detector its base trained: the same weights, not retrained.
    base = tmp_path / "runs" / "both__heldout_net__seed0" / "model_final.pth"
    (gated,) = [row for row in rows if row["cell"] == "both+gate"]
    assert gated["reused"] == str(base)
    a = torch.load(str(base), map_location="cpu", weights_only=True)["model"]
    own = tmp_path / "runs" / "both+gate__heldout_net__seed0" / "model_final.pth"
    b = torch.load(str(own), map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The second stage's run: the base's detector, and its second stage trained after it
    # (engine.runs.fit_run, the path the development study takes too).
    (second,) = [row for row in rows if row["cell"] == "both+2nd"]
    assert second["reused"] == str(base) and second["second_stage"]["iterations"] == 3
    own = tmp_path / "runs" / "both+2nd__heldout_net__seed0" / "model_final.pth"
    c = torch.load(str(own), map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(a[k], c[k]) for k in a) and any(k.startswith("second_stage.") for k in c)
    for row in rows:
        assert row["in_domain"]["num_images"] == 1 and row["held_out"]["num_images"] == 1
        assert 0 <= row["held_out"]["f1"] <= 1 and row["iterations"] == 2
        weights = tmp_path / "runs" / f"{row['cell']}__heldout_net__seed0" / "model_final.pth"
        assert load_threshold(str(weights))["threshold"] == row["threshold"]
        # At real density: the demo config scores each set at its own density
        # (TEST.MIDOG.OPERATING_DENSITY 0), where the expected F1 is the F1 itself.
        assert row["threshold"] == row["in_domain"]["density_threshold"]
        for name in ("in_domain", "held_out"):
            s = row[name]
            assert s["figures_per_mm2"] > 0 and s["fp_per_mm2"] >= 0
            assert s["expected_f1"] == pytest.approx(s["f1"])
    text = md.read_text()
    assert "| none | 1 |" in text and "| both | 1 |" in text and "PLACEHOLDER" not in text
    assert text.startswith("# x\n") and text.endswith("tail\n")
