"""The limits benchmark on a small two-site store: a real server process, a max-cost batch, a results file.

Shapes and statuses only; the timings are the benchmark's to report, never a test's to assert.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgsearch.cli.main import app


@pytest.mark.slow
def test_bench_limits_end_to_end(ptbxl_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    args = ["bench", "limits", "--ptbxl", str(ptbxl_dir), "--challenge", str(data_dir / "challenge")]
    result = CliRunner().invoke(
        app, [*args, "--records", "300", "--batches", "1", "--pairs", "10", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    limit = data["parameters"]["message_limit_bytes"]
    refusal = data["refusal_256_x_k1000"]
    assert refusal["status"] == "RESOURCE_EXHAUSTED" and f"{limit:,}-byte message limit" in refusal["message"]
    batch = data["max_cost_batch"]
    assert (batch["status"], batch["k_plus_1_status"]) == ("OK", "RESOURCE_EXHAUSTED")  # the largest accepted
    assert batch["queries"] == 256 and batch["raw_samples"] <= batch["raw_sample_bound"]
    assert 0.5 * limit < batch["reply_bytes"] <= limit
    load = data["heavy_load"]
    assert load["batch_status"] == {"OK": 1} and load["batch_reply_bytes_max"] == batch["reply_bytes"]
    assert set(load["plain_search"]["status"]) == {"OK"} and load["all_admitted_at_s"] is not None
    for route in ("GetRecord", "GetEcg", "SearchByRecord"):
        assert data["equal_work"]["grpc"][route]["status"] == {
            "invisible NOT_FOUND": 10,
            "missing NOT_FOUND": 10,
        }
    assert data["equal_work"]["in_process"]["GetRecord"]["pairs"] == 10
    assert set(data["done_when"]) >= {
        "refused_under_1_s",
        "plain_search_under_1_s_while_batches_run",
        "rss_after_within_200_mb",
    }
