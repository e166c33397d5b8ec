"""The retrieval evaluation end to end on a small PTB-XL subset, with the committed ONNX models."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ecgsearch.cli.main import app


def test_eval_retrieval_end_to_end(ptbxl_dir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "retrieval.json", tmp_path / "retrieval.png"
    args = ["eval", "retrieval", "--ptbxl", str(ptbxl_dir), "--limit", "150", "--pca-dim", "32"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--plot", str(png), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["dataset"]["records"] == 150
    assert [m["method"] for m in data["methods"]] == ["trained", "random-init", "pca"]
    assert data["heart_rate"]["valid"] > 0.9 * 150
    assert 40 < data["heart_rate"]["median_bpm"] < 100
    for method in data["methods"]:
        assert 0.0 <= method["agreement@10_fold10"] <= 1.0
        assert 0.0 <= method["linear_probe"]["fold10_macro_auc"] <= 1.0  # 150 records: tiny folds
        codes = {row["code"]: row for row in method["diagnoses_fold10"]}
        assert {"AFIB", "CRBBB", "CLBBB", "LVH", "IMI", "PACE", "WPW"} <= set(codes)
        assert codes["WPW"]["queries"] == 0 and codes["WPW"]["precision"] is None
        assert len(method["curves_fold10"]["age"]) == 10
    assert png.stat().st_size > 1000
