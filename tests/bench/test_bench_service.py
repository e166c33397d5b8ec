"""The service load benchmark on a tiny store: a real server process, real clients, a results file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ecgsearch.cli.main import app


def test_bench_service_end_to_end(ptbxl_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "service.json"
    args = ["bench", "service", "--ptbxl", str(ptbxl_dir), "--records", "40", "--duration", "2"]
    result = CliRunner().invoke(app, [*args, "--concurrency", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["errors"] == 0 and data["qps"] > 0
    assert data["collection"]["count"] == 40
    assert data["latency_ms"]["p50"] <= data["latency_ms"]["p95"] <= data["latency_ms"]["p99"]
    assert set(data["by_kind"]) == {"vector", "vector_filtered", "record", "record_filtered"}
    assert data["machine"]["cpus"] >= 1 and data["parameters"]["store"] == "temporary PTB-XL store"
    bare = data["bare_store"]  # the same queries on the store in-process, after the server exited
    assert bare["requests"] > 0 and set(bare["by_kind"]) == set(data["by_kind"])
    assert data["service_vs_store_qps"] == round(data["qps"] / bare["qps"], 3)
    assert set(data["latency_split_p50_ms"]) == set(data["by_kind"])
