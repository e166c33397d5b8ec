"""Same call, two engines, same answer: EdgeStore vs exact numpy search vs ServerStore (local mode)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecgsearch.bench.metrics import MISSING, exact_topk
from ecgsearch.ecg.schema import InvalidQuery, SearchFilter, StoreUnavailable, UnknownRecord
from ecgsearch.search.engine.filters import matches
from ecgsearch.search.engine.store import (
    EdgeStore,
    IndexSettings,
    ModelMismatch,
    ServerStore,
    SettingsMismatch,
    Store,
    StoreError,
    default_store_path,
    open_store,
)

K = 10
FAKE_DIM, FAKE_VERSION = 256, "fake-projection-v1"  # what the fake_embedder fixture makes
TEST_SETTINGS = IndexSettings(full_scan_threshold_kb=1, indexing_threshold_kb=1)  # as the edge_store fixture
SR, AFL, SARRH = "426783006", "164890007", "427393009"

FILTERS = {
    "none": None,
    "diag_any": SearchFilter(diagnoses_any=[AFL, SARRH]),
    "diag_all": SearchFilter(diagnoses_all=[SR, "SCP:NORM"]),
    "diag_none": SearchFilter(diagnoses_none=["SCP:NORM"]),
    "age": SearchFilter(age_min=40, age_max=60),
    "sex": SearchFilter(sex="F"),
    "dataset": SearchFilter(datasets=["other"]),
    "exclusions": SearchFilter(
        exclude_record_ids=["ptbxl:1", "ptbxl:2", "ptbxl:3"], exclude_patient_ids=["13619"]
    ),
    "combined": SearchFilter(diagnoses_any=[SR], sex="M", age_min=30),
    "nothing": SearchFilter(diagnoses_any=["SCP:IMI"], sex="F", age_max=20),
}


def exact_ids(corpus: Any, query: np.ndarray, k: int, flt: SearchFilter | None) -> list[str]:
    """Reference answer: the benchmarks' brute-force search over the points the filter keeps."""
    mask = np.array([matches(flt, p) for p in corpus.payloads])
    (ids,), _ = exact_topk(query[None], corpus.vectors, k, mask=mask)
    return [corpus.payloads[i].record_id for i in ids if i != MISSING]


def queries(corpus: Any) -> np.ndarray:
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((3, FAKE_DIM)).astype(np.float32)
    q = np.vstack([corpus.vectors[[0, 17, 42]], corpus.vectors[[5, 9, 33]] + 0.05 * noise])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_edge_server_and_exact_agree(edge_store: EdgeStore, server_store: ServerStore, corpus: Any):
    """Every filter class, HNSW and exact, on both engines: the ids of the brute-force reference."""
    qs = queries(corpus)
    for name, flt in FILTERS.items():
        edge_hnsw = edge_store.search_batch(qs, k=K, filter=flt)
        edge_exact = edge_store.search_batch(qs, k=K, filter=flt, exact=True)
        server = server_store.search_batch(qs, k=K, filter=flt)
        for i, q in enumerate(qs):
            expected = exact_ids(corpus, q, K, flt)
            assert [h.record_id for h in edge_exact[i]] == expected, name
            assert [h.record_id for h in edge_hnsw[i]] == expected, name
            assert [h.record_id for h in server[i]] == expected, name
            np.testing.assert_allclose(
                [h.score for h in edge_hnsw[i]], [h.score for h in server[i]], rtol=1e-4, atol=1e-5
            )
        expected_count = sum(matches(flt, p) for p in corpus.payloads)
        assert edge_store.count(flt) == server_store.count(flt) == expected_count, name


def test_search_behaviour(edge_store: EdgeStore, corpus: Any):
    q = corpus.vectors[0]
    both = edge_store.search(q, k=50, filter=FILTERS["diag_all"])
    assert both and all(SR in h.payload.diagnoses and "SCP:NORM" in h.payload.diagnoses for h in both)
    aged = edge_store.search(q, k=60, filter=FILTERS["age"])
    assert aged and all(h.payload.age is not None and 40 <= h.payload.age <= 60 for h in aged)
    excluded = edge_store.search(q, k=60, filter=FILTERS["exclusions"])
    assert not {h.record_id for h in excluded} & {"ptbxl:1", "ptbxl:2", "ptbxl:3"}
    assert all(h.payload.patient_id != "13619" for h in excluded)
    assert edge_store.search(q, k=5, filter=FILTERS["nothing"]) == []

    hits = edge_store.search(corpus.vectors[17], k=3)
    assert hits[0].record_id == corpus.payloads[17].record_id
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload == corpus.payloads[17]
    assert [len(r) for r in edge_store.search_batch(corpus.vectors[:4], k=2)] == [2, 2, 2, 2]
    assert all(h.score >= 0.99 for h in edge_store.search(corpus.vectors[17], k=5, score_threshold=0.99))

    with pytest.raises(InvalidQuery, match="dimensions"):
        edge_store.search(np.ones(8, dtype=np.float32), k=3)
    with pytest.raises(InvalidQuery, match="k must be"):
        edge_store.search(np.ones(FAKE_DIM, dtype=np.float32), k=0)


def test_get_existing_and_info(edge_store: EdgeStore, server_store: ServerStore, corpus: Any):
    stores: list[Store] = [edge_store, server_store]
    for store in stores:
        payload, vector = store.get(corpus.payloads[5].record_id)
        assert payload == corpus.payloads[5]
        np.testing.assert_allclose(vector, corpus.vectors[5], atol=1e-5)
        with pytest.raises(UnknownRecord, match="ptbxl:424242"):
            store.get("ptbxl:424242")
        asked = ["ptbxl:1", "ptbxl:2", "ptbxl:999999", "georgia:E1"]
        assert store.existing(asked) == {"ptbxl:1", "ptbxl:2"}
        assert store.existing([]) == set()
        info = store.info()
        assert (info.count, info.dim, info.model_version) == (len(corpus.payloads), FAKE_DIM, FAKE_VERSION)
        assert info.diagnosis_counts[SR] == sum(SR in p.diagnoses for p in corpus.payloads)
        assert info.diagnosis_counts["SCP:NORM"] == sum("SCP:NORM" in p.diagnoses for p in corpus.payloads)
        assert info.indexed


def test_sites_of_and_info_of_some_sites(edge_store: EdgeStore, server_store: ServerStore, corpus: Any):
    """The site of each stored id, a lookup within some sites (a site-restricted caller's) and the facts
    of the points a filter keeps (its CollectionInfo), the same on both engines."""
    moved = [p.model_copy(update={"site": "north"}) for p in corpus.payloads[:7]]
    north = SearchFilter(sites=["north"])
    stores: list[Store] = [edge_store, server_store]
    for store in stores:
        store.upsert(moved, corpus.vectors[:7])
        asked = [corpus.payloads[0].record_id, corpus.payloads[8].record_id, "ptbxl:999999"]
        assert store.sites_of(asked) == {asked[0]: "north", asked[1]: "local"}
        assert store.sites_of([]) == {}
        assert store.get(asked[0], sites=["north", "south"])[0] == moved[0]
        for record_id in asked[1:]:  # another site's, and one not stored: alike
            with pytest.raises(UnknownRecord):
                store.get(record_id, sites=["north"])
        with pytest.raises(UnknownRecord):
            store.get(asked[0], sites=[])
        info = store.info(north)
        assert info.count == 7
        assert info.diagnosis_counts == dict(Counter(c for p in moved for c in p.diagnoses))
        assert store.info().count == len(corpus.payloads)


def test_idempotent_upsert_and_model_mismatch(edge_store: EdgeStore, server_store: ServerStore, corpus: Any):
    stores: list[Store] = [edge_store, server_store]
    for store in stores:
        store.upsert(corpus.payloads[:20], corpus.vectors[:20])
        assert store.count() == len(corpus.payloads)
        store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)  # same model: a no-op
        with pytest.raises(ModelMismatch, match="create a new collection"):
            store.create_collection(dim=FAKE_DIM, model_version="another-model")
        with pytest.raises(StoreError, match="128"):  # commands catch StoreError: a mismatch is one
            store.create_collection(dim=128, model_version=FAKE_VERSION)
        assert store.count() == len(corpus.payloads)  # a refused create leaves the collection as it was


def test_other_index_settings_are_refused(edge_store: EdgeStore, server_store: ServerStore):
    other = IndexSettings(hnsw_m=8, quantization=True)
    edge_store.close()
    reopened = EdgeStore(edge_store.root, "ecgs", other)
    second = ServerStore(client=server_store.client, collection=server_store.name, settings=other)
    try:
        for store in (reopened, second):
            with pytest.raises(SettingsMismatch, match="hnsw_m .* \\(asked 8\\).*new collection"):
                store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
    finally:
        reopened.close()
    with EdgeStore(edge_store.root, "ecgs") as store:  # no settings asked: the collection's own
        store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
        assert store.settings == TEST_SETTINGS


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


def test_missing_collection_is_unavailable(tmp_path: Path):
    store = open_store(path=tmp_path / "empty", collection="ecgs")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        store.count()
    store.close()


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


def test_server_alias_switch(corpus: Any):
    client_store = open_store(local=True, collection="ecgs-v1")
    assert isinstance(client_store, ServerStore)
    client_store.create_collection(dim=FAKE_DIM, model_version="m1")
    client_store.upsert(corpus.payloads[:10], corpus.vectors[:10])
    v2 = ServerStore(client=client_store.client, collection="ecgs-v2")
    v2.create_collection(dim=FAKE_DIM, model_version="m2")
    v2.upsert(corpus.payloads[:30], corpus.vectors[:30])
    v2.set_alias("ecgs", "ecgs-v1")
    via_alias = ServerStore(client=client_store.client, collection="ecgs")
    assert (via_alias.info().model_version, via_alias.count()) == ("m1", 10)
    v2.set_alias("ecgs", "ecgs-v2")
    assert (via_alias.info().model_version, via_alias.count()) == ("m2", 30)
    client_store.close()


def test_server_store_on_local_path(tmp_path: Path, corpus: Any):
    store = open_store(path=tmp_path / "qdrant", local=True, collection="ecgs")
    store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
    store.upsert(corpus.payloads[:10], corpus.vectors[:10])
    store.close()
    again = open_store(path=tmp_path / "qdrant", local=True, collection="ecgs")
    assert again.count() == 10
    assert again.info().model_version == FAKE_VERSION
    again.close()


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
