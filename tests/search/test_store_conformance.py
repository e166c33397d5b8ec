"""The Store protocol, method by method, on both backends: same call, same answer.

Every test takes ``store``, parametrised over the embedded engine (EdgeStore, qdrant-edge-py) and
qdrant-client's local mode (ServerStore), each filled with the same 60 real PTB-XL records; answers
are checked against the benchmarks' brute-force search, so both backends must give the same ones.
Where a backend cannot do a thing (local mode has no snapshots) the protocol says it raises StoreError,
and that is what is checked.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecgsearch.bench.metrics import MISSING, exact_topk
from ecgsearch.ecg.schema import InvalidQuery, SearchFilter, StoreUnavailable, UnknownRecord
from ecgsearch.search.engine import settings as engine_settings
from ecgsearch.search.engine.filters import matches
from ecgsearch.search.engine.settings import CLIENT, EDGE, Engine, IndexSettings
from ecgsearch.search.engine.store import (
    PAYLOAD_INDEXES,
    EdgeStore,
    ModelMismatch,
    ServerStore,
    SettingsMismatch,
    Store,
    StoreError,
    open_store,
)

K = 10
FAKE_DIM, FAKE_VERSION = 256, "fake-projection-v1"  # what the fake_embedder fixture makes
TEST_SETTINGS = IndexSettings(full_scan_threshold_kb=1, indexing_threshold_kb=1)  # as the edge_store fixture
SR, AFL, SARRH = "426783006", "164890007", "427393009"

# One filter of each class SearchFilter has, and combinations.
FILTERS = {
    "none": None,
    "diag_any": SearchFilter(diagnoses_any=[AFL, SARRH]),
    "diag_all": SearchFilter(diagnoses_all=[SR, "SCP:NORM"]),
    "diag_none": SearchFilter(diagnoses_none=["SCP:NORM"]),
    "age": SearchFilter(age_min=40, age_max=60),
    "sex": SearchFilter(sex="F"),
    "dataset": SearchFilter(datasets=["other"]),
    "site": SearchFilter(sites=["local"]),
    "exclusions": SearchFilter(
        exclude_record_ids=["ptbxl:1", "ptbxl:2", "ptbxl:3"], exclude_patient_ids=["13619"]
    ),
    "no_copies": SearchFilter(exclude_duplicates=True),
    "combined": SearchFilter(diagnoses_any=[SR], sex="M", age_min=30),
    "nothing": SearchFilter(diagnoses_any=["SCP:IMI"], sex="F", age_max=20),
}
BACKENDS = {"edge": "edge_store", "local": "server_store"}


def exact_ids(corpus: Any, query: np.ndarray, k: int, flt: SearchFilter | None) -> list[str]:
    """Reference answer: the benchmarks' brute-force search over the points the filter keeps."""
    mask = np.array([matches(flt, p) for p in corpus.payloads])
    (ids,), _ = exact_topk(query[None], corpus.vectors, k, mask=mask)
    return [corpus.payloads[i].record_id for i in ids if i != MISSING]


def queries(corpus: Any) -> np.ndarray:
    """Three stored vectors and three perturbed ones, unit length."""
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((3, FAKE_DIM)).astype(np.float32)
    q = np.vstack([corpus.vectors[[0, 17, 42]], corpus.vectors[[5, 9, 33]] + 0.05 * noise])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest) -> Store:
    """A filled store of each backend (the fixtures of conftest.py)."""
    found: Store = request.getfixturevalue(BACKENDS[request.param])
    return found


@pytest.fixture(params=sorted(BACKENDS))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """Opens a store of each backend on disk at one path, as often as asked."""
    local = request.param == "local"
    yield lambda **kw: open_store(path=tmp_path / "store", local=local, **kw)


def _protocol_methods() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(Store).items()
        if callable(member) and (not name.startswith("_") or name in ("__enter__", "__exit__"))
    }


@pytest.mark.parametrize("backend", [EdgeStore, ServerStore], ids=["edge", "local"])
def test_each_backend_has_every_protocol_method_with_its_parameters(backend: type) -> None:
    """Every method the protocol names, with the protocol's parameters (extra ones must be optional)."""
    methods = _protocol_methods()
    assert {"restore_snapshot", "create_snapshot", "list_snapshots", "__enter__", "__exit__"} <= set(methods)
    for name, wanted in methods.items():
        have = inspect.signature(getattr(backend, name)).parameters
        for param in wanted.parameters.values():
            assert param.name in have, f"{backend.__name__}.{name} lacks {param.name}"
            assert have[param.name].kind == param.kind, f"{backend.__name__}.{name}({param.name})"
        extra = [p for p in have.values() if p.name not in wanted.parameters]
        assert all(p.default is not inspect.Parameter.empty for p in extra), f"{backend.__name__}.{name}"
    assert set(Store.__annotations__) == {"name", "backend", "plans"}


def test_search_with_every_filter_class_gives_the_exact_answer(store: Store, corpus: Any) -> None:
    qs = queries(corpus)
    for name, flt in FILTERS.items():
        graph = store.search_batch(qs, k=K, filter=flt)
        scan = store.search_batch(qs, k=K, filter=flt, exact=True)
        wide = store.search_batch(qs, k=K, filter=flt, ef=16)
        for i, q in enumerate(qs):
            expected = exact_ids(corpus, q, K, flt)
            for got in (graph[i], scan[i], wide[i]):
                assert [h.record_id for h in got] == expected, name
            assert all(matches(flt, h.payload) for h in graph[i]), name
        assert store.count(flt) == sum(matches(flt, p) for p in corpus.payloads), name


def test_each_filter_means_what_it_says(store: Store, corpus: Any) -> None:
    """Read off the hits' payloads, not from the reference's ``matches``."""
    q = corpus.vectors[0]
    both = store.search(q, k=50, filter=FILTERS["diag_all"])
    assert both and all(SR in h.payload.diagnoses and "SCP:NORM" in h.payload.diagnoses for h in both)
    aged = store.search(q, k=60, filter=FILTERS["age"])
    assert aged and all(h.payload.age is not None and 40 <= h.payload.age <= 60 for h in aged)
    excluded = store.search(q, k=60, filter=FILTERS["exclusions"])
    assert not {h.record_id for h in excluded} & {"ptbxl:1", "ptbxl:2", "ptbxl:3"}
    assert excluded and all(h.payload.patient_id != "13619" for h in excluded)
    assert store.search(q, k=5, filter=FILTERS["nothing"]) == []


def test_both_backends_score_alike(edge_store: EdgeStore, server_store: ServerStore, corpus: Any) -> None:
    qs = queries(corpus)
    for name, flt in FILTERS.items():
        edge_hits = edge_store.search_batch(qs, k=K, filter=flt)
        for a, b in zip(edge_hits, server_store.search_batch(qs, k=K, filter=flt), strict=True):
            assert [h.record_id for h in a] == [h.record_id for h in b], name
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-4, atol=1e-5)


def test_search_one_threshold_and_bad_queries(store: Store, corpus: Any) -> None:
    hits = store.search(corpus.vectors[17], k=3)
    assert hits[0].record_id == corpus.payloads[17].record_id
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].payload == corpus.payloads[17]
    near = store.search(corpus.vectors[17], k=K, score_threshold=0.99)
    assert near and all(h.score >= 0.99 for h in near)
    assert [len(r) for r in store.search_batch(corpus.vectors[:4], k=2)] == [2, 2, 2, 2]
    with pytest.raises(InvalidQuery, match="dimensions"):
        store.search(np.ones(8, dtype=np.float32), k=3)
    with pytest.raises(InvalidQuery, match="k must be"):
        store.search(corpus.vectors[0], k=0)
    with pytest.raises(InvalidQuery, match="NaN"):
        store.search(np.full(FAKE_DIM, np.nan, dtype=np.float32), k=3)


def test_get_existing_hashes_and_info(store: Store, corpus: Any) -> None:
    payload, vector = store.get(corpus.payloads[5].record_id)
    assert payload == corpus.payloads[5]
    np.testing.assert_allclose(vector, corpus.vectors[5], atol=1e-5)
    with pytest.raises(UnknownRecord, match="ptbxl:424242"):
        store.get("ptbxl:424242")
    asked = [corpus.payloads[1].record_id, corpus.payloads[2].record_id, "ptbxl:999999", "georgia:E1"]
    assert store.existing(asked) == set(asked[:2])
    assert store.existing([]) == set()
    assert store.content_hashes(asked) == {
        r: corpus.payloads[i].content_hash for i, r in ((1, asked[0]), (2, asked[1]))
    }
    info = store.info()
    assert (info.name, info.count, info.dim, info.model_version) == (
        store.name,
        len(corpus.payloads),
        FAKE_DIM,
        FAKE_VERSION,
    )
    assert info.backend == store.backend
    assert info.diagnosis_counts == dict(Counter(c for p in corpus.payloads for c in p.diagnoses))
    assert info.indexed


def test_sites_and_filtered_info(store: Store, corpus: Any) -> None:
    """Site lookups, a read within some sites (another site's id and an unknown one alike), and the
    facts of the points a filter keeps."""
    moved = [p.model_copy(update={"site": "north"}) for p in corpus.payloads[:7]]
    store.upsert(moved, corpus.vectors[:7])  # an upsert of stored ids overwrites them
    asked = [corpus.payloads[0].record_id, corpus.payloads[8].record_id, "ptbxl:999999"]
    assert store.sites_of(asked) == {asked[0]: "north", asked[1]: "local"}
    assert store.sites_of([]) == {}
    assert store.get(asked[0], sites=["north", "south"])[0] == moved[0]
    for record_id in asked[1:]:
        with pytest.raises(UnknownRecord):
            store.get(record_id, sites=["north"])
    with pytest.raises(UnknownRecord):
        store.get(asked[0], sites=[])
    north = store.info(SearchFilter(sites=["north"]))
    assert north.count == store.count(SearchFilter(sites=["north"])) == 7
    assert north.diagnosis_counts == dict(Counter(c for p in moved for c in p.diagnoses))
    assert store.info().count == store.count() == len(corpus.payloads)


def test_upsert_is_idempotent_and_checks_its_input(store: Store, corpus: Any) -> None:
    store.upsert(corpus.payloads[:20], corpus.vectors[:20])
    assert store.count() == len(corpus.payloads)
    with pytest.raises(ValueError, match="20 payloads but 19 vectors"):
        store.upsert(corpus.payloads[:20], corpus.vectors[:19])
    with pytest.raises(InvalidQuery, match="dimensions"):
        store.upsert(corpus.payloads[:1], corpus.vectors[:1, :8])
    assert store.count() == len(corpus.payloads)


def test_another_model_or_other_settings_are_refused(store: Store, corpus: Any) -> None:
    store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)  # the same model: a no-op
    with pytest.raises(ModelMismatch, match="create a new collection"):
        store.create_collection(dim=FAKE_DIM, model_version="another-model")
    with pytest.raises(ModelMismatch, match="128"):
        store.create_collection(dim=128, model_version=FAKE_VERSION)
    assert store.count() == len(corpus.payloads)  # a refused create leaves the collection as it was
    assert store.index_settings() == (TEST_SETTINGS if store.backend == "qdrant-edge" else IndexSettings())


def test_other_index_settings_are_refused_and_the_collections_own_are_kept(
    opener: Callable[..., Store],
) -> None:
    with opener(collection="c", settings=TEST_SETTINGS) as made:
        made.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
    other = opener(collection="c", settings=IndexSettings(hnsw_m=8))
    with other, pytest.raises(SettingsMismatch, match="hnsw_m .* \\(asked 8\\).*new collection"):
        other.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
    with opener(collection="c") as reopened:  # no settings asked: the collection's own
        reopened.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
        assert reopened.index_settings() == TEST_SETTINGS


def test_with_closes_the_store_and_the_data_stays(opener: Callable[..., Store], corpus: Any) -> None:
    with opener(collection="c") as store:
        store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
        store.upsert(corpus.payloads[:10], corpus.vectors[:10])
        with pytest.raises(StoreUnavailable, match="already open"):  # one owner at a time
            opener(collection="c")
    with pytest.raises(StoreUnavailable, match="closed"):
        store.count()
    with opener(collection="c") as again:  # closing released it
        assert again.count() == 10
        assert again.info().model_version == FAKE_VERSION


def test_a_missing_collection_is_unavailable(opener: Callable[..., Store]) -> None:
    with opener(collection="absent") as store, pytest.raises(StoreUnavailable, match="does not exist"):
        store.count()


def test_aliases_switch_what_a_name_opens(opener: Callable[..., Store], corpus: Any) -> None:
    for name, version, n in (("v1", "m1", 10), ("v2", "m2", 30)):
        with opener(collection=name) as store:
            store.create_collection(dim=FAKE_DIM, model_version=version)
            store.upsert(corpus.payloads[:n], corpus.vectors[:n])
    with opener(collection="v1") as store:
        store.set_alias("live", "v1")
        assert store.aliases() == {"live": "v1"}
    with opener(collection="live") as live:
        assert (live.info().model_version, live.count()) == ("m1", 10)
        live.set_alias("live", "v2")
        assert live.aliases() == {"live": "v2"}
    with opener(collection="live") as live:
        assert (live.info().model_version, live.count()) == ("m2", 30)
        with pytest.raises(StoreError):
            live.set_alias("bad name!", "v2")


def test_optimize_indexes_every_point(store: Store, corpus: Any) -> None:
    store.upsert(corpus.payloads, corpus.vectors)
    store.optimize()
    assert store.info().indexed


def test_snapshot_round_trip_or_a_store_error(store: Store, corpus: Any, tmp_path: Path) -> None:
    """Embedded: create, list, restore into a new store, same points and answers. Local mode has no
    snapshots: creating or restoring one raises StoreError saying so, and there are none to list."""
    if store.backend == "qdrant-local":
        for call in (store.create_snapshot, lambda: store.restore_snapshot("x")):
            with pytest.raises(StoreError, match="no snapshots"):
                call()
        assert store.list_snapshots() == []
        return
    made = store.create_snapshot(tmp_path / "snaps", archive=tmp_path / "kept")
    assert (made.collection, made.count, made.model_version) == (
        store.name,
        len(corpus.payloads),
        FAKE_VERSION,
    )
    assert [s.location for s in store.list_snapshots(tmp_path / "snaps")] == [made.location]
    with open_store(path=tmp_path / "restored", collection=store.name) as restored:
        info = restored.restore_snapshot(made.location, archive=tmp_path / "kept-restored")
        assert info.count == restored.count() == len(corpus.payloads)
        q = queries(corpus)
        assert [[h.record_id for h in r] for r in restored.search_batch(q, k=K)] == [
            [h.record_id for h in r] for r in store.search_batch(q, k=K)
        ]
        with pytest.raises(StoreError, match="exists"):  # never over an existing collection
            restored.restore_snapshot(made.location)


# -- the one translation of index and search settings ------------------------------------------------

OTHER = IndexSettings(
    hnsw_m=12,
    hnsw_ef_construct=96,
    search_ef=77,
    quantization=True,
    rescore=False,
    oversampling=3.0,
    acorn_max_selectivity=0.4,
    full_scan_threshold_kb=5,
    indexing_threshold_kb=7,
    payload_m=4,
    max_segment_points=20_000,
)


@pytest.mark.parametrize("engine", [EDGE, CLIENT], ids=lambda e: e.name)
def test_settings_reach_each_engine_objects(engine: Engine) -> None:
    made = engine_settings.build(OTHER, engine, vector_dim=64)
    assert (made.hnsw.m, made.hnsw.ef_construct, made.hnsw.full_scan_threshold, made.hnsw.payload_m) == (
        12,
        96,
        5,
        4,
    )
    assert made.optimizers.indexing_threshold == 7
    assert made.optimizers.max_segment_size == 5500  # KB: 20,000 x 1.1 float32 vectors of 64 dims
    int8 = getattr(made.quantization, "scalar", made.quantization)  # the client wraps it
    assert str(int8.type).lower().endswith("int8") and int8.always_ram is True
    assert int8.quantile == pytest.approx(0.99)
    assert (
        engine_settings.build(
            OTHER.model_copy(update={"quantization": False}), engine, vector_dim=64
        ).quantization
        is None
    )

    filtered = engine_settings.search_params(OTHER, engine, exact=False, ef=None, filtered=True)
    assert (filtered.hnsw_ef, filtered.exact) == (77, False)
    assert (filtered.quantization.rescore, filtered.quantization.oversampling) == (False, 3.0)
    assert (filtered.acorn.enable, filtered.acorn.max_selectivity) == (True, 0.4)
    plain = engine_settings.search_params(OTHER, engine, exact=True, ef=20, filtered=False)
    assert (plain.hnsw_ef, plain.exact, plain.acorn) == (20, True, None)
    off = OTHER.model_copy(update={"quantization": False, "acorn": False})
    assert engine_settings.search_params(off, engine, exact=False, ef=None, filtered=True).acorn is None
    assert (
        engine_settings.search_params(off, engine, exact=False, ef=None, filtered=True).quantization is None
    )

    schemas = engine_settings.payload_schemas(PAYLOAD_INDEXES, engine)
    assert set(schemas) == set(PAYLOAD_INDEXES)
    for field_name, kind in PAYLOAD_INDEXES.items():
        schema = schemas[field_name]
        if kind == "integer":
            assert (schema.lookup, schema.range) == (True, True)
        elif kind == "tenant":
            assert schema.is_tenant is True
        else:
            assert str(getattr(schema, "value", schema)).lower().endswith(kind)


def test_an_embedded_collection_is_built_with_its_settings(tmp_path: Path) -> None:
    """What edge wrote to disk and the payload indexes it reports: the settings asked, every field."""
    with open_store(path=tmp_path / "store", collection="c", settings=OTHER) as store:
        store.create_collection(dim=FAKE_DIM, model_version=FAKE_VERSION)
        assert isinstance(store, EdgeStore)
        shard_dir = store.root / "collections" / "c" / "shard"
        hnsw = json.loads((shard_dir / "edge_config.json").read_text())["hnsw_config"]
        assert (hnsw["m"], hnsw["ef_construct"], hnsw["full_scan_threshold"], hnsw["payload_m"]) == (
            12,
            96,
            5,
            4,
        )
        assert set(store.shard.info().payload_schema) == set(PAYLOAD_INDEXES)
        assert store.index_settings() == OTHER
