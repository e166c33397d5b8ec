"""Embeddings of any source ingest accepts, written to a file for the user's own analyses.

Each ECG is read and prepared exactly as ingest does (``ingest.pipeline.load_all``), so the vectors
equal the stored ones; ECGs that cannot be prepared are counted and listed, not written.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest.pipeline import Reject, load_all
from ecgsearch.ingest.sources import Candidate, Record

FORMATS = (".npz", ".parquet")


class EmbedError(ValueError):
    """The output cannot be written as asked (unknown suffix, missing optional library, nothing to write)."""


@dataclass
class Embeddings:
    """Record ids, unit vectors (n, dim) float32 and the model that made them."""

    record_ids: list[str]
    vectors: np.ndarray
    model_version: str
    rejects: list[Reject] = field(default_factory=list)


def parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def check_output(out: Path) -> None:
    """Refuse an output the writer cannot produce before any ECG is read."""
    if out.suffix.lower() not in FORMATS:
        raise EmbedError(f"{out}: write .npz or .parquet")
    if out.suffix.lower() == ".parquet" and not parquet_available():
        raise EmbedError(f"{out}: Parquet needs pyarrow, which is not installed; write .npz instead")
    if not out.parent.is_dir():
        raise EmbedError(f"{out.parent}: no such folder")


def embed_candidates(
    candidates: Iterable[Candidate], embedder: Embedder, batch_size: int = 256
) -> Embeddings:
    """Read, prepare and embed every candidate in batches; failures become rejects."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    rejects: list[Reject] = []
    batch: list[Candidate] = []

    def flush() -> None:
        loaded = load_all(batch)
        records = [r for r in loaded if isinstance(r, Record)]
        rejects.extend(r for r in loaded if isinstance(r, Reject))
        if records:
            parts.append(embedder.embed(np.stack([r.signal for r in records])))
            ids.extend(r.payload.record_id for r in records)
        batch.clear()

    for candidate in candidates:
        batch.append(candidate)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    return Embeddings(ids, vectors, embedder.version, rejects)


def write(result: Embeddings, out: Path) -> Path:
    """``.npz``: arrays record_ids, vectors, model_version. ``.parquet``: columns record_id, vector."""
    check_output(out)
    if not result.record_ids:
        raise EmbedError("no ECG could be prepared: nothing to write")
    if out.suffix.lower() == ".npz":
        np.savez(
            out,
            record_ids=np.array(result.record_ids),
            vectors=result.vectors,
            model_version=np.array(result.model_version),
        )
        return out
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"record_id": result.record_ids, "vector": list(result.vectors)},
        metadata={"model_version": result.model_version},
    )
    pq.write_table(table, out)
    return out
