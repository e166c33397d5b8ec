"""Candidates -> prepared ECGs -> embeddings -> store, streaming, idempotent and resumable.

Why it is shaped like this:
- memory stays bounded whatever the source size: candidates are enumerated lazily and at most
  ``prefetch`` batches are being read/prepared at any time;
- reading, preparing and describing ECGs (payload, content hash, fingerprint) runs in a process pool;
  one Embedder in this process embeds whole batches in a thread, one batch ahead of the store stage
  (marking copies, upserting), so that both keep a core busy; batches are upserted in order;
- point ids derive from record ids, and an id is never overwritten: before a batch is read the store
  is asked which of its ids it holds and with which content hash. Those records are only read and
  hashed, not prepared or embedded: the same hash is the same ECG (skipped, so a rerun or a resume
  after kill -9 adds only what is missing), another hash is a different ECG under a taken id (a
  collision, written to the rejects report; the stored one is kept). Ids stored while a batch was in
  flight, and one id twice in a batch, are checked the same way just before the upsert;
- an ECG that is the same recording as one stored before it (or earlier in its batch), in any
  dataset (the Challenge re-distributes PTB-XL; an archive holds one ECG as aECG and as DICOM), is
  stored with ``duplicate_of`` naming that first one, so searches can skip it: candidates are its
  nearest stored neighbours, confirmed by their content fingerprints (``search.engine.copies``);
- a record that cannot be read or prepared is written to the rejects report and the run goes on;
- hospital exports store no path, so an embedded store keeps their signals as read in its archive
  (``<store>/archive/<hash[:2]>/<hash>.npz``, as the service keeps pushed ECGs) for GetEcg;
- workers die with the ingest process, whenever it dies (see ``_die_with_parent``).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TextIO

import numpy as np
from pydantic import BaseModel

from ecgsearch.ecg import fingerprint, views
from ecgsearch.ecg.identity import Pseudonymizer
from ecgsearch.ecg.readers import ReaderError
from ecgsearch.ecg.signals import RawEcg, SignalError, prepare_batch
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest.sources import Candidate, Record, file_label, hash_of, load, load_file, read
from ecgsearch.search.engine.copies import mark_copies, settle_copy_gains
from ecgsearch.search.engine.store import Store, view_specs
from ecgsearch.search.serving.push import Archive

REJECT_COLUMNS = ("record", "path", "reason")
MAX_REASON = 300


class Reject(BaseModel):
    """One ECG left out, and why."""

    record: str
    path: str
    reason: str


class IngestSummary(BaseModel):
    """What a run did; ``rate`` counts ingested ECGs per second of wall time.

    ``rejected`` includes ``collisions`` (a different ECG under a stored id); ``duplicates`` counts the
    ingested ECGs stored with ``duplicate_of``.
    """

    collection: str
    model_version: str
    ingested: int = 0
    skipped: int = 0
    rejected: int = 0
    collisions: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    rejects_path: str | None = None
    rejects: list[Reject] = []

    @property
    def ok(self) -> bool:
        return self.rejected == 0


@dataclass(frozen=True)
class Seen:
    """A record whose id was already stored: read and hashed only, for the main process to compare."""

    record_id: str
    path: str
    content_hash: str


@dataclass
class _Encoded:
    """A batch's records to store, and their served vectors and views being computed."""

    records: list[Record]
    views: Future[tuple[np.ndarray, views.ViewVectors]] | None  # None: nothing to store


@dataclass
class _Batch:
    """One batch on its way: stored ids with their hashes, and the pool loading the batch."""

    known: dict[str, str | None]
    futures: list[Future[list[Record | Reject | Seen]]]


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
    pseudonyms: Pseudonymizer | None = None,
    duplicate_threshold: float = fingerprint.COPY_THRESHOLD,
    site: str | None = None,
) -> IngestSummary:
    """Ingest every candidate into ``store`` (created for this model if absent); see the module doc.

    ``pseudonyms`` keys patient pseudonyms: give the site's (``identity.site_pseudonymizer``) so a
    patient keeps one pseudonym across runs; None uses a random key good for this process only.
    ``site`` sets every new record's ``site`` payload field (None: the payload's default, ``local``).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not 0.0 < duplicate_threshold <= 1.0:
        raise ValueError(f"duplicate_threshold must be in (0, 1], got {duplicate_threshold}")
    pseudonyms = pseudonyms or Pseudonymizer.for_this_process()
    store.create_collection(
        dim=embedder.dim,
        model_version=embedder.version,
        views=view_specs(**views.collection_layout(embedder)),
    )
    summary = IngestSummary(
        collection=store.name,
        model_version=embedder.version,
        rejects_path=str(rejects_path) if rejects_path else None,
    )
    start = time.perf_counter()
    with worker_pool(workers) as pool, _RejectsFile(rejects_path) as rejects:

        def reject(item: Reject, *, collision: bool = False) -> None:
            rejects.write(item)
            summary.rejected += 1
            summary.collisions += collision
            if len(summary.rejects) < MAX_REJECTS_KEPT:
                summary.rejects.append(item)

        def stored(batch: _Encoded) -> None:
            """The store stage, batch after batch in order: mark copies against everything stored
            before, archive, upsert."""
            if batch.views is not None:
                vectors, named = batch.views.result()
                payloads = [r.payload for r in batch.records]
                if site is not None:  # before marking: copies are looked for within the site
                    for payload in payloads:
                        payload.site = site
                summary.duplicates += mark_copies(payloads, vectors, store, threshold=duplicate_threshold)
                named = settle_copy_gains(payloads, named, store)
                _archive(batch.records, store)
                store.upsert(named.flagged(payloads), vectors, named.rows())
                summary.ingested += len(batch.records)
            _finish(summary, start)
            if on_batch:
                on_batch(summary)

        # One batch is encoded (onnxruntime and numpy, outside the GIL mostly) while the one before it
        # is marked and stored, so this process keeps a second core busy where there is one.
        pending: _Encoded | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="ingest-encode") as encoding:
            for batch in _loaded_batches(candidates, store, pool, batch_size, workers, pseudonyms):
                records: list[Record] = []
                for future in batch.futures:
                    for item in future.result():
                        if isinstance(item, Reject):
                            reject(item)
                        elif isinstance(item, Seen):
                            clash = _compare(item.record_id, item.path, item.content_hash, batch.known)
                            if clash is None:
                                summary.skipped += 1
                            else:
                                reject(clash, collision=True)
                        else:
                            records.append(item)
                in_flight = pending.records if pending is not None else []
                records, skipped, clashes = _settle(records, store, in_flight)
                summary.skipped += skipped
                for clash in clashes:
                    reject(clash, collision=True)
                encoded = _Encoded(records, None)
                if records:
                    ecgs = np.stack([r.signal for r in records])
                    encoded.views = encoding.submit(views.embed_views, embedder, ecgs)
                if pending is not None:
                    stored(pending)
                pending = encoded
            if pending is not None:
                stored(pending)
    if optimize:
        store.optimize()
    return _finish(summary, start)


def _archive(records: list[Record], store: Store) -> None:
    """Keep hospital exports' signals beside an embedded store (before their points: a stored point
    always finds its archive). A Qdrant server has no folder of ours: nothing is kept there."""
    root = getattr(store, "root", None)
    if root is None:
        return
    archive = Archive(Path(root) / "archive")
    for record in records:
        if record.raw is not None and record.payload.content_hash:
            archive.save(record.payload.content_hash, record.raw)
            record.payload.archived = True


def _compare(record_id: str, path: str, digest: str, stored: dict[str, str | None]) -> Reject | None:
    """None when the stored ECG under this id has this content; else the collision, in words."""
    held = stored[record_id]
    if held == digest:
        return None
    if held is None:
        why = (
            f"{record_id} is stored without a content hash (ingested by an older version), so this "
            "file cannot be told apart from it; the stored one is kept: re-ingest into a new collection"
        )
    else:
        why = (
            f"id collision: a different ECG is already stored as {record_id} (content hash "
            f"{held[:12]}, this file {digest[:12]}); the stored one is kept"
        )
    return Reject(record=record_id, path=path, reason=why)


def _settle(
    records: list[Record], store: Store, in_flight: Sequence[Record] = ()
) -> tuple[list[Record], int, list[Reject]]:
    """Check a batch's new records against ids stored since it was submitted, the batch ahead of it
    still on its way to the store (``in_flight``: as if stored), and each other:
    (records to store, same-ECG repeats skipped, collisions)."""
    if not records:
        return records, 0, []
    ids = [r.payload.record_id for r in records]
    held = store.content_hashes(ids)
    wanted = set(ids)
    held |= {r.payload.record_id: r.payload.content_hash for r in in_flight if r.payload.record_id in wanted}
    kept: list[Record] = []
    skipped, clashes = 0, []
    for record in records:
        p = record.payload
        if p.record_id in held:
            clash = _compare(p.record_id, p.source_path or "", p.content_hash or "", held)
            if clash is None:
                skipped += 1
            else:
                clashes.append(clash)
        else:
            held[p.record_id] = p.content_hash
            kept.append(record)
    return kept, skipped, clashes


def load_all(
    candidates: list[Candidate],
    known: frozenset[str] = frozenset(),
    pseudonyms: Pseudonymizer | None = None,
) -> list[Record | Reject | Seen]:
    """Load a chunk in a worker: each ECG becomes a Record, a Reject, or (id in ``known``) a Seen.

    The chunk's ECGs are prepared together (``signals.prepare_batch``): one filter call per chunk.
    """
    pseudonyms = pseudonyms or Pseudonymizer.for_this_process()
    # A hospital export is read and prepared alone (its id is known only once read); WFDB records in a batch.
    out: list[Record | Reject | Seen | RawEcg] = [
        _load_file(c, pseudonyms) if c.file_format is not None else _read_one(c, known) for c in candidates
    ]
    todo = [i for i, r in enumerate(out) if isinstance(r, RawEcg)]
    prepared = prepare_batch([out[i] for i in todo])  # type: ignore[misc]  # RawEcg by construction
    for i, ecg in zip(todo, prepared, strict=True):
        raw, candidate = out[i], candidates[i]
        out[i] = _load_one(candidate, pseudonyms, raw, ecg)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]  # every slot holds a Record, Reject or Seen now


def _reject(candidate: Candidate, exc: Exception) -> Reject:
    path = candidate.source_path or ""
    if isinstance(exc, SignalError):
        return Reject(record=candidate.record_id, path=path, reason=exc.reason[:MAX_REASON])
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:MAX_REASON]  # unreadable header, bad metadata
    return Reject(record=candidate.record_id, path=path, reason=reason)


def _read_one(candidate: Candidate, known: frozenset[str]) -> RawEcg | Reject | Seen:
    try:
        raw = read(candidate)
        if candidate.record_id in known:
            return Seen(candidate.record_id, candidate.source_path or "", hash_of(raw))
        return raw
    except (OSError, ValueError) as exc:  # SignalError is a ValueError
        return _reject(candidate, exc)


def _load_one(
    candidate: Candidate, pseudonyms: Pseudonymizer, raw: RawEcg, ecg: np.ndarray | SignalError
) -> Record | Reject:
    try:
        if isinstance(ecg, SignalError):
            raise ecg
        return load(candidate, pseudonyms, raw, signal=ecg)
    except (OSError, ValueError) as exc:
        return _reject(candidate, exc)


def _load_file(candidate: Candidate, pseudonyms: Pseudonymizer) -> Record | Reject:
    """A hospital export: its id is known once read; a failure is named by the file's bytes' hash and
    says only what the reader or preparation says (a field and a reason, never personal data)."""
    try:
        return load_file(candidate, pseudonyms)
    except ReaderError as exc:
        return Reject(record=file_label(candidate), path="", reason=str(exc)[:MAX_REASON])
    except SignalError as exc:
        return Reject(record=exc.record, path="", reason=exc.reason[:MAX_REASON])
    except ValueError as exc:  # a header value the payload refuses: name the field only
        reason = f"{type(exc).__name__} in the payload of a {candidate.file_format} file"
        return Reject(record=file_label(candidate), path="", reason=reason)


def _loaded_batches(
    candidates: Iterable[Candidate],
    store: Store,
    pool: Executor | None,
    batch_size: int,
    workers: int,
    pseudonyms: Pseudonymizer,
) -> Iterator[_Batch]:
    """Batches in order, keeping ``workers + 1`` of them submitted ahead of the one being embedded."""
    chunk = max(1, -(-batch_size // max(workers, 1)))  # split a batch across the workers
    ahead: deque[_Batch] = deque()
    prefetch = max(workers, 1) + 1
    for group in _chunks(iter(candidates), batch_size):
        known = store.content_hashes([c.record_id for c in group])
        ids = frozenset(known)
        futures = [_submit(pool, part, ids, pseudonyms) for part in _chunks(iter(group), chunk)]
        ahead.append(_Batch(known=known, futures=futures))
        if len(ahead) >= prefetch:
            yield ahead.popleft()
    while ahead:
        yield ahead.popleft()


def _submit(
    pool: Executor | None, part: list[Candidate], known: frozenset[str], pseudonyms: Pseudonymizer
) -> Future[list[Record | Reject | Seen]]:
    known = frozenset(c.record_id for c in part if c.record_id in known)
    if pool is not None:
        return pool.submit(load_all, part, known, pseudonyms)
    done: Future[list[Record | Reject | Seen]] = Future()  # no pool: load now, in this process
    done.set_result(load_all(part, known, pseudonyms))
    return done


def _chunks(items: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
    while group := list(islice(items, size)):
        yield group


class _NoPool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def worker_pool(workers: int) -> ProcessPoolExecutor | _NoPool:
    """Worker processes (spawned: the parent already runs onnxruntime threads); 0 means in-process."""
    if workers <= 0:
        return _NoPool()
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )


def _die_with_parent(parent: int) -> None:
    """A worker ends when the ingest process dies, whenever that happens.

    Linux: PR_SET_PDEATHSIG makes the kernel SIGKILL the worker when its parent dies. It only covers a
    parent alive when it is set, and a spawned worker sets it after seconds of imports, so the parent
    pid is checked once it is set: a worker whose parent died during its start-up exits at once.
    Elsewhere the same check runs (no signal): a worker orphaned later waits on its queue. The
    multiprocessing resource tracker needs nothing: it exits when the last process holding its pipe
    (the parent and these workers) is gone.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


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
