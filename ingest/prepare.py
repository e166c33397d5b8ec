"""Any source ingest reads -> an archive of prepared ECGs in shards, to train on without holding it.

Records are read and prepared exactly as ingest prepares them (``sources.load`` in worker processes) and
written ``shard_size`` at a time by ``encoder.shards.ShardWriter``. The source is enumerated in its own
stable order and shard k holds what is left of candidates [k * shard_size, (k + 1) * shard_size) after
rejects, so a rerun (after a kill, or to continue) skips the candidates of complete shards without
reading them and writes the rest; a finished archive is left as it is.

Folds: a PTB-XL folder keeps the table's ``strat_fold`` (1-8 train, 9 validation, 10 test); any other
source gets fold 1-10 from a hash of the patient pseudonym, so one patient's ECGs share a fold and the
split is the same on every rerun. Pseudonyms are keyed by the site secret (``--site-secret-file``, else
``<out>/site-secret``, generated once): no patient id, name or path of the source reaches the archive.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from ecgsearch.ecg import ptbxl, signals
from ecgsearch.ecg.identity import Pseudonymizer
from ecgsearch.ecg.shards import ShardWriter
from ecgsearch.ingest.pipeline import REJECT_COLUMNS, Reject, Seen, load_all, worker_pool
from ecgsearch.ingest.sources import Candidate, Record, enumerate_source

CHUNK = 64  # candidates per task sent to a worker
FOLDS = 10


@dataclass
class PrepareSummary:
    """What a run did: shards and rows written now, kept from before, and rejects (all runs)."""

    out: str
    shards: int = 0
    rows: int = 0
    shards_written: int = 0
    rows_written: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rejects_path: str | None = None


def hash_fold(key: str) -> int:
    """Fold 1-10 from a stable hash: the same key, the same fold on every machine."""
    return 1 + int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % FOLDS


def ptbxl_folds(source: Path, dataset: str) -> dict[str, int]:
    """record id -> PTB-XL's strat_fold, when ``source`` is a PTB-XL folder (else empty)."""
    if not ptbxl.has_table(source):
        return {}
    return {f"{dataset}:{row.ecg_id}": row.fold for row in ptbxl.read_table(source)}


def prepare_archive(
    source: str | Path,
    out: str | Path,
    pseudonyms: Pseudonymizer,
    *,
    shard_size: int = 4096,
    workers: int = 2,
    dataset: str | None = None,
    prefer_hr: bool = False,
    limit: int | None = None,
    on_shard: Callable[[PrepareSummary], None] | None = None,
) -> PrepareSummary:
    """Prepare every ECG of ``source`` into shards under ``out``; resumes after the last complete shard."""
    start = time.perf_counter()
    source = Path(source)
    candidates = enumerate_source(source, dataset=dataset, prefer_hr=prefer_hr)
    described = {"source": source.name, "dataset": dataset, "prefer_hr": prefer_hr}
    writer = ShardWriter(out, shard_size, described)
    folds = ptbxl_folds(source, dataset or "ptbxl")
    summary = PrepareSummary(out=str(out))
    remaining = islice(candidates, writer.done_candidates, limit)
    with worker_pool(workers) as pool:
        for group in _groups(remaining, shard_size):
            records, rejects = _load(group, pool, pseudonyms)
            x, fold, meta = _columns(records, folds)
            info = writer.write(x, fold, meta, [r.model_dump() for r in rejects])
            summary.shards_written += 1
            summary.rows_written += info.rows
            if on_shard is not None:
                on_shard(summary)
    summary.shards = len(writer.shards)
    summary.rows = sum(s.rows for s in writer.shards)
    summary.rejects_path, summary.rejected = _write_rejects(writer)
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary


def _groups(items: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
    while group := list(islice(items, size)):
        yield group


def _load(
    group: list[Candidate], pool: ProcessPoolExecutor | None, pseudonyms: Pseudonymizer
) -> tuple[list[Record], list[Reject]]:
    chunks = [group[i : i + CHUNK] for i in range(0, len(group), CHUNK)]
    if pool is None:
        loaded = [load_all(c, frozenset(), pseudonyms) for c in chunks]
    else:
        loaded = list(pool.map(load_all, chunks, [frozenset()] * len(chunks), [pseudonyms] * len(chunks)))
    records: list[Record] = []
    rejects: list[Reject] = []
    for item in (i for part in loaded for i in part):
        if isinstance(item, Record):
            records.append(item)
        elif isinstance(item, Reject):
            rejects.append(item)
        elif isinstance(item, Seen):  # no id is known to an archive, so load_all never returns one
            raise AssertionError(item.record_id)
    return records, rejects


def _columns(records: list[Record], folds: dict[str, int]) -> tuple[np.ndarray, np.ndarray, dict[str, list]]:
    x = np.empty((len(records), len(signals.LEADS), signals.MODEL_SAMPLES), np.float32)
    fold = np.empty(len(records), np.int16)
    for i, record in enumerate(records):
        x[i] = record.signal
        p = record.payload
        fold[i] = folds.get(p.record_id) or hash_fold(p.patient_id or p.record_id)
    meta: dict[str, list] = {
        "record_id": [r.payload.record_id for r in records],
        "dataset": [r.payload.dataset for r in records],
        "patient": [r.payload.patient_id for r in records],
        "superclasses": [r.payload.superclasses for r in records],
        "diagnoses": [r.payload.diagnoses for r in records],
    }
    return x, fold, meta


def _write_rejects(writer: ShardWriter) -> tuple[str | None, int]:
    """``rejects.csv`` of the whole archive (every shard's rejects), rewritten at the end of each run."""
    rows = [r for i in range(len(writer.shards)) for r in _shard_rejects(writer, i)]
    path = writer.root / "rejects.csv"
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(REJECT_COLUMNS)
        out.writerows([r[c] for c in REJECT_COLUMNS] for r in rows)
    return str(path), len(rows)


def _shard_rejects(writer: ShardWriter, i: int) -> list[dict[str, str]]:
    return json.loads((writer.root / f"{writer.shards[i].name}.json").read_text())["rejects"]
