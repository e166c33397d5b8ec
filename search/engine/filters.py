"""SearchFilter -> Qdrant filter: the only translation, for both engines.

``conditions`` turns a SearchFilter into a small neutral tree (must / must_not lists of
``Cond``); ``to_edge`` and ``to_client`` emit it as ``qdrant_edge.Filter`` or
``qdrant_client.models.Filter``. The two libraries spell the same ideas differently (``RangeFloat``
vs ``Range``, ``HasIdCondition(point_ids=)`` vs ``has_id=``), so each emitter is a few lines and
the semantics live once, here:

- ``diagnoses_any``: ``diagnoses`` holds at least one of the codes;
- ``diagnoses_all``: one must-condition per code;
- ``diagnoses_none``: must_not ``diagnoses`` any of the codes;
- ``age_min``/``age_max``: integer range on ``age``, inclusive; a point without an age never matches;
- ``sex``: keyword ``sex``; ``datasets``: ``dataset`` is one of them;
- ``exclude_record_ids``: must_not has_id(point_id(record_id));
- ``exclude_patient_ids``: must_not ``patient_id`` any of them;
- ``exclude_duplicates``: ``duplicate_of`` is empty (unset): ECGs recorded at ingest as copies of another
  stored ECG never match, so one ECG is not returned twice (its original still is).
- ``sites``: keyword ``site`` is one of them (the server adds it for site-restricted callers).
- ``measurements``: one float range per measurement on the payload field of that name (``qrs_ms``,
  ``qtc_ms``...), inclusive; a point without the measurement never matches.

An empty filter gives None (no filter at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import qdrant_edge as edge
from qdrant_client import models as qm

from ecgsearch.ecg.schema import EcgPayload, SearchFilter, point_id


@dataclass(frozen=True)
class Cond:
    """One engine-neutral condition: keyword match-any, integer range, point-id set, or an empty field."""

    kind: Literal["any", "range", "ids", "empty"]
    key: str = ""
    values: tuple[str, ...] = ()
    gte: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Conditions:
    """All of ``must`` and none of ``must_not``."""

    must: list[Cond] = field(default_factory=list)
    must_not: list[Cond] = field(default_factory=list)


def conditions(flt: SearchFilter | None) -> Conditions | None:
    """The neutral condition tree of a filter; None when nothing is asked."""
    if flt is None or flt.is_empty():
        return None
    must: list[Cond] = []
    must_not: list[Cond] = []
    if flt.diagnoses_any:
        must.append(Cond("any", "diagnoses", tuple(flt.diagnoses_any)))
    must.extend(Cond("any", "diagnoses", (code,)) for code in dict.fromkeys(flt.diagnoses_all))
    if flt.diagnoses_none:
        must_not.append(Cond("any", "diagnoses", tuple(flt.diagnoses_none)))
    if flt.age_min is not None or flt.age_max is not None:
        must.append(Cond("range", "age", gte=flt.age_min, lte=flt.age_max))
    if flt.sex is not None:
        must.append(Cond("any", "sex", (flt.sex,)))
    if flt.datasets:
        must.append(Cond("any", "dataset", tuple(flt.datasets)))
    if flt.exclude_record_ids:
        must_not.append(Cond("ids", values=tuple(point_id(r) for r in flt.exclude_record_ids)))
    if flt.exclude_patient_ids:
        must_not.append(Cond("any", "patient_id", tuple(flt.exclude_patient_ids)))
    if flt.exclude_duplicates:
        must.append(Cond("empty", "duplicate_of"))
    if flt.sites:
        must.append(Cond("any", "site", tuple(flt.sites)))
    must.extend(Cond("range", r.measurement, gte=r.min, lte=r.max) for r in flt.measurements)
    return Conditions(must, must_not)


def to_edge(flt: SearchFilter | None) -> edge.Filter | None:
    """The filter for qdrant-edge (EdgeStore)."""
    tree = conditions(flt)
    if tree is None:
        return None

    def emit(c: Cond) -> edge.FieldCondition | edge.HasIdCondition | edge.IsEmptyCondition:
        if c.kind == "ids":
            return edge.HasIdCondition(point_ids=set(c.values))
        if c.kind == "empty":
            return edge.IsEmptyCondition(key=c.key)
        if c.kind == "range":
            return edge.FieldCondition(key=c.key, range=edge.RangeFloat(gte=c.gte, lte=c.lte))
        return edge.FieldCondition(key=c.key, match=edge.MatchAny(any=list(c.values)))

    return edge.Filter(
        must=[emit(c) for c in tree.must] or None,
        must_not=[emit(c) for c in tree.must_not] or None,
    )


def to_client(flt: SearchFilter | None) -> qm.Filter | None:
    """The filter for qdrant-client (ServerStore, local mode included)."""
    tree = conditions(flt)
    if tree is None:
        return None

    def emit(c: Cond) -> qm.FieldCondition | qm.HasIdCondition | qm.IsEmptyCondition:
        if c.kind == "ids":
            return qm.HasIdCondition(has_id=list(c.values))
        if c.kind == "empty":
            return qm.IsEmptyCondition(is_empty=qm.PayloadField(key=c.key))
        if c.kind == "range":
            return qm.FieldCondition(key=c.key, range=qm.Range(gte=c.gte, lte=c.lte))
        return qm.FieldCondition(key=c.key, match=qm.MatchAny(any=list(c.values)))

    return qm.Filter(
        must=[emit(c) for c in tree.must] or None,
        must_not=[emit(c) for c in tree.must_not] or None,
    )


def matches(flt: SearchFilter | None, payload: EcgPayload) -> bool:
    """The same semantics in plain Python: the reference the engines are tested (and benchmarked) against."""
    tree = conditions(flt)
    if tree is None:
        return True

    pid = point_id(payload.record_id)

    def holds(c: Cond) -> bool:
        if c.kind == "ids":
            return pid in c.values
        value = getattr(payload, c.key)
        if c.kind == "empty":
            return value is None or value == []
        if c.kind == "range":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            return (c.gte is None or value >= c.gte) and (c.lte is None or value <= c.lte)
        have = set(value) if isinstance(value, list) else {value}
        return bool(have & set(c.values))

    return all(holds(c) for c in tree.must) and not any(holds(c) for c in tree.must_not)
