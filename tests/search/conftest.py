"""Store fixtures: a deterministic fake embedder and stores filled with real PTB-XL records."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg import signals
from ecgsearch.ecg.schema import EcgPayload
from ecgsearch.ingest.sources import enumerate_source, load, select
from ecgsearch.search.engine.store import EdgeStore, IndexSettings, ServerStore, open_store

N_RECORDS = 60
FAKE_DIM = 256
FAKE_VERSION = "fake-projection-v1"


class FakeEmbedder:
    """A fixed random projection of a prepared ECG to a unit vector: deterministic, no model, no torch."""

    dim = FAKE_DIM
    version = FAKE_VERSION

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        inputs = len(signals.LEADS) * signals.MODEL_SAMPLES
        self._projection = (rng.standard_normal((inputs, FAKE_DIM)) / np.sqrt(inputs)).astype(np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        out = x.reshape(len(x), -1) @ self._projection
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    learned_dim = FAKE_DIM  # no measured blocks: the waveform view is the whole vector


@dataclass(frozen=True)
class Corpus:
    """Payloads and their vectors, row for row."""

    payloads: list[EcgPayload]
    vectors: np.ndarray


@pytest.fixture(scope="session")
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture(scope="session")
def corpus(ptbxl_dir: Path, fake_embedder: FakeEmbedder) -> Corpus:
    """The first N_RECORDS PTB-XL ECGs as ingest reads them, embedded once; every 10th is "other"."""
    records = [load(c) for c in select(enumerate_source(ptbxl_dir), limit=N_RECORDS)]
    vectors = fake_embedder.embed(np.stack([r.signal for r in records]))
    payloads = [
        r.payload.model_copy(update={"dataset": "other"}) if i % 10 == 0 else r.payload
        for i, r in enumerate(records)
    ]
    return Corpus(payloads, vectors)


# Small thresholds so 60 points get a real HNSW graph and filtered search goes through it.
TEST_SETTINGS = IndexSettings(full_scan_threshold_kb=1, indexing_threshold_kb=1)


@pytest.fixture
def edge_store(tmp_path: Path, corpus: Corpus) -> Iterator[EdgeStore]:
    store = open_store(path=tmp_path / "store", collection="ecgs", settings=TEST_SETTINGS)
    assert isinstance(store, EdgeStore)
    store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
    store.upsert(corpus.payloads, corpus.vectors)
    store.optimize()
    yield store
    store.close()


@pytest.fixture
def server_store(corpus: Corpus) -> Iterator[ServerStore]:
    """qdrant-client local mode by default; a real server when QDRANT_URL is set."""
    url = os.environ.get("QDRANT_URL")
    name = f"test-{uuid.uuid4().hex[:8]}"
    if url:
        store = open_store(url=url, api_key=os.environ.get("QDRANT_API_KEY"), collection=name)
    else:
        store = open_store(local=True, collection=name)
    assert isinstance(store, ServerStore)
    store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
    store.upsert(corpus.payloads, corpus.vectors)
    store.optimize()
    yield store
    if url:
        store.client.delete_collection(name)
    store.close()
