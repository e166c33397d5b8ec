"""The ingest benchmark on a few real PTB-XL records: every stage sees the same ECGs."""

from __future__ import annotations

from pathlib import Path

from ecgsearch.bench.ingest import run_bench
from ecgsearch.export.runtime import Embedder


def test_ingest_bench_times_every_stage_on_the_same_records(ptbxl_dir: Path) -> None:
    result = run_bench(ptbxl_dir, batch_size=8, workers=1, threads=1, model=None, limit=40)

    assert result["records"] == 40
    assert result["prepared"] == result["end_to_end"]["ingested"] == 40
    assert result["end_to_end"]["rejected"] == 0
    assert result["end_to_end"]["steady_rate_after_first_batch"] > 0
    assert result["read_prepare"]["pool_start_seconds"] > 0
    split = result["read_prepare"]["per_ecg_single_process"]
    assert split["records"] == 40 and split["read_ms"] > 0 and split["prepare_ms"] > 0
    assert split["batch"] == 8 and split["prepare_single_ms"] > 0  # batch of 8 per worker, as ingest
    assert result["core_ms_per_ecg"]["prepare"] == split["prepare_ms"]
    assert result["steady_vs_encoder"] > 0
    assert result["model_version"] == Embedder(threads=1).version
    assert not Path(result["source"]).is_absolute()  # results name files relative to the repository
    assert result["machine"]["cpus"] >= 1
