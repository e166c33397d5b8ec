"""The retrieval evaluation end to end on a small PTB-XL subset, with the committed ONNX models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ecgsearch.bench import retrieval as ev
from ecgsearch.bench.metrics import bootstrap_mean, neighbours_excluding_patient
from ecgsearch.cli.main import app
from ecgsearch.encoder import ptbxl, signals

METHODS = [
    "trained",
    "random-init",
    "chance",
    "pca-log-spectra",
    "pca-raw",
    "knn-hr-rr",
    "knn-hr-rr-median",
    "knn-hr-rmssd",
    "knn-lead-log-rms-mv",
    "knn-hr-age",
]


def test_eval_retrieval_end_to_end(ptbxl_dir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "retrieval.json", tmp_path / "retrieval.png"
    args = ["eval", "retrieval", "--ptbxl", str(ptbxl_dir), "--limit", "120", "--pca-dim", "32"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--plot", str(png), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["dataset"]["records"] == 120 and data["dataset"]["records_500hz"] == 120
    assert [m["method"] for m in data["methods"]] == METHODS
    assert 40 < data["heart_rate"]["median_bpm"] < 100
    by = {m["method"]: m for m in data["methods"]}
    for method in data["methods"]:
        for scope in ("fold10", "all_queries"):
            p = method[scope]["p10_any_superclass"]
            assert 0.0 <= p["ci95"][0] <= p["value"] <= p["ci95"][1] <= 1.0
            codes = {row["code"]: row for row in method[scope]["codes"]}
            assert list(codes) == list(ev.NAMED_CODES)
        assert method["all_queries"]["p10_any_superclass"]["n"] > method["fold10"]["p10_any_superclass"]["n"]
        assert 0.0 <= method["linear_probe"]["fold10_macro_auc"] <= 1.0
    # A log-spectrum and an RMS are blind to a circular shift: their neighbours cannot move.
    for name in ("pca-log-spectra", "knn-lead-log-rms-mv"):
        for shift in by[name]["shift_stability"]["circular"].values():
            assert shift["all"]["top10_overlap"]["value"] == 1.0
    # The trained model's own ECG shifted stays close; raw-sample PCA does not.
    trained = by["trained"]["shift_stability"]
    assert trained["circular"]["4"]["all"]["cosine"]["value"] > 0.95
    assert set(trained["later_start_500hz"]) == {"0.16s", "1s"}
    assert by["pca-raw"]["shift_stability"]["circular"]["50"]["all"]["top10_overlap"]["value"] < 0.5
    assert "note" in by["chance"]["shift_stability"]
    rho = by["knn-hr-age"]["similarity_vs_difference"]["abs_delta_age"]["rho"]
    assert rho < -0.3  # similarity in a heart-rate + age space must fall as ages part
    aims = {a["aim"]: a for a in data["aims"]}
    assert aims["P@10 any superclass >= 0.70"]["met"] == (
        by["trained"]["fold10"]["p10_any_superclass"]["value"] >= 0.7
    )
    assert aims["AFIB P@10 above the best handcrafted baseline"]["scope"].startswith(
        "all folds"
    )  # few queries
    assert png.stat().st_size > 1000


def test_corpus_holds_prepared_mv_and_the_same_at_unit_rms(ptbxl_dir: Path) -> None:
    """The evaluation reads preparation's mV signal and divides it by its RMS over live leads."""
    for row in ptbxl.read_table(ptbxl_dir)[:3]:
        for path in (row.path(), row.path(prefer_hr=True)):
            raw = signals.read_wfdb(path)
            unit, mv = ev._read(raw)
            assert np.array_equal(mv, signals.prepare(raw))
            live = mv.std(axis=1) > signals.FLAT_STD_MV
            rms = np.sqrt(np.mean(mv[live].astype(np.float64) ** 2))
            assert np.allclose(unit, np.clip(mv / rms, -signals.CLIP, signals.CLIP), atol=1e-5)
            assert 0.01 < rms < 2.0  # mV, not normalised units


def test_bootstrap_mean_and_euclidean_neighbours() -> None:
    mean, low, high = bootstrap_mean(np.array([0.0, 1.0] * 50 + [np.nan]), 500, 0)
    assert mean == 0.5 and 0.38 < low < 0.5 < high < 0.62
    assert bootstrap_mean(np.array([0.3, 0.3]), 10, 0) == (0.3, 0.3, 0.3)
    x = np.array([[1.0, 0.0], [10.0, 0.0], [1.1, 0.0], [0.0, 1.0]])
    cos, _ = neighbours_excluding_patient(x, [1, 2, 3, 4], 1, np.array([0]))
    euc, _ = neighbours_excluding_patient(x, [1, 2, 3, 4], 1, np.array([0]), euclidean=True)
    assert cos[0, 0] == 1 and euc[0, 0] == 2  # same direction vs nearest point
