"""similar_by through the service and the wire: the view asked for ranks, every exclusion still holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg import views
from ecgsearch.ecg.schema import InvalidQuery, SearchFilter, parse_similar_by
from ecgsearch.ecg.signals import LEADS
from ecgsearch.export.runtime import Embedder, bundled_model
from ecgsearch.ingest.sources import enumerate_source, load, select
from ecgsearch.search import wire
from ecgsearch.search.api import EcgQuery, FieldViolation, SearchOptions
from ecgsearch.search.engine.store import EdgeStore, open_store, view_specs
from ecgsearch.search.serving.service import SearchService

N = 60


@pytest.fixture(scope="module")
def served(ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SearchService, list]]:
    """A store ingested the way ingest stores (served vector + views), under a service with the model."""
    records = [load(c) for c in select(enumerate_source(ptbxl_dir), limit=N)]
    embedder = Embedder(bundled_model())
    served_vectors, named = views.embed_views(embedder, np.stack([r.signal for r in records]))
    store = open_store(path=tmp_path_factory.mktemp("views") / "store")
    assert isinstance(store, EdgeStore)
    store.create_collection(
        dim=embedder.dim,
        model_version=embedder.version,
        views=view_specs(**views.collection_layout(embedder)),
    )
    payloads = named.flagged([r.payload for r in records])
    store.upsert(payloads, served_vectors, named.rows())
    service = SearchService(store, embedder, stats_refresh_s=3600)
    yield service, records
    service.close()
    store.close()


def test_by_record_ranks_by_the_view_and_keeps_the_patient_rule(served: tuple) -> None:
    service, records = served
    query = records[4].payload
    result = service.search_by_record(
        query.record_id, SearchOptions(k=8, similar_by=(("rhythm", 1.0),)), sites=None
    )
    store = service.store
    flt = SearchFilter(exclude_record_ids=[query.record_id], exclude_duplicates=True)
    if query.patient_id is not None:
        flt = flt.model_copy(update={"exclude_patient_ids": [query.patient_id]})
    (want,) = store.search_views([store.get_views(query.record_id)], {"rhythm": 1.0}, k=8, filter=flt)
    assert [h.record_id for h in result.hits] == [h.record_id for h in want]
    assert all(h.payload.patient_id != query.patient_id for h in result.hits)
    plain = service.search_by_record(query.record_id, SearchOptions(k=8), sites=None)
    assert [h.record_id for h in plain.hits] != [h.record_id for h in result.hits]


def test_by_ecg_computes_the_query_views_as_ingest_did(served: tuple) -> None:
    service, records = served
    raw = records[9]
    ecg = EcgQuery(signal=raw.signal, fs=100.0, leads=LEADS)
    blend = (("waveform", 1.0), ("voltage", 0.5))
    result = service.search_by_ecg(
        ecg, SearchOptions(k=5, similar_by=blend, include_query_record=True), sites=None
    )
    assert result.hits[0].record_id == raw.payload.record_id  # the ECG itself, first in both views


def test_bad_similar_by_is_refused_naming_the_entry(served: tuple) -> None:
    service, records = served
    rid = records[0].payload.record_id
    for bad, where in (((("shape", 1.0),), "similar_by[0]"), ((("rhythm", 0.0),), "similar_by[0]")):
        with pytest.raises(FieldViolation) as err:
            service.search_by_record(rid, SearchOptions(similar_by=bad), sites=None)
        assert where in str(err.value.field)
    with pytest.raises(FieldViolation, match="search by vector has no views"):
        service.search_by_vector(
            service.store.get(rid)[1], SearchOptions(similar_by=(("rhythm", 1.0),)), sites=None
        )


def test_similar_by_crosses_the_wire_and_parses_from_text() -> None:
    options = SearchOptions(k=3, similar_by=(("waveform", 1.0), ("rhythm", 0.5)))
    assert wire.options_from_proto(wire.options_to_proto(options)).similar_by == options.similar_by
    assert wire.options_from_proto(wire.options_to_proto(SearchOptions())).similar_by == ()
    assert parse_similar_by("rhythm") == (("rhythm", 1.0),)
    assert parse_similar_by("waveform=1, rhythm=0.5") == (("waveform", 1.0), ("rhythm", 0.5))
    for bad in ("shape", "rhythm=-1", "rhythm=x", "rhythm,rhythm=2", "blend,rhythm"):
        with pytest.raises(InvalidQuery):
            parse_similar_by(bad)
    blend = SearchOptions(similar_by=parse_similar_by("blend"))
    assert wire.options_from_proto(wire.options_to_proto(blend)).similar_by == (("blend", 1.0),)


def test_the_default_blend_reranks_the_waveform_candidates_with_the_shipped_weights(served: tuple) -> None:
    """similar_by "blend": the store's reranked search with the shipped default blend's weights for
    this query (rhythm only when its rhythm is irregular), the service's exclusions kept; alone only."""
    service, records = served
    store = service.store
    blend = views.default_blend()
    gate = {
        r.payload.record_id: store.get_views(r.payload.record_id)["rhythm"][views.GATE_FEATURE]
        for r in records
    }
    irregular = [r for r in records if gate[r.payload.record_id] > blend.irregularity_above]
    regular = [r for r in records if gate[r.payload.record_id] <= blend.irregularity_above]
    assert irregular and regular  # both kinds among the first 60 PTB-XL ECGs
    gated = views.DefaultBlend(rhythm=0.5, voltage=0.0, irregularity_above=1.0)
    assert (
        gated.rhythm_weight([70.0, 1.5, 0.0, 0.0]) == 0.5 and gated.rhythm_weight([70.0, 0.9, 3.0, 3.0]) == 0
    )
    for record in (irregular[0], regular[0]):
        query = record.payload
        result = service.search_by_record(
            query.record_id, SearchOptions(k=8, similar_by=(("blend", 1.0),)), sites=None
        )
        named = store.get_views(query.record_id)
        rhythm = blend.rhythm if gate[query.record_id] > blend.irregularity_above else 0.0
        flt = SearchFilter(exclude_record_ids=[query.record_id], exclude_duplicates=True)
        if query.patient_id is not None:
            flt = flt.model_copy(update={"exclude_patient_ids": [query.patient_id]})
        (want,) = store.search_reranked(
            [named],
            [{"rhythm": rhythm, "voltage": blend.voltage}],
            k=8,
            missing=views.UNKNOWN_DISTANCE,
            filter=flt,
        )
        assert [h.record_id for h in result.hits] == [h.record_id for h in want]
        assert all(h.payload.patient_id != query.patient_id for h in result.hits)
    with pytest.raises(FieldViolation, match="blend of its own"):
        service.search_by_record(
            records[0].payload.record_id,
            SearchOptions(similar_by=(("blend", 1.0), ("rhythm", 1.0))),
            sites=None,
        )
