"""PAYLOAD_FIELDS is the one declaration of the stored payload: EcgPayload, pb.Payload, the Measurement
enum, the readers' Measurements, the store's indexes, the filters and the viewer all agree with it."""

from __future__ import annotations

import dataclasses
import typing

from google.protobuf.descriptor import FieldDescriptor

from ecgsearch.ecg import schema
from ecgsearch.ecg.readers.types import EcgHeader
from ecgsearch.ecg.schema import MEASUREMENTS, PAYLOAD_FIELDS, EcgPayload, MeasurementRange, SearchFilter
from ecgsearch.search import wire
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search.engine import filters
from ecgsearch.search.engine.store import PAYLOAD_INDEXES
from ecgsearch.web import measures

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_BOOL: "bool",
}


def _proto_type(field: FieldDescriptor) -> str:
    """A descriptor's field type, spelled as the .proto declares it."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (_proto_type(f) for f in field.message_type.fields)
        return f"map<{key}, {value}>"
    if field.message_type is not None:
        return field.message_type.full_name
    base = field.enum_type.name if field.enum_type is not None else _SCALARS[field.type]
    if field.is_repeated:
        return f"repeated {base}"
    return f"optional {base}" if field.has_presence else base


def test_names_and_numbers_are_unique() -> None:
    assert len({f.name for f in PAYLOAD_FIELDS}) == len(PAYLOAD_FIELDS)
    assert len({f.number for f in PAYLOAD_FIELDS}) == len(PAYLOAD_FIELDS)
    numbers = [f.measure.wire_number for f in PAYLOAD_FIELDS if f.measure is not None]
    assert len(set(numbers)) == len(numbers)


def test_ecg_payload_has_exactly_the_declared_fields() -> None:
    assert set(EcgPayload.model_fields) - schema.STORED_ONLY == {f.name for f in PAYLOAD_FIELDS}


def test_pb_payload_is_the_declaration() -> None:
    """Name, number and type of every pb.Payload field, and nothing more."""
    sent = {f.name: (f.number, _proto_type(f)) for f in pb.Payload.DESCRIPTOR.fields}
    assert sent == {f.name: (f.number, f.proto) for f in PAYLOAD_FIELDS}


def test_measurements_agree_everywhere() -> None:
    assert typing.get_args(schema.Measurement) == MEASUREMENTS
    assert tuple(f.name for f in dataclasses.fields(schema.Measurements)) == MEASUREMENTS
    assert set(MEASUREMENTS) <= set(EcgHeader().public_fields())
    enum = {v.name: v.number for v in pb.Measurement.DESCRIPTOR.values if v.number != 0}
    declared = {f"MEASUREMENT_{f.name.upper()}": f.measure.wire_number for f in PAYLOAD_FIELDS if f.measure}
    assert enum == declared
    assert {name: wire.MEASUREMENT_FROM_PROTO[number] for name, number in declared.items()} == {
        f"MEASUREMENT_{m.upper()}": m for m in MEASUREMENTS
    }
    assert [spec.name for spec in measures.SPECS] == list(MEASUREMENTS)
    assert all(PAYLOAD_INDEXES[m] == "float" for m in MEASUREMENTS)


def test_store_indexes_every_field_a_filter_reads() -> None:
    """A filter with every condition set touches only indexed payload keys, and every declared index is
    read by some condition (the copy marker's is-empty test too: indexed, the engine's estimate of the
    service's copy rule is exact and the rule is planned as HNSW)."""
    flt = SearchFilter(
        diagnoses_any=["a"],
        diagnoses_all=["b"],
        diagnoses_none=["c"],
        age_min=1,
        age_max=90,
        sex="F",
        datasets=["d"],
        exclude_record_ids=["d:1"],
        exclude_patient_ids=["p"],
        exclude_duplicates=True,
        sites=["s"],
        measurements=[MeasurementRange(measurement=m, min=0) for m in MEASUREMENTS],
    )
    tree = filters.conditions(flt)
    assert tree is not None
    keys = {c.key for c in tree.must + tree.must_not if c.kind in {"any", "range", "empty"}}
    assert keys | {"gain_suspect"} == set(PAYLOAD_INDEXES)  # and the store counts the gain-suspect ECGs
    assert {f.name: f.index for f in PAYLOAD_FIELDS if f.index} == PAYLOAD_INDEXES
