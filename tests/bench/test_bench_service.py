"""The service load benchmark on a tiny store: a real server process, real clients, a results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgsearch.cli.main import app


def test_bench_service_end_to_end(ptbxl_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "service.json"
    args = ["bench", "service", "--ptbxl", str(ptbxl_dir), "--records", "40", "--duration", "2"]
    result = CliRunner().invoke(app, [*args, "--concurrency", "1,2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [level["concurrency"] for level in data["levels"]] == [1, 2]
    assert data["collection"]["count"] == 40
    assert data["machine"]["cpus"] >= 1 and data["parameters"]["store"] == "temporary PTB-XL store"
    for level in data["levels"]:
        assert level["errors"] == 0 and level["qps"] > 0
        assert level["latency_ms"]["p50"] <= level["latency_ms"]["p95"] <= level["latency_ms"]["p99"]
        assert set(level["by_kind"]) == {"vector", "vector_filtered", "record", "record_filtered"}
        bare = level["bare_store"]  # the same queries on the store in-process, after the server exited
        assert bare["requests"] > 0 and set(bare["by_kind"]) == set(level["by_kind"])
        assert level["service_vs_store_qps"] == round(level["qps"] / bare["qps"], 3)
        assert level["p50_service_minus_store_ms"] == pytest.approx(
            level["latency_ms"]["p50"] - bare["latency_ms"]["p50"], abs=1e-3
        )
    assert [row["concurrency"] for row in data["summary"]] == [1, 2]
    # the server planned its searches (copies dropped from each: near-total, the engine's HNSW)
    assert data["search_plans"]["hnsw"]["count"] > 0
    assert all(r["longest_gap_ms"] > 0 and r["call_ms"] > 0 for r in data["gil_probe"])
    # the server ran with its audit trail, as deployed: a line for every call, the loads' and the rest
    assert data["audit_lines"] >= sum(level["requests"] for level in data["levels"])
    trips = data["round_trip_p50_ms"]
    assert trips["grpc_health_check"] > 0 and trips["search_by_vector_k1"] > 0
    # the server's own share of each audited call, from its audit lines: part of the round trip
    server = data["round_trip_server_p50_ms"]
    assert set(server) == {"collection_info", "search_by_vector_k1", "search_by_vector_k10"}
    assert all(0 < server[name] < trips[name] for name in server)
