"""Candidates -> prepared ECGs -> embeddings -> store, streaming, idempotent and resumable.

Why it is shaped like this:
- memory stays bounded whatever the source size: candidates are enumerated lazily and at most
  ``prefetch`` batches are being read/prepared at any time;
- reading and preparing WFDB files is the slow part, so it runs in a process pool; one Embedder in this
  process embeds whole batches, and batches are upserted in order;
- point ids derive from record ids, so a rerun overwrites rather than duplicates; before a batch is read
  the store is asked which of its records it already holds, and those are skipped (resume after a crash
  or kill -9 costs one ``existing`` query per batch);
- a record that cannot be read or prepared is written to the rejects report and the run goes on.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import multiprocessing
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TextIO

import numpy as np
from pydantic import BaseModel

from ecgsearch.encoder.signals import SignalError
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest.sources import Candidate, Record, load
from ecgsearch.search.store import Store

REJECT_COLUMNS = ("record", "path", "reason")


class Reject(BaseModel):
    """One ECG left out, and why."""

    record: str
    path: str
    reason: str


class IngestSummary(BaseModel):
    """What a run did; ``rate`` counts ingested ECGs per second of wall time."""

    collection: str
    model_version: str
    ingested: int = 0
    skipped: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    rejects_path: str | None = None
    rejects: list[Reject] = []

    @property
    def ok(self) -> bool:
        return self.rejected == 0


@dataclass
class _Batch:
    """One batch on its way: the records not yet stored, being loaded by the pool."""

    skipped: int
    futures: list[Future[list[Record | Reject]]]


Progress = Callable[[IngestSummary], None]
MAX_REJECTS_KEPT = 1000  # the summary keeps the first ones; the CSV has them all


def ingest(
    candidates: Iterable[Candidate],
    store: Store,
    embedder: Embedder,
    *,
    batch_size: int = 256,
    workers: int = 1,
    rejects_path: Path | None = None,
    optimize: bool = True,
    on_batch: Progress | None = None,
) -> IngestSummary:
    """Ingest every candidate into ``store`` (created for this model if absent); see the module doc."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    store.create_collection(dim=embedder.dim, model_version=embedder.version)
    summary = IngestSummary(
        collection=store.name,
        model_version=embedder.version,
        rejects_path=str(rejects_path) if rejects_path else None,
    )
    start = time.perf_counter()
    with _pool(workers) as pool, _RejectsFile(rejects_path) as rejects:
        for batch in _loaded_batches(candidates, store, pool, batch_size, workers):
            summary.skipped += batch.skipped
            records: list[Record] = []
            for future in batch.futures:
                for item in future.result():
                    if isinstance(item, Reject):
                        rejects.write(item)
                        summary.rejected += 1
                        if len(summary.rejects) < MAX_REJECTS_KEPT:
                            summary.rejects.append(item)
                    else:
                        records.append(item)
            if records:
                vectors = embedder.embed(np.stack([r.signal for r in records]))
                store.upsert([r.payload for r in records], vectors)
                summary.ingested += len(records)
            _finish(summary, start)
            if on_batch:
                on_batch(summary)
    if optimize:
        store.optimize()
    return _finish(summary, start)


def load_all(candidates: list[Candidate]) -> list[Record | Reject]:
    """Load a chunk in a worker: each ECG becomes a Record or a Reject (never an exception)."""
    return [_load_one(c) for c in candidates]


def _load_one(candidate: Candidate) -> Record | Reject:
    try:
        return load(candidate)
    except SignalError as exc:
        return Reject(record=candidate.record_id, path=candidate.source_path, reason=exc.reason)
    except (OSError, ValueError) as exc:  # unreadable header text, bad metadata
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return Reject(record=candidate.record_id, path=candidate.source_path, reason=reason)


def _loaded_batches(
    candidates: Iterable[Candidate], store: Store, pool: Executor | None, batch_size: int, workers: int
) -> Iterator[_Batch]:
    """Batches in order, keeping ``workers + 1`` of them submitted ahead of the one being embedded."""
    chunk = max(1, -(-batch_size // max(workers, 1)))  # split a batch across the workers
    ahead: deque[_Batch] = deque()
    prefetch = max(workers, 1) + 1
    for group in _chunks(iter(candidates), batch_size):
        held = store.existing([c.record_id for c in group])
        todo = [c for c in group if c.record_id not in held]
        futures = [_submit(pool, part) for part in _chunks(iter(todo), chunk)]
        ahead.append(_Batch(skipped=len(group) - len(todo), futures=futures))
        if len(ahead) >= prefetch:
            yield ahead.popleft()
    while ahead:
        yield ahead.popleft()


def _submit(pool: Executor | None, part: list[Candidate]) -> Future[list[Record | Reject]]:
    if pool is not None:
        return pool.submit(load_all, part)
    done: Future[list[Record | Reject]] = Future()  # no pool: load now, in this process
    done.set_result(load_all(part))
    return done


def _chunks(items: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
    while group := list(islice(items, size)):
        yield group


class _NoPool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _pool(workers: int) -> ProcessPoolExecutor | _NoPool:
    """Worker processes (spawned: the parent already runs onnxruntime threads); 0 means in-process."""
    if workers <= 0:
        return _NoPool()
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
    )


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the ingest process dies (kill -9), instead of hanging on."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _RejectsFile:
    """The rejects CSV, rewritten by each run (a rerun re-reads every record not stored)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.handle: TextIO | None = None

    def __enter__(self) -> _RejectsFile:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("w", newline="")
            self.writer = csv.writer(self.handle)
            self.writer.writerow(REJECT_COLUMNS)
        return self

    def write(self, reject: Reject) -> None:
        if self.handle is not None:
            self.writer.writerow([reject.record, reject.path, reject.reason])
            self.handle.flush()

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


def _finish(summary: IngestSummary, start: float) -> IngestSummary:
    summary.seconds = round(time.perf_counter() - start, 3)
    summary.rate = round(summary.ingested / summary.seconds, 1) if summary.seconds > 0 else 0.0
    return summary
