"""Where ingest time goes: end-to-end rate vs the bare encoder and vs reading/preparing alone.

The end-to-end rate alone says little: the question is which stage bounds it. So each stage is timed
on its own with the same records, batch size, threads and workers, and the pipeline's overhead is
reported against both the bare encoder and the slowest stage.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from ecgsearch.bench.results import load_average, machine, relative
from ecgsearch.ecg import signals
from ecgsearch.ingest.pipeline import IngestSummary, _chunks, ingest, load_all, worker_pool
from ecgsearch.ingest.sources import Candidate, Record, enumerate_source, select

if TYPE_CHECKING:
    from ecgsearch.export.runtime import Embedder


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def stage_read_prepare(
    candidates: list[Candidate], workers: int, batch_size: int
) -> tuple[list[Record], float, float]:
    """Every record loaded through the same worker pool the pipeline uses.

    Returns the records, the seconds spent loading them, and the seconds the pool took to start
    (spawned workers import numpy and the readers once; timed apart so the rate is the steady one).
    """
    with worker_pool(workers) as pool:
        start = time.perf_counter()
        if pool:
            list(pool.map(load_all, [[] for _ in range(workers)]))
        started = time.perf_counter()
        chunk = max(1, -(-batch_size // max(workers, 1)))
        parts = list(_chunks(iter(candidates), chunk))
        results = list(pool.map(load_all, parts)) if pool else [load_all(p) for p in parts]
        seconds = time.perf_counter() - started
    return [r for part in results for r in part if isinstance(r, Record)], seconds, started - start


class _BatchClock:
    """Times each batch of an ingest run, so the rate after the first batch (pool warm) is known."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def __call__(self, summary: IngestSummary) -> None:
        self.marks.append((time.perf_counter(), summary.ingested + summary.rejected))

    def steady_rate(self) -> float | None:
        if len(self.marks) < 3:
            return None
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return _rate(n1 - n0, t1 - t0)


class ReadPrepareSplit(TypedDict):
    """``split_read_prepare``'s result: CPU ms per ECG of each step."""

    records: int
    batch: int
    clock: str
    read_ms: float
    prepare_ms: float
    prepare_single_ms: float


def split_read_prepare(candidates: list[Candidate], n: int = 512, chunk: int = 128) -> ReadPrepareSplit:
    """One process: CPU ms per ECG reading, preparing in batches of ``chunk`` as ingest's workers do,
    and preparing one at a time (the single-ECG path the service takes).

    CPU time of this process, not wall time: on cores shared with other jobs wall time counts the
    neighbours' work too, CPU time much less (cache contention aside). One batch is prepared before
    the clock starts, as a worker has after its first batch.
    """
    sample = candidates[:n]
    t0 = time.process_time()
    raws = [signals.read_wfdb(c.path) for c in sample]
    t1 = time.process_time()
    signals.prepare_batch(raws[:chunk])  # untimed: once-per-process costs (filter designs, first calls)
    t1b = time.process_time()
    for start in range(0, len(raws), chunk):
        signals.prepare_batch(raws[start : start + chunk])
    t2 = time.process_time()
    for raw in raws:
        signals.prepare(raw)
    t3 = time.process_time()
    return {
        "records": len(sample),
        "batch": chunk,
        "clock": "process CPU time",
        "read_ms": round(1e3 * (t1 - t0) / len(sample), 3),
        "prepare_ms": round(1e3 * (t2 - t1b) / len(sample), 3),
        "prepare_single_ms": round(1e3 * (t3 - t2) / len(sample), 3),
    }


def stage_encoder(embedder: Embedder, arrays: np.ndarray, batch_size: int) -> float:
    """Seconds for Embedder.embed over preloaded arrays, after one warm-up batch."""
    embedder.embed(arrays[:batch_size])
    start = time.perf_counter()
    for i in range(0, len(arrays), batch_size):
        embedder.embed(arrays[i : i + batch_size])
    return time.perf_counter() - start


def run_bench(
    source: Path,
    *,
    batch_size: int,
    workers: int,
    threads: int | None,
    model: Path | None,
    limit: int | None = None,
) -> dict:
    """All stages on the same records; returns the results document."""
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.store import open_store

    load_before = load_average()
    candidates = list(select(enumerate_source(source)))[:limit]
    embedder = Embedder(model, threads=threads)
    records, read_s, pool_start_s = stage_read_prepare(candidates, workers, batch_size)
    arrays = np.stack([r.signal for r in records])
    encoder_s = stage_encoder(embedder, arrays, batch_size)
    split = split_read_prepare(candidates, chunk=max(1, -(-batch_size // max(workers, 1))))
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(path=Path(tmp) / "store", collection="bench")
        clock = _BatchClock()
        try:
            summary = ingest(
                candidates,
                store,
                embedder,
                batch_size=batch_size,
                workers=workers,
                optimize=False,
                on_batch=clock,
            )
            t0 = time.perf_counter()
            store.optimize()
            optimize_s = time.perf_counter() - t0
        finally:
            store.close()
    n = len(records)
    e2e_rate, encoder_rate, read_rate = summary.rate, _rate(n, encoder_s), _rate(n, read_s)
    steady_rate = clock.steady_rate()
    bottleneck = min(encoder_rate, read_rate)
    cpus = os.cpu_count() or 1
    encoder_core_ms = 1e3 * min(threads or cpus, cpus) / encoder_rate if encoder_rate else 0.0
    read_core_ms = split["read_ms"] + split["prepare_ms"]
    return {
        "source": relative(source),
        "records": len(candidates),
        "prepared": n,
        "batch_size": batch_size,
        "workers": workers,
        "threads": threads,
        "model_version": embedder.version,
        "machine": machine(
            load_average_before_after=[load_before, load_average()],
            note="cores shared with other jobs: stage rates are noisy; core-ms per ECG are steadier",
        ),
        "end_to_end": {
            "ingested": summary.ingested,
            "rejected": summary.rejected,
            "seconds": summary.seconds,
            "rate": e2e_rate,
            "steady_rate_after_first_batch": steady_rate,
        },
        "optimize_seconds": round(optimize_s, 2),
        "bare_encoder": {"seconds": round(encoder_s, 3), "rate": encoder_rate},
        "read_prepare": {
            "seconds": round(read_s, 3),
            "rate": read_rate,
            "pool_start_seconds": round(pool_start_s, 3),
            "per_ecg_single_process": split,
        },
        "overhead_vs_encoder": round(encoder_rate / e2e_rate - 1, 3) if e2e_rate else None,
        "overhead_vs_slowest_stage": round(bottleneck / e2e_rate - 1, 3) if e2e_rate else None,
        "steady_overhead_vs_encoder": round(encoder_rate / steady_rate - 1, 3) if steady_rate else None,
        "steady_overhead_vs_slowest_stage": round(bottleneck / steady_rate - 1, 3) if steady_rate else None,
        "steady_vs_encoder": round(steady_rate / encoder_rate, 3) if steady_rate and encoder_rate else None,
        "slowest_stage": "read_prepare" if read_rate < encoder_rate else "encoder",
        "core_ms_per_ecg": {
            "read_prepare": round(read_core_ms, 2),
            "read": split["read_ms"],
            "prepare": split["prepare_ms"],
            "encoder": round(encoder_core_ms, 2),
            "ceiling_rate_all_cores": round(1e3 * cpus / (read_core_ms + encoder_core_ms), 1),
        },
    }
