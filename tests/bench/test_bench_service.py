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
