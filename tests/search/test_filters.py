"""The one filter translation: same semantics on both Qdrant model families and in plain Python."""

from __future__ import annotations

from typing import Any

import qdrant_edge as edge
from qdrant_client import models as qm

from ecgsearch.ecg.schema import EcgPayload, SearchFilter, point_id
from ecgsearch.search.engine.filters import conditions, matches, to_client, to_edge


def payload(**fields: object) -> EcgPayload:
    base: dict[str, object] = {"record_id": "ptbxl:1", "dataset": "ptbxl", "sampling_rate_hz": 100.0}
    return EcgPayload.model_validate(base | {"source_path": "x"} | fields)


def test_empty_filter_is_none():
    assert conditions(None) is None
    assert conditions(SearchFilter()) is None
    assert to_edge(SearchFilter()) is None
    assert to_client(None) is None


def test_client_filter_shape():
    flt = SearchFilter(
        diagnoses_any=["a", "b"],
        diagnoses_all=["c", "d"],
        diagnoses_none=["e"],
        age_min=40,
        sex="F",
        datasets=["ptbxl"],
        exclude_record_ids=["ptbxl:7"],
        exclude_patient_ids=["p1"],
    )
    out = to_client(flt)
    assert isinstance(out, qm.Filter)
    must = {(c.key, tuple(c.match.any)) for c in out.must if c.match is not None}
    assert must == {
        ("diagnoses", ("a", "b")),
        ("diagnoses", ("c",)),
        ("diagnoses", ("d",)),
        ("sex", ("F",)),
        ("dataset", ("ptbxl",)),
    }
    (age,) = [c for c in out.must if c.range is not None]
    assert (age.key, age.range.gte, age.range.lte) == ("age", 40, None)
    ids = [c for c in out.must_not if isinstance(c, qm.HasIdCondition)]
    assert ids[0].has_id == [point_id("ptbxl:7")]
    keys = {c.key for c in out.must_not if isinstance(c, qm.FieldCondition)}
    assert keys == {"diagnoses", "patient_id"}


def test_edge_filter_selects_what_the_reference_selects(edge_store: Any, corpus: Any):
    """On a real shard: each translated filter keeps exactly the points ``matches`` keeps."""
    first = corpus.payloads[1]
    cases = [
        SearchFilter(diagnoses_all=first.diagnoses[:1], age_max=50, exclude_record_ids=[first.record_id]),
        SearchFilter(sex="M"),
        SearchFilter(sex="F", age_min=30, diagnoses_none=["SCP:SR"]),
        SearchFilter(exclude_patient_ids=[p.patient_id for p in corpus.payloads[:5] if p.patient_id]),
    ]
    for flt in cases:
        assert isinstance(to_edge(flt), edge.Filter)
        expected = sum(matches(flt, p) for p in corpus.payloads)
        assert 0 < expected < len(corpus.payloads), flt  # the case really filters
        assert edge_store.count(flt) == expected, flt


def test_edge_filter_shape():
    out = to_edge(SearchFilter(diagnoses_all=["a", "b"], age_max=50, sex="M", exclude_record_ids=["ptbxl:1"]))
    assert isinstance(out, edge.Filter)
    must = [(c.key, list(c.match.value)) for c in out.must if c.match is not None]
    assert must == [("diagnoses", ["a"]), ("diagnoses", ["b"]), ("sex", ["M"])]
    (age,) = [c for c in out.must if c.range is not None]
    assert (age.key, age.range.gte, age.range.lte) == ("age", None, 50)
    (ids,) = out.must_not
    assert {str(i) for i in ids.point_ids} == {point_id("ptbxl:1")}


def test_matches_reference_semantics():
    p = payload(diagnoses=["a", "b"], age=45, sex="F", patient_id="p1")
    assert matches(SearchFilter(diagnoses_any=["x", "a"]), p)
    assert not matches(SearchFilter(diagnoses_all=["a", "x"]), p)
    assert matches(SearchFilter(diagnoses_all=["a", "b"]), p)
    assert not matches(SearchFilter(diagnoses_none=["b"]), p)
    assert matches(SearchFilter(age_min=45, age_max=45), p)
    assert not matches(SearchFilter(age_min=46), p)
    assert not matches(SearchFilter(age_max=10), payload(age=None))  # unknown age never matches
    assert not matches(SearchFilter(sex="M"), p)
    assert not matches(SearchFilter(sex="M"), payload())
    assert matches(SearchFilter(datasets=["ptbxl", "georgia"]), p)
    assert not matches(SearchFilter(exclude_record_ids=["ptbxl:1"]), p)
    assert not matches(SearchFilter(exclude_patient_ids=["p1"]), p)
    assert matches(SearchFilter(exclude_patient_ids=["p1"]), payload())  # no patient id: not excluded
