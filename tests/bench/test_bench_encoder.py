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
