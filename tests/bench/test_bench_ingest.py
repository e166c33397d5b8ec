"""The ingest benchmark on a few real PTB-XL records: every stage sees the same ECGs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecgsearch.bench.ingest import run_bench
from ecgsearch.export.runtime import Embedder


def test_ingest_bench_times_every_stage_on_the_same_records(ptbxl_dir: Path) -> None:
    result = run_bench(ptbxl_dir, batch_size=8, workers=1, threads=1, model=None, limit=40)

    assert result["records"] == 40
    assert result["prepared"] == result["end_to_end"]["ingested"] == 40
    assert result["end_to_end"]["rejected"] == 0
    steady = result["end_to_end"]["steady_rate_after_first_batch"]
    assert steady > 0
    assert result["read_prepare"]["pool_start_seconds"] > 0
    costs = result["core_ms_per_ecg"]
    assert costs["records"] == 40 and costs["batch"] == 8  # batch of 8 per worker, as ingest
    steps = ("read", "prepare", "describe", "hand_over", "encode", "views", "copies", "upsert")
    assert all(costs[step] > 0 for step in (*steps, "prepare_single"))
    # the ceiling is the cores over read + prepare + encode, and the ratio is taken in the same run
    three = costs["read"] + costs["prepare"] + costs["encode"]
    assert result["ceiling"]["read_prepare_encode_ms"] == pytest.approx(three, abs=1e-3)
    assert result["ceiling"]["rate"] == pytest.approx(1e3 * result["ceiling"]["cores"] / three, rel=1e-3)
    assert result["steady_vs_ceiling"] == pytest.approx(steady / result["ceiling"]["rate"], abs=1e-3)
    beyond = result["beyond_ceiling_ms"]
    assert beyond["total"] == pytest.approx(sum(costs[s] for s in steps[2:] if s != "encode"), abs=1e-2)
    assert result["every_step_ms"] == pytest.approx(three + beyond["total"], abs=1e-2)
    cpu = result["pipeline_cpu_ms_per_ecg"]
    assert cpu["main_process_steady"] > 0 and cpu["workers"] > 0
    assert cpu["total"] == pytest.approx(cpu["main_process_steady"] + cpu["workers"], abs=1e-2)
    assert result["cpu_vs_ceiling"] == pytest.approx(three / cpu["total"], abs=1e-2)
    assert result["cores_used_steady"] == pytest.approx(steady * cpu["total"] / 1e3, abs=0.02)
    assert result["model_version"] == Embedder(threads=1).version
    assert not Path(result["source"]).is_absolute()  # results name files relative to the repository
    assert result["machine"]["cpus"] >= 1


def test_prefilled_stores_hold_the_synthetic_points_before_the_ingest(
    ptbxl_dir: Path, tmp_path: Path
) -> None:
    """--prefill: the synthetic points are in the store, not indexed (as ingest leaves them), and never
    mistaken for copies of the real ECGs ingested beside them (they carry no fingerprint)."""
    from ecgsearch.bench.ingest import prefill
    from ecgsearch.ingest.pipeline import ingest
    from ecgsearch.ingest.sources import enumerate_source, select
    from ecgsearch.search.engine.store import EdgeStore

    embedder = Embedder(threads=1)
    with EdgeStore(tmp_path / "store", "ecgs") as store:
        prefill(store, embedder, 3000)
        info = store.shard.info()
        assert info.points_count == 3000 and info.indexed_vectors_count == 0
        candidates = list(select(enumerate_source(ptbxl_dir)))[:24]
        summary = ingest(candidates, store, embedder, batch_size=8, optimize=False)
        assert summary.ingested == 24 and summary.duplicates == 0 and store.count() == 3024
    result = run_bench(ptbxl_dir, batch_size=8, workers=0, threads=1, model=None, limit=16, prefilled=2000)
    assert result["prefilled"]["points"] == 2000 and result["end_to_end"]["ingested"] == 16
