"""Where ingest time goes: the end-to-end rate against the ceiling the cores allow, and every step's CPU.

The end-to-end rate alone says little. The ceiling is what the cores could do if they only read,
prepared and encoded: cores / (CPU ms per ECG of those three). Everything else ingest does per ECG
(describing it: payload, content hash, fingerprint; handing it between processes; its named views;
marking copies; the upsert) is timed on its own too, in one process on the same records, so the gap
between the steady rate and the ceiling splits into work beyond the three (itemised) and waiting
(what the pipeline fails to overlap). Every figure is process CPU time unless it says rate: on cores
shared with other jobs, wall time counts the neighbours' work too.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from ecgsearch.bench.results import load_average, machine, relative
from ecgsearch.ecg import signals, views
from ecgsearch.ecg.identity import Pseudonymizer
from ecgsearch.ingest.pipeline import IngestSummary, _chunks, _load_one, ingest, load_all, worker_pool
from ecgsearch.ingest.sources import Candidate, Record, enumerate_source, read, select

if TYPE_CHECKING:
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.store import Store

SAMPLE = 512  # ECGs timed step by step in one process


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def _children_cpu() -> float | None:
    """CPU seconds so far of this process's running children (the ingest's worker processes), read
    from /proc; None where there is no /proc."""
    me, tick, total = str(os.getpid()), os.sysconf("SC_CLK_TCK"), 0
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if fields[1] == me:  # state, ppid, ... utime (11), stime (12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def stage_read_prepare(
    candidates: list[Candidate], workers: int, batch_size: int
) -> tuple[list[Record], float, float, float | None]:
    """Every record loaded through the same worker pool the pipeline uses.

    Returns the records, the seconds spent loading them, the seconds the pool took to start
    (spawned workers import numpy and the readers once; timed apart so the rate is the steady one),
    and the workers' CPU seconds for the loading (None without /proc, or without workers).
    """
    with worker_pool(workers) as pool:
        start = time.perf_counter()
        if pool:
            list(pool.map(load_all, [[] for _ in range(workers)]))
        started, cpu_before = time.perf_counter(), _children_cpu()
        chunk = max(1, -(-batch_size // max(workers, 1)))
        parts = list(_chunks(iter(candidates), chunk))
        results = list(pool.map(load_all, parts)) if pool else [load_all(p) for p in parts]
        seconds, cpu_after = time.perf_counter() - started, _children_cpu()
    records = [r for part in results for r in part if isinstance(r, Record)]
    cpu = cpu_after - cpu_before if pool and cpu_before is not None and cpu_after is not None else None
    return records, seconds, started - start, cpu


class _BatchClock:
    """Marks each stored batch of an ingest run (wall and this process's CPU), so the rate after the
    first batch (pool warm) and the CPU this process spends per ECG meanwhile are known."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, int]] = []

    def __call__(self, summary: IngestSummary) -> None:
        self.marks.append((time.perf_counter(), time.process_time(), summary.ingested + summary.rejected))

    def steady(self) -> tuple[float, float] | None:
        """(ECGs per second, this process's CPU ms per ECG) from the first batch's end to the last's."""
        if len(self.marks) < 3:
            return None
        (t0, c0, n0), (t1, c1, n1) = self.marks[0], self.marks[-1]
        return _rate(n1 - n0, t1 - t0), round(1e3 * (c1 - c0) / (n1 - n0), 3)


class StageCosts(TypedDict):
    """``stage_costs``' result: CPU ms per ECG of each step of ingest, in one process."""

    records: int
    batch: int
    clock: str
    read: float
    prepare: float
    prepare_single: float
    describe: float
    hand_over: float
    encode: float
    views: float
    copies: float
    upsert: float


def prefill(store: Store, embedder: Embedder, n: int, *, seed: int = 0) -> None:
    """``n`` synthetic ECG points (``bench.synthetic``, fixed seed, the model's dim) written into
    ``store`` as ingest would have left them: not indexed yet. Measures ingest into an archive that is
    not empty; the points carry no fingerprint, so none is ever confirmed as a copy, but every copy
    search goes through them. Their views are left out (a gain-suspect ECG stores none either)."""
    from ecgsearch.bench import synthetic
    from ecgsearch.ecg.schema import EcgPayload
    from ecgsearch.search.engine.store import view_specs

    store.create_collection(
        dim=embedder.dim,
        model_version=embedder.version,
        views=view_specs(**views.collection_layout(embedder)),
    )
    mix = synthetic.mixture(embedder.dim, seed=seed)
    written = 0
    for vectors, _ in synthetic.chunks(mix, n):
        payloads = [
            EcgPayload(record_id=f"synthetic:{written + i}", dataset="synthetic", sampling_rate_hz=100.0)
            for i in range(len(vectors))
        ]
        store.upsert(payloads, vectors, [{} for _ in payloads])
        written += len(vectors)


def stage_costs(
    candidates: list[Candidate], model: Path | None, chunk: int, prefilled: int = 0
) -> StageCosts:
    """Every step of ingest, one after another in this process over the first ``SAMPLE`` records in
    chunks of ``chunk`` (as a worker prepares them): CPU ms per ECG of each.

    read, prepare (in batches, as workers do; one at a time as the service does), describe (payload,
    content hash, fingerprint: the rest of a worker's ``load``), hand over (pickling a chunk's Records
    and back: what crosses between processes), encode (onnxruntime on one thread, the least CPU per
    ECG), views (rhythm, voltage), copies (``mark_copies`` and ``settle_copy_gains`` against the chunks
    stored before) and upsert into a fresh embedded store (holding ``prefilled`` synthetic points
    first). One chunk goes through every step before the clock starts, paying the once-per-process
    costs (filter designs, first calls).
    """
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.copies import mark_copies, settle_copy_gains
    from ecgsearch.search.engine.store import open_store, view_specs

    sample = candidates[:SAMPLE]
    embedder = Embedder(model, threads=1)
    pseudonyms = Pseudonymizer.for_this_process()
    spent: dict[str, float] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        start = time.process_time()
        yield
        spent[name] = spent.get(name, 0.0) + time.process_time() - start

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(path=Path(tmp) / "store", collection="stages")
        store.create_collection(
            dim=embedder.dim,
            model_version=embedder.version,
            views=view_specs(**views.collection_layout(embedder)),
        )
        if prefilled:
            prefill(store, embedder, prefilled)
        try:
            for n, part in enumerate([sample[:chunk], *_chunks(iter(sample), chunk)]):
                if n == 1:
                    spent.clear()  # the first pass was the warm-up
                with step("read"):
                    raws = [read(c) for c in part]
                with step("prepare"):
                    ecgs = signals.prepare_batch(raws)
                with step("describe"):
                    loaded = [
                        _load_one(c, pseudonyms, r, e) for c, r, e in zip(part, raws, ecgs, strict=True)
                    ]
                    records = [r for r in loaded if isinstance(r, Record)]
                with step("hand_over"):
                    records = pickle.loads(pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
                x = np.stack([r.signal for r in records])
                with step("encode"):
                    served = embedder.embed(x)
                with step("views"):
                    named = views.view_vectors(served, x, learned_dim=embedder.learned_dim)
                if n == 0:
                    continue  # the warm-up's ECGs are the first chunk's: not stored twice
                payloads = [r.payload for r in records]
                with step("copies"):
                    mark_copies(payloads, served, store)
                    named = settle_copy_gains(payloads, named, store)
                with step("upsert"):
                    store.upsert(named.flagged(payloads), served, named.rows())
            singles = [signals.read_wfdb(c.path) for c in sample[:chunk]]
            with step("prepare_single"):
                for raw in singles:
                    signals.prepare(raw)
        finally:
            store.close()
    timed_ecgs = len(sample)
    per = {name: round(1e3 * seconds / timed_ecgs, 3) for name, seconds in spent.items()}
    return {
        "records": timed_ecgs,
        "batch": chunk,
        "clock": "process CPU time",
        "read": per["read"],
        "prepare": per["prepare"],
        "prepare_single": round(1e3 * spent["prepare_single"] / len(singles), 3),
        "describe": per["describe"],
        "hand_over": per["hand_over"],
        "encode": per["encode"],
        "views": per["views"],
        "copies": per["copies"],
        "upsert": per["upsert"],
    }


def stage_encoder(embedder: Embedder, arrays: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Seconds and CPU seconds for Embedder.embed over preloaded arrays, after one warm-up batch."""
    embedder.embed(arrays[:batch_size])
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(arrays), batch_size):
        embedder.embed(arrays[i : i + batch_size])
    return time.perf_counter() - start, time.process_time() - cpu


def run_bench(
    source: Path,
    *,
    batch_size: int,
    workers: int,
    threads: int | None,
    model: Path | None,
    limit: int | None = None,
    prefilled: int = 0,
) -> dict:
    """All stages on the same records, into stores holding ``prefilled`` synthetic points first;
    returns the results document."""
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.store import open_store

    load_before = load_average()
    candidates = list(select(enumerate_source(source)))[:limit]
    embedder = Embedder(model, threads=threads, spinning=False)  # as `ecgsearch ingest` makes it
    records, read_s, pool_start_s, workers_cpu = stage_read_prepare(candidates, workers, batch_size)
    arrays = np.stack([r.signal for r in records])
    encoder_s, encoder_cpu = stage_encoder(embedder, arrays, batch_size)
    chunk = max(1, -(-batch_size // max(workers, 1)))
    costs = stage_costs(candidates, model, chunk, prefilled)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(path=Path(tmp) / "store", collection="bench")
        clock = _BatchClock()
        try:
            if prefilled:
                prefill(store, embedder, prefilled)
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
    cpus = os.cpu_count() or 1
    steady = clock.steady()
    steady_rate, main_ms = steady if steady else (None, None)
    workers_ms = round(1e3 * workers_cpu / n, 3) if workers_cpu is not None and n else None
    ideal_ms = costs["read"] + costs["prepare"] + costs["encode"]
    beyond = {
        "describe": costs["describe"],
        "hand_over": costs["hand_over"],
        "views": costs["views"],
        "copies": costs["copies"],
        "upsert": costs["upsert"],
    }
    every_ms = ideal_ms + sum(beyond.values())
    ceiling = 1e3 * cpus / ideal_ms
    pipeline_ms = main_ms + (workers_ms or 0.0) if main_ms is not None else None
    encoder_rate = _rate(n, encoder_s)
    return {
        "source": relative(source),
        "records": len(candidates),
        "prepared": n,
        "prefilled": {
            "points": prefilled,
            "what": "synthetic points (bench.synthetic, seed 0) stored before the ingest, not indexed, as "
            "an ingest leaves them; both stores (the pipeline's and the per-step one) hold them",
        },
        "batch_size": batch_size,
        "workers": workers,
        "threads": threads,
        "model_version": embedder.version,
        "machine": machine(
            load_average_before_after=[load_before, load_average()],
            note="cores shared with other jobs: rates are noisy; CPU ms per ECG are steadier",
        ),
        "end_to_end": {
            "ingested": summary.ingested,
            "rejected": summary.rejected,
            "seconds": summary.seconds,
            "rate": summary.rate,
            "steady_rate_after_first_batch": steady_rate,
        },
        "optimize_seconds": round(optimize_s, 2),
        "bare_encoder": {
            "threads": threads,
            "seconds": round(encoder_s, 3),
            "rate": encoder_rate,
            "cpu_ms_per_ecg": round(1e3 * encoder_cpu / n, 3) if n else None,
        },
        "read_prepare": {
            "seconds": round(read_s, 3),
            "rate": _rate(n, read_s),
            "pool_start_seconds": round(pool_start_s, 3),
        },
        "core_ms_per_ecg": costs,
        "ceiling": {
            "rule": "cores / (read + prepare + encode CPU ms per ECG)",
            "cores": cpus,
            "read_prepare_encode_ms": round(ideal_ms, 3),
            "rate": round(ceiling, 1),
        },
        "steady_vs_ceiling": round(steady_rate / ceiling, 3) if steady_rate else None,
        # On cores shared with other jobs the pipeline gets less than all of them: its own CPU per ECG
        # against the three steps' says what it reaches where the cores are its own.
        "cpu_vs_ceiling": round(ideal_ms / pipeline_ms, 3) if pipeline_ms else None,
        "cores_used_steady": round(steady_rate * pipeline_ms / 1e3, 2)
        if steady_rate and pipeline_ms
        else None,
        "beyond_ceiling_ms": {**beyond, "total": round(sum(beyond.values()), 3)},
        "every_step_ms": round(every_ms, 3),
        "every_step_rate": round(1e3 * cpus / every_ms, 1),
        "pipeline_cpu_ms_per_ecg": {
            "main_process_steady": main_ms,
            "workers": workers_ms,  # the warm pool loading every record, as the pipeline's workers do
            "total": round(pipeline_ms, 3) if pipeline_ms is not None else None,
        },
        "steady_vs_encoder": round(steady_rate / encoder_rate, 3) if steady_rate and encoder_rate else None,
    }
