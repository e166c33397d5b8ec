"""The only module that talks to Qdrant.

``open_store(path=...)`` -> EdgeStore (qdrant-edge-py, Qdrant's engine in-process, on disk);
``open_store(url=...)`` -> ServerStore (qdrant-client against a Qdrant server or cluster).
Callers see the ``Store`` protocol only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ecgsearch.search.schema import CollectionInfo, EcgPayload, Hit, SearchFilter


class Store(Protocol):
    """A collection of ECG embeddings with payloads, whatever the backend."""

    name: str

    def create_collection(self, *, dim: int, model_version: str) -> None:
        """Create if absent; if present, refuse (ModelMismatch) unless dim and model_version match."""

    def upsert(self, payloads: Sequence[EcgPayload], vectors: np.ndarray) -> None:
        """Insert or overwrite points; the point id derives from payload.record_id (idempotent)."""

    def existing(self, record_ids: Sequence[str]) -> set[str]:
        """Which of these record ids are already stored (for resume)."""

    def search(
        self,
        vector: np.ndarray,
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """k nearest by cosine among points matching the filter, best first."""

    def search_batch(
        self,
        vectors: np.ndarray,
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
        score_threshold: float | None = None,
    ) -> list[list[Hit]]:
        """One result list per query row."""

    def get(self, record_id: str) -> tuple[EcgPayload, np.ndarray]:
        """Payload and stored vector of one record; raises UnknownRecord."""

    def count(self, filter: SearchFilter | None = None) -> int:
        """Points matching the filter (all points without one)."""

    def info(self) -> CollectionInfo:
        """Count, dim, model version, backend and per-diagnosis counts."""

    def optimize(self) -> None:
        """Build the HNSW index over every point (embedded) or wait until indexing is done (server)."""

    def close(self) -> None:
        """Flush and release the store (the embedded shard holds a lock until then)."""
