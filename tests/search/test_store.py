"""What only the embedded store does: its write-ahead log
across reopening, its lock, its own aliases file and quantized recall. What every backend does, the
same way, is in test_store_conformance.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_store_conformance import FAKE_DIM, FAKE_VERSION, TEST_SETTINGS, K, exact_ids, queries

from ecgsearch.bench.metrics import exact_topk, recall_at_k
from ecgsearch.bench.recall import synthetic_dataset
from ecgsearch.ecg.schema import StoreUnavailable
from ecgsearch.search.engine.store import (
    EdgeStore,
    IndexSettings,
    ServerStore,
    StoreError,
    ViewSpec,
    default_store_path,
    open_store,
)


def test_persistence_across_reopen(tmp_path: Path, corpus: Any):
    path = tmp_path / "store"
    with EdgeStore(path, "ecgs", TEST_SETTINGS) as store:
        store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
        store.upsert(corpus.payloads, corpus.vectors)  # no optimize: the WAL alone must keep them
        before = [h.record_id for h in store.search(corpus.vectors[3], k=K)]
    with EdgeStore(path, "ecgs") as store:
        assert store.count() == len(corpus.payloads)
        assert store.settings == TEST_SETTINGS
        assert [h.record_id for h in store.search(corpus.vectors[3], k=K)] == before
        assert store.info().model_version == FAKE_VERSION


def test_second_open_is_unavailable(edge_store: EdgeStore):
    """The WAL lock: a second open, in this process or another, fails with a clear message."""
    with pytest.raises(StoreUnavailable, match="already open"):
        EdgeStore(edge_store.root, "ecgs")
    code = (
        "import sys\n"
        "from ecgsearch.ecg.schema import StoreUnavailable\n"
        "from ecgsearch.search.engine.store import open_store\n"
        "try:\n"
        f"    open_store(path={str(edge_store.root)!r}, collection='ecgs')\n"
        "except StoreUnavailable as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "already open in another process" in result.stdout


def test_edge_alias_switch(tmp_path: Path, corpus: Any):
    path = tmp_path / "store"
    for name, version, rows in (("ecgs-v1", "m1", slice(0, 10)), ("ecgs-v2", "m2", slice(0, 30))):
        with EdgeStore(path, name) as store:
            store.create_collection(dim=FAKE_DIM, model_version=version)
            store.upsert(corpus.payloads[rows], corpus.vectors[rows])
    with EdgeStore(path, "ecgs-v1") as store:
        store.set_alias("ecgs", "ecgs-v1")
    with EdgeStore(path, "ecgs") as store:
        assert (store.name, store.info().model_version, store.count()) == ("ecgs-v1", "m1", 10)
        store.set_alias("ecgs", "ecgs-v2")
        with pytest.raises(StoreError):
            store.set_alias("ecgs-v1", "ecgs-v2")  # an alias may not shadow a collection
        with pytest.raises(StoreError):
            store.set_alias("other", "missing")
    with EdgeStore(path, "ecgs") as store:
        assert (store.name, store.info().model_version, store.count()) == ("ecgs-v2", "m2", 30)


def test_quantized_store_keeps_recall(tmp_path: Path, corpus: Any):
    settings = IndexSettings(quantization=True, full_scan_threshold_kb=1, indexing_threshold_kb=1)
    with EdgeStore(tmp_path / "q", "ecgs", settings) as store:
        store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
        store.upsert(corpus.payloads, corpus.vectors)
        store.optimize()
        for q in queries(corpus):
            got = {h.record_id for h in store.search(q, k=K)}
            assert len(got & set(exact_ids(corpus, q, K, None))) >= K - 1


def test_open_store_picks_backend(tmp_path: Path, ecgsearch_home: Path):
    assert default_store_path() == Path("~/.ecgsearch/store").expanduser()  # no environment read here
    assert default_store_path(tmp_path) == tmp_path / "store"
    embedded = open_store(home=tmp_path)
    assert isinstance(embedded, EdgeStore) and embedded.root == tmp_path / "store"
    embedded.close()
    local = open_store(local=True, collection="x")
    assert isinstance(local, ServerStore) and local.backend == "qdrant-local"
    local.close()
    with pytest.raises(ValueError, match="not both"):
        open_store(path=tmp_path, url="http://localhost:6333")
    with pytest.raises(ValueError, match="local mode"):
        open_store(url="http://localhost:6333", local=True)


def test_local_mode_leaves_the_process_warning_filters_alone(corpus: Any):
    import warnings

    before = list(warnings.filters)
    store = open_store(local=True, collection="w")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
        store.upsert(corpus.payloads[:5], corpus.vectors[:5])
        store.search(corpus.vectors[0], k=3)
    store.close()
    assert list(warnings.filters) == before
    assert not [w for w in caught if "local" in str(w.message).lower()]


def test_segments_stay_within_their_bound(tmp_path: Path):
    """A collection past ``max_segment_points`` is indexed as several bounded segments (each its own
    graph, a bounded build), a reopened store goes on counting from what is not yet indexed, and the
    search over all segments still finds the exact neighbours."""
    data = synthetic_dataset(3500, 32, 10, seed=1)
    settings = IndexSettings(max_segment_points=1000, full_scan_threshold_kb=1, indexing_threshold_kb=1)
    path = tmp_path / "store"
    with EdgeStore(path, "ecgs", settings) as store:
        store.create_collection(dim=32, model_version=FAKE_VERSION)
        for start in range(0, 2500, 500):
            store.upsert(data.payloads(start, start + 500), data.vectors[start : start + 500])
    with EdgeStore(path, "ecgs") as store:  # 500 points written since the last bound was reached
        store.upsert(data.payloads(2500, 3000), data.vectors[2500:3000])  # 1000: a third segment
        assert store.shard.info().indexed_vectors_count == 3000
        store.upsert(data.payloads(3000, 3500), data.vectors[3000:3500])
        store.optimize()
        shard = store.shard.info()
        assert shard.indexed_vectors_count == shard.points_count == 3500
        assert shard.segments_count >= 4  # three full segments and the rest; one graph never holds all
        truth, _ = exact_topk(data.queries, np.asarray(data.vectors), K)
        found = np.array(
            [[int(h.record_id.split(":")[1]) for h in store.search(q, k=K)] for q in data.queries]
        )
    assert recall_at_k(found, truth, K) >= 0.95


def test_written_points_are_indexed_every_index_after_points_within_bounded_segments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Searches scan unindexed points one by one, so the store indexes what it wrote every
    ``index_after_points``; the engine grows the open segment's graph with them up to the segment
    bound, then starts another: a few bounded segments, not one per indexing."""
    data = synthetic_dataset(7000, 32, 10, seed=2)
    settings = IndexSettings(
        max_segment_points=3000, index_after_points=1000, full_scan_threshold_kb=1, indexing_threshold_kb=1
    )
    caplog.set_level("INFO", logger="ecgsearch.search.engine.store")
    with EdgeStore(tmp_path / "store", "ecgs", settings) as store:
        store.create_collection(dim=32, model_version=FAKE_VERSION)
        for start in range(0, 7000, 500):
            store.upsert(data.payloads(start, start + 500), data.vectors[start : start + 500])
            shard = store.shard.info()
            assert shard.points_count - shard.indexed_vectors_count == (start + 500) % 1000
        assert 3 <= shard.segments_count <= 5  # 7,000 points in segments of at most ~3,000 (+ the open one)
        truth, _ = exact_topk(data.queries, np.asarray(data.vectors), K)
        found = np.array(
            [[int(h.record_id.split(":")[1]) for h in store.search(q, k=K)] for q in data.queries]
        )
    assert recall_at_k(found, truth, K) >= 0.95
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("indexed the 1000 points")]
    assert len(said) == 7  # each indexing is logged: a serving process answers nothing else meanwhile
    assert IndexSettings().index_every() == 50_000
    assert IndexSettings(max_segment_points=20_000).index_every() == 20_000
    assert IndexSettings(max_segment_points=None, index_after_points=None).index_every() is None


def test_reopened_store_counts_unindexed_points_not_vectors(tmp_path: Path):
    """With a named view each point holds two vectors and the engine counts indexed vectors: a
    reopened store still closes its segment when the points written since the last one reach the
    bound."""
    data = synthetic_dataset(2500, 32, 1, seed=1)
    views = {"rhythm": ViewSpec(dim=4, distance="euclid", version="v1")}
    named = [{"rhythm": [0.1, 0.2, 0.3, float(i)]} for i in range(2500)]
    settings = IndexSettings(max_segment_points=1000, full_scan_threshold_kb=1, indexing_threshold_kb=1)
    with EdgeStore(tmp_path / "store", "ecgs", settings) as store:
        store.create_collection(dim=32, model_version=FAKE_VERSION, views=views)
        store.upsert(data.payloads(0, 1500), data.vectors[:1500], named[:1500])  # past the bound: indexed
        store.upsert(data.payloads(1500, 2200), data.vectors[1500:2200], named[1500:2200])  # 700 not yet
        assert store.shard.info().indexed_vectors_count == 2 * 1500
    with EdgeStore(tmp_path / "store", "ecgs") as store:
        store.upsert(data.payloads(2200, 2500), data.vectors[2200:2500], named[2200:2500])  # 700 + 300
        assert store.shard.info().indexed_vectors_count == 2 * 2500
