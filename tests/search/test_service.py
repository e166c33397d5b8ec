"""SearchService without a transport: validation, code resolution, summaries, deadlines."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from ecgsearch.ecg import codes, signals
from ecgsearch.ecg.schema import MAX_K, CollectionInfo, EcgPayload, Hit, InvalidQuery, SearchFilter
from ecgsearch.search.api import Budget, DeadlineExceeded, EcgQuery, Query, SearchOptions
from ecgsearch.search.engine.store import ModelMismatch
from ecgsearch.search.serving.service import (
    EVERY_SITE as ALL,
)
from ecgsearch.search.serving.service import (
    SearchService,
    resolve_filter,
    summarise,
)
from ecgsearch.search.serving.settings import ServiceSettings


@pytest.fixture
def service(edge_store, fake_embedder) -> Iterator[SearchService]:
    service = SearchService(edge_store, fake_embedder)
    yield service
    service.close()


def _payload(record_id: str, diagnoses: list[str]) -> EcgPayload:
    return EcgPayload(
        record_id=record_id, dataset="t", diagnoses=diagnoses, sampling_rate_hz=100, source_path="x"
    )


def test_summary_on_a_known_case() -> None:
    hits = [
        Hit(record_id="a", score=0.9, payload=_payload("a", ["AF", "X"])),
        Hit(record_id="b", score=0.8, payload=_payload("b", ["AF"])),
        Hit(record_id="c", score=0.7, payload=_payload("c", ["X"])),
        Hit(record_id="d", score=0.6, payload=_payload("d", ["AF", "AF"])),
    ]
    info = CollectionInfo(
        name="c", count=100, dim=4, model_version="v", backend="t", indexed=True,
        diagnosis_counts={"AF": 10, "X": 50},
    )  # fmt: skip
    summary = summarise(hits, info, query_codes=["AF"])
    rows = {r.code: r for r in summary.diagnoses}
    assert [r.code for r in summary.diagnoses] == ["AF", "X"]
    assert (rows["AF"].count, rows["AF"].fraction, rows["AF"].base_rate) == (3, 0.75, 0.10)
    assert rows["AF"].enrichment == pytest.approx(7.5) and rows["AF"].in_query
    assert (rows["X"].count, rows["X"].enrichment, rows["X"].in_query) == (2, 1.0, False)


def test_filter_codes_resolve_to_the_stored_system() -> None:
    flt = resolve_filter(SearchFilter(diagnoses_any=["af", "164889003"], diagnoses_none=["SCP:IMI"]))
    assert flt.diagnoses_any == [codes.resolve("AF")]
    assert flt.diagnoses_none == [codes.resolve("SCP:IMI")]
    with pytest.raises(InvalidQuery, match="unknown diagnosis code"):
        resolve_filter(SearchFilter(diagnoses_any=["nonsense"]))
    with pytest.raises(InvalidQuery, match="both required and excluded"):
        resolve_filter(SearchFilter(diagnoses_all=["AF"], diagnoses_none=["164889003"]))


def test_validation(service: SearchService, corpus) -> None:
    for k in (0, -1, MAX_K + 1):
        with pytest.raises(InvalidQuery, match="options.k: must be between"):
            service.search_by_vector(corpus.vectors[0], SearchOptions(k=k), sites=ALL)
    with pytest.raises(InvalidQuery, match="score_threshold"):
        service.search_by_vector(corpus.vectors[0], SearchOptions(score_threshold=float("nan")), sites=ALL)
    with pytest.raises(InvalidQuery, match="all zeros"):
        service.search_by_vector(np.zeros(corpus.vectors.shape[1]), sites=ALL)
    with pytest.raises(InvalidQuery, match="record_id: is empty"):
        service.search_by_record(" ", sites=ALL)
    with pytest.raises(InvalidQuery, match=r"queries\[1\]: give exactly one"):
        service.batch([Query(vector=corpus.vectors[0]), Query()], sites=ALL)


def test_vector_is_normalised_and_record_excluded(service: SearchService, corpus) -> None:
    scaled = service.search_by_vector(corpus.vectors[2] * 7.0, SearchOptions(k=1, exact=True), sites=ALL)
    assert scaled.hits[0].record_id == corpus.payloads[2].record_id
    assert scaled.hits[0].score == pytest.approx(1.0, abs=1e-5)
    by_record = service.search_by_record(
        corpus.payloads[2].record_id, SearchOptions(k=5, exact=True), sites=ALL
    )
    assert corpus.payloads[2].record_id not in {h.record_id for h in by_record.hits}


def test_deadline_checked_before_expensive_work(service: SearchService, corpus) -> None:
    past = time.monotonic() - 1
    with pytest.raises(DeadlineExceeded):
        service.search_by_vector(corpus.vectors[0], sites=ALL, budget=Budget(deadline=past))
    signal = np.random.default_rng(0).standard_normal((12, 1000))
    with pytest.raises(DeadlineExceeded, match="before preparing ecg"):
        service.search_by_ecg(EcgQuery(signal, 100, signals.LEADS), sites=ALL, budget=Budget(deadline=past))


def test_model_mismatch_refused(edge_store) -> None:
    class Other:
        dim, version, path = 256, "another-model", "other.onnx"

    with pytest.raises(ModelMismatch, match="another-model"):
        SearchService(edge_store, Other())


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops\nb\n\n")
    monkeypatch.setenv("ECGSEARCH_TOKENS", "a, ,c")
    monkeypatch.setenv("ECGSEARCH_TOKENS_FILE", str(tokens))
    monkeypatch.setenv("ECGSEARCH_PORT", "6000")
    monkeypatch.setenv("ECGSEARCH_INSECURE", "true")
    settings = ServiceSettings()
    assert settings.token_list() == ["a", "c", "b"]
    assert (settings.port, settings.insecure, settings.host, settings.collection) == (
        6000,
        True,
        "127.0.0.1",
        "ecgs",
    )
    monkeypatch.setenv("ECGSEARCH_TLS_CLIENT_CA", "ca.pem")
    with pytest.raises(ValueError, match="TLS_CLIENT_CA"):
        ServiceSettings()


def test_collection_statistics_are_refreshed_off_the_request_path(edge_store, fake_embedder, corpus) -> None:
    """info() serves the last background read; a new point shows up after the refresher's next pass."""
    service = SearchService(edge_store, fake_embedder, stats_refresh_s=3600)
    try:
        before = service.info(sites=ALL).count
        extra = corpus.payloads[1].model_copy(update={"record_id": "extra:1", "dataset": "extra"})
        edge_store.upsert([extra], corpus.vectors[1:2])
        assert service.info(sites=ALL).count == before  # no store call on the request path
        assert service.refresh_info().count == before + 1
        assert service.info(sites=ALL).count == before + 1
    finally:
        service.close()
    service = SearchService(edge_store, fake_embedder, stats_refresh_s=0.05)
    try:
        edge_store.upsert([extra.model_copy(update={"record_id": "extra:2"})], corpus.vectors[2:3])
        deadline = time.monotonic() + 30
        while service.info(sites=ALL).count != before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.info(sites=ALL).count == before + 2
    finally:
        service.close()


def test_requests_never_call_store_info(service: SearchService, corpus, monkeypatch) -> None:
    """The vector's dimension comes from the model and summaries from the cached statistics."""

    def forbidden() -> None:
        raise AssertionError("store.info() called on the request path")

    monkeypatch.setattr(service.store, "info", forbidden)
    result = service.search_by_vector(corpus.vectors[0], SearchOptions(k=5, with_summary=True), sites=ALL)
    assert result.summary is not None and result.summary.collection_count == len(corpus.payloads)
    with pytest.raises(InvalidQuery, match=f"vector: must have {corpus.vectors.shape[1]} values"):
        service.check_vector(corpus.vectors[0][:-1])
