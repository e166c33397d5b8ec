"""The encoder throughput benchmark on a tiny budget: every runtime and size measured, file written."""

from __future__ import annotations

import json
from pathlib import Path

from ecgsearch.bench.encoder import run_benchmark


def test_encoder_bench_writes_results_naming_files_relative_to_the_repo(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = run_benchmark(None, threads=1, batch_sizes=[1, 4], min_seconds=0.01, out=out)
    assert {(r["runtime"], r["batch_size"]) for r in result["results"]} >= {
        ("onnxruntime", 1),
        ("onnxruntime", 4),
    }
    assert all(r["ecgs_per_s"] > 0 for r in result["results"])
    written = json.loads(out.read_text())
    assert written["model"] == "export/models/ecg-encoder.onnx"
    assert written["machine"]["cpus"] >= 1 and written["machine"]["onnxruntime"]


def test_compare_takes_turns_and_reports_each_model_against_the_first(tmp_path: Path) -> None:
    """The bundled model against its random twin (the same graph): every round timed for each, the
    first's ratio to itself exactly 1, and two models needed."""
    import pytest

    from ecgsearch.bench.encoder import compare_models
    from ecgsearch.export.runtime import DEFAULT_MODEL, RANDOM_MODEL, bundled_model

    out = tmp_path / "c.json"
    result = compare_models(
        [bundled_model(DEFAULT_MODEL), bundled_model(RANDOM_MODEL)],
        threads=1,
        batch_sizes=[1, 4],
        min_seconds=0.01,
        rounds=2,
        out=out,
    )
    rows = {(r["model"], r["batch_size"]): r for r in json.loads(out.read_text())["results"]}
    assert len(rows) == 4 and result["rounds"] == 2
    assert all(len(r["ecgs_per_s_rounds"]) == 2 and r["ecgs_per_s_median"] > 0 for r in rows.values())
    assert rows["export/models/ecg-encoder.onnx", 4]["relative_to_first_median"] == 1.0
    assert rows["export/models/ecg-encoder-random.onnx", 4]["relative_to_first_median"] > 0
    with pytest.raises(ValueError, match="two or more"):
        compare_models([DEFAULT_MODEL])
