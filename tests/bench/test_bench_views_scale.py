"""Named views at scale: the exact Euclidean reference, and the benchmark end to end on a small store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgsearch.bench.views_scale import euclidean_topk, measured
from ecgsearch.cli.main import app


def test_euclidean_topk_is_the_nearest_by_distance() -> None:
    rows, queries = measured(2000, 3)["voltage"], measured(7, 4)["voltage"]
    distances = ((queries[:, None, :] - rows[None, :, :]) ** 2).sum(axis=2)
    expected = np.argsort(distances, axis=1, kind="stable")[:, :10]
    assert (euclidean_topk(queries, rows, 10) == expected).all()


def test_measured_views_are_prefixes_of_larger_sets() -> None:
    small, large = measured(100, 1), measured(1000, 1)
    assert all(np.array_equal(small[v], large[v][:100]) for v in small)


@pytest.mark.slow
def test_bench_views_times_and_scores_every_view(tmp_path: Path) -> None:
    out = tmp_path / "views.json"
    args = [
        "bench",
        "views",
        "--size",
        "3000",
        "--queries",
        "30",
        "--dim",
        "64",
        "--out",
        str(out),
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    runs = {r["search"]: r for r in data["runs"]}
    blend = "default blend (waveform top 100 reranked)"
    assert set(runs) == {"served", "waveform", "rhythm", "voltage", "blend:waveform+rhythm", blend}
    assert runs[blend]["p50_ms"] > 0 and "recall@10" not in runs[blend]
    assert all(runs[v]["recall@10"] >= 0.99 for v in ("served", "waveform", "rhythm", "voltage"))
    assert runs["served"]["p50_vs_served"] == 1.0 and "recall@10" not in runs["blend:waveform+rhythm"]
    assert data["build"]["dims"] == {"served": 64, "waveform": 64, "rhythm": 4, "voltage": 12}
    assert data["build"]["disk_bytes_per_point"] > 64 * 4 and "--size 3000" in data["command"]
