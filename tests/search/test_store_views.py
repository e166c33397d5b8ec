"""Named views in both backends: one view or a blend, filters in every view, the flag, the migration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.bench.metrics import neighbours_excluding_patient
from ecgsearch.ecg import views
from ecgsearch.ecg.schema import InvalidQuery, SearchFilter
from ecgsearch.export.runtime import Embedder, bundled_model
from ecgsearch.ingest.sources import enumerate_source, load, select
from ecgsearch.search.engine.store import (
    ModelMismatch,
    Store,
    StoreError,
    open_store,
    view_specs,
)

N = 80
K = 5


@pytest.fixture(scope="module")
def embedded(ptbxl_dir: Path) -> tuple[list, np.ndarray, views.ViewVectors, Embedder]:
    """The first N PTB-XL ECGs as ingest reads them, the last one at 1000x gain (a header error)."""
    records = [load(c) for c in select(enumerate_source(ptbxl_dir), limit=N)]
    signals = np.stack([r.signal for r in records])
    signals[-1] *= 1000
    embedder = Embedder(bundled_model())
    served, named = views.embed_views(embedder, signals)
    return [r.payload for r in records], served, named, embedder


def _fill(store: Store, embedded: tuple) -> Store:
    payloads, served, named, embedder = embedded
    store.create_collection(
        dim=embedder.dim,
        model_version=embedder.version,
        views=view_specs(**views.collection_layout(embedder)),
    )
    store.upsert(named.flagged(payloads), served, named.rows())
    store.optimize()
    return store


@pytest.fixture(params=["edge", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path, embedded: tuple) -> Iterator[Store]:
    s = open_store(path=tmp_path / "store") if request.param == "edge" else open_store(local=True)
    yield _fill(s, embedded)
    s.close()


def _ranked(x: np.ndarray, q: int, euclidean: bool, allowed: np.ndarray) -> np.ndarray:
    """Every allowed row by its score to row q, best first (the query's own row included)."""
    score = -np.linalg.norm(x - x[q], axis=1) if euclidean else x @ x[q]
    order = np.argsort(-np.where(allowed, score, -np.inf), kind="stable")
    return order[allowed[order]]


def _exact(x: np.ndarray, rows: np.ndarray, euclidean: bool, allowed: np.ndarray) -> list[list[int]]:
    return [list(_ranked(x, int(q), euclidean, allowed)[:K]) for q in rows]


@pytest.mark.parametrize("view", views.VIEWS)
def test_one_view_is_exact_knn_on_that_view_with_the_filter(store: Store, embedded: tuple, view: str) -> None:
    payloads, _, named, _ = embedded
    x = {views.WAVEFORM: named.waveform, views.RHYTHM: named.rhythm, views.VOLTAGE: named.voltage}[view]
    allowed = np.array([p.sex == "F" for p in payloads]) & np.isfinite(x).all(axis=1)
    rows = np.array([0, 7, 21])
    hits = store.search_views(
        [named.row(int(i)) for i in rows], {view: 1.0}, k=K, filter=SearchFilter(sex="F"), exact=True
    )
    want = _exact(np.nan_to_num(x), rows, view in views.EUCLIDEAN, allowed)
    for got, expected in zip(hits, want, strict=True):
        assert [h.record_id for h in got] == [payloads[i].record_id for i in expected]
        assert all(h.payload.sex == "F" for h in got)


def test_blend_is_weighted_rank_fusion_of_the_filtered_views(store: Store, embedded: tuple) -> None:
    payloads, _, named, _ = embedded
    query = named.row(3)
    blend = {views.WAVEFORM: 1.0, views.RHYTHM: 0.5}
    flt = SearchFilter(age_min=50)
    (hits,) = store.search_views([query], blend, k=K, filter=flt, exact=True)
    allowed = np.array([(p.age or 0) >= 50 for p in payloads])
    score = np.zeros(len(payloads))
    for view, w in blend.items():
        x = named.waveform if view == views.WAVEFORM else named.rhythm
        prefetch = _ranked(x, 3, view in views.EUCLIDEAN, allowed)[: views.PREFETCH]
        for rank, i in enumerate(prefetch, start=1):
            score[i] += w / (rank + views.RRF_K + w - 2)  # Qdrant's weighted RRF
    want = np.argsort(-score, kind="stable")[:K]
    row = {p.record_id: i for i, p in enumerate(payloads)}
    # the same fused scores in the same order; two ECGs with equal fused scores may come in either order
    assert [round(score[row[h.record_id]], 6) for h in hits] == [round(score[i], 6) for i in want]
    assert [h.score for h in hits] == pytest.approx([score[i] for i in want], abs=1e-6)
    untied = [i for i in want if np.sum(np.isclose(score, score[i])) == 1]
    assert {payloads[i].record_id for i in untied} <= {h.record_id for h in hits}
    assert all((h.payload.age or 0) >= 50 for h in hits)


def test_the_default_blend_reranks_the_waveform_candidates_by_every_views_distance(
    store: Store, embedded: tuple
) -> None:
    """The learned view's filtered top PREFETCH, each candidate scored by its cosine minus the weighted
    rhythm and voltage distances; a candidate with no voltage vector counts the unknown distance."""
    payloads, _, named, _ = embedded
    weights = {views.RHYTHM: 0.3, views.VOLTAGE: 0.05}
    flt = SearchFilter(age_min=30)
    allowed = np.array([(p.age or 0) >= 30 for p in payloads])
    for q in (3, 11):
        (hits,) = store.search_reranked(
            [named.row(q)], [weights], k=K, missing=views.UNKNOWN_DISTANCE, filter=flt, exact=True
        )
        candidates = _ranked(named.waveform, q, False, allowed)[: views.PREFETCH]
        voltage = np.linalg.norm(named.voltage - named.voltage[q], axis=1)
        voltage[~np.isfinite(voltage)] = views.UNKNOWN_DISTANCE[views.VOLTAGE]  # the 1000x ECG
        score = (
            named.waveform[candidates] @ named.waveform[q]
            - 0.3 * np.linalg.norm(named.rhythm[candidates] - named.rhythm[q], axis=1)
            - 0.05 * voltage[candidates]
        )
        want = candidates[np.argsort(-score, kind="stable")[:K]]
        assert [h.record_id for h in hits] == [payloads[i].record_id for i in want]
        assert [h.score for h in hits] == pytest.approx(sorted(score, reverse=True)[:K], abs=1e-4)
    (plain,) = store.search_reranked([named.row(3)], [{}], k=K, missing={}, exact=True)
    assert [h.record_id for h in plain] == [
        payloads[i].record_id for i in _ranked(named.waveform, 3, False, allowed | True)[:K]
    ]


def test_a_gain_suspect_ecg_has_the_flag_and_no_voltage_vector(store: Store, embedded: tuple) -> None:
    payloads, _, named, _ = embedded
    suspect = payloads[-1].record_id
    assert store.get(suspect)[0].gain_suspect is True
    assert set(store.get_views(suspect)) == {views.WAVEFORM, views.RHYTHM}
    assert set(store.get_views(payloads[0].record_id)) == set(views.VIEWS)
    (hits,) = store.search_views([named.row(0)], {views.VOLTAGE: 1.0}, k=N, exact=True)
    assert suspect not in {h.record_id for h in hits} and len(hits) == N - 1
    with pytest.raises(InvalidQuery, match="no voltage vector .*gain is suspect"):
        store.search_views([named.row(N - 1)], {views.VOLTAGE: 1.0}, k=K)


def test_the_default_search_is_unchanged_by_the_views(store: Store, embedded: tuple) -> None:
    payloads, served, _, _ = embedded
    hits = store.search(served[5], k=K, exact=True)
    top, _ = neighbours_excluding_patient(served, [None] * len(served), K + 1, np.array([5]))
    assert [h.record_id for h in hits] == [payloads[i].record_id for i in [5, *top[0][: K - 1]]]


def test_a_collection_made_before_views_names_the_migration(tmp_path: Path, embedded: tuple) -> None:
    payloads, served, named, embedder = embedded
    with open_store(path=tmp_path / "old") as old:
        old.create_collection(dim=embedder.dim, model_version=embedder.version)
        # views given to a collection without them: it stores the served vector only
        old.upsert(payloads, served, named.rows())
        with pytest.raises(InvalidQuery, match="made before them.*ingest .*--collection ecgs-views.*alias"):
            old.search_views([named.row(0)], {views.RHYTHM: 1.0}, k=K)
        # this ingest still adds to it (served vectors only, as before views)
        old.create_collection(
            dim=embedder.dim,
            model_version=embedder.version,
            views=view_specs(**views.collection_layout(embedder)),
        )
        assert old.views() == {}
    with open_store(path=tmp_path / "new") as new:
        _fill(new, embedded)
        other = dict(views.view_versions(embedder.version), rhythm="rhythm-other")
        with pytest.raises(ModelMismatch, match="rhythm rhythm-other.*re-embed into a new collection"):
            new.create_collection(
                dim=embedder.dim,
                model_version=embedder.version,
                views=view_specs(views.view_dims(embedder.learned_dim), other, served_dim=embedder.dim),
            )
        with pytest.raises(StoreError, match="needs every point's views"):
            new.upsert(payloads[:1], served[:1])
        with pytest.raises(InvalidQuery, match="unknown view 'shape'"):
            new.search_views([named.row(0)], {"shape": 1.0}, k=K)


def test_collection_info_names_each_view_and_its_version(tmp_path: Path, embedded: tuple) -> None:
    from ecgsearch.search.ops.admin import collection_info

    _, _, _, embedder = embedded
    with open_store(path=tmp_path / "store") as s:
        _fill(s, embedded)
        held = collection_info(s)["views"]
    assert held[views.WAVEFORM] == {
        "dim": embedder.learned_dim,
        "distance": "cosine",
        "version": embedder.version,
        "served": embedder.learned_dim == embedder.dim,  # the bundled model's: all of its vector
    }
    assert held[views.RHYTHM]["version"] == views.view_versions(embedder.version)[views.RHYTHM]
    assert held[views.VOLTAGE]["distance"] == "euclid" and held[views.VOLTAGE]["dim"] == 12


def test_a_waveform_view_that_is_the_served_vector_is_stored_once(
    store: Store, embedded: tuple, tmp_path: Path
) -> None:
    """Model 4's waveform view is all of its served vector: searched through it, never stored twice."""
    payloads, served, named, embedder = embedded
    assert embedder.learned_dim == embedder.dim and store.views()[views.WAVEFORM].served
    for q in (3, 17):
        by_view = store.search_views([named.row(q)], {views.WAVEFORM: 1.0}, k=K, exact=True)[0]
        by_vector = store.search(served[q], k=K, exact=True)
        assert [h.record_id for h in by_view] == [h.record_id for h in by_vector]
    stored = store.get_views(payloads[3].record_id)
    assert np.allclose(stored[views.WAVEFORM], served[3], atol=1e-6)
    assert set(stored) == {views.WAVEFORM, views.RHYTHM, views.VOLTAGE}
    # a waveform narrower than the served vector (a model with measured blocks) is its own vector
    narrower = view_specs(
        views.view_dims(embedder.dim - 2), views.view_versions(embedder.version), served_dim=embedder.dim
    )
    assert not narrower[views.WAVEFORM].served
    assert not any(spec.served for v, spec in narrower.items())


def test_the_served_waveform_takes_no_second_vector_on_disk(tmp_path: Path, embedded: tuple) -> None:
    payloads, served, named, embedder = embedded
    sizes = {}
    for name, served_dim in (("once", embedder.dim), ("twice", None)):
        specs = view_specs(
            views.view_dims(embedder.learned_dim),
            views.view_versions(embedder.version),
            served_dim=served_dim,
        )
        with open_store(path=tmp_path / name) as s:
            s.create_collection(dim=embedder.dim, model_version=embedder.version, views=specs)
            s.upsert(named.flagged(payloads), served, named.rows())
            s.optimize()
        sizes[name] = sum(p.stat().st_size for p in (tmp_path / name).rglob("*") if p.is_file())
    assert sizes["once"] < sizes["twice"]


def test_a_collection_with_views_is_indexed_once_every_vector_it_holds_is(
    tmp_path: Path, embedded: tuple
) -> None:
    """The engine counts indexed vectors, one per named vector: a gain-suspect ECG holds one fewer."""
    import qdrant_edge as edge

    payloads, served, named, embedder = embedded
    with open_store(path=tmp_path / "store") as s:
        s.create_collection(
            dim=embedder.dim,
            model_version=embedder.version,
            views=view_specs(**views.collection_layout(embedder)),
        )
        s.upsert(named.flagged(payloads), served, named.rows())
        assert not s.info().indexed  # written, not yet indexed
        s.optimize()
        per_point = 1 + sum(not spec.served for spec in s.views().values())
        assert s.shard.info().indexed_vectors_count == N * per_point - int(named.gain_suspect.sum())
        assert named.gain_suspect.sum() == 1 and s.info().indexed
        s.shard.update(edge.UpdateOperation.delete_field_index("gain_suspect"))  # a store made before it
    with open_store(path=tmp_path / "store") as s:
        assert "gain_suspect" in s.shard.info().payload_schema and s.info().indexed
