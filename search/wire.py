"""pydantic/numpy <-> protobuf: every conversion between the domain models and the wire, one function each.

The servicer and the client both convert here, so a field added to the filter is added in one place for
both ends; a payload field needs nothing here: ``payload_to_proto``/``payload_from_proto`` convert every
field of ``ecg.schema.PAYLOAD_FIELDS`` by its proto type. Nothing here validates a value:
``SearchService`` does, once. Decoding only refuses what cannot be represented at all (a per-lead ECG
whose leads differ in length).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from ecgsearch.ecg.formats import FORMATS
from ecgsearch.ecg.schema import (
    PAYLOAD_FIELDS,
    SIMILAR_BY,
    CollectionInfo,
    EcgPayload,
    Hit,
    InvalidQuery,
    SearchFilter,
    Sex,
    check_view_or_blend,
)
from ecgsearch.export.card import ModelCard
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search.api import (
    DEFAULT_K,
    DiagnosisConcentration,
    EcgFile,
    EcgQuery,
    NeighbourhoodSummary,
    Pushed,
    PushStatus,
    Query,
    RecordedEcg,
    SearchOptions,
    SearchResult,
    SnapshotInfo,
    UpsertItem,
)

SEX_TO_PROTO: dict[Sex | None, pb.Sex] = {None: pb.SEX_UNSPECIFIED, "M": pb.SEX_MALE, "F": pb.SEX_FEMALE}
SEX_FROM_PROTO: dict[pb.Sex, Sex | None] = {v: k for k, v in SEX_TO_PROTO.items()}
UNITS_TO_PROTO = {
    "mv": pb.UNITS_MILLIVOLT,
    "uv": pb.UNITS_MICROVOLT,
    "µv": pb.UNITS_MICROVOLT,
    "v": pb.UNITS_VOLT,
}
UNITS_FROM_PROTO = {
    pb.UNITS_UNSPECIFIED: "mV",
    pb.UNITS_MILLIVOLT: "mV",
    pb.UNITS_MICROVOLT: "uV",
    pb.UNITS_VOLT: "V",
}
EXCLUSION_TO_PROTO = {
    "query_record": pb.EXCLUSION_QUERY_RECORD,
    "same_patient": pb.EXCLUSION_SAME_PATIENT,
    "duplicate_copy": pb.EXCLUSION_DUPLICATE_COPY,
}
EXCLUSION_FROM_PROTO = {v: k for k, v in EXCLUSION_TO_PROTO.items()}
MEASUREMENT_TO_PROTO = {f.name: f.measure.wire_number for f in PAYLOAD_FIELDS if f.measure is not None}
MEASUREMENT_FROM_PROTO = {v: k for k, v in MEASUREMENT_TO_PROTO.items()}
FORMAT_TO_PROTO: dict[str | None, pb.EcgFormat] = {
    None: pb.ECG_FORMAT_UNSPECIFIED,
    **{f.name: pb.EcgFormat.Value(f.wire_name) for f in FORMATS},  # the proto enum is written from FORMATS
}
FORMAT_FROM_PROTO = {v: k for k, v in FORMAT_TO_PROTO.items()}
STATUS_TO_PROTO: dict[PushStatus, pb.UpsertStatus] = {
    "stored": pb.UPSERT_STATUS_STORED,
    "skipped": pb.UPSERT_STATUS_SKIPPED,
    "rejected": pb.UPSERT_STATUS_REJECTED,
}
STATUS_FROM_PROTO: dict[pb.UpsertStatus, PushStatus] = {v: k for k, v in STATUS_TO_PROTO.items()}

# --- filter and options --------------------------------------------------------------------------


def filter_to_proto(flt: SearchFilter) -> pb.Filter:
    msg = pb.Filter(
        diagnoses_any=flt.diagnoses_any,
        diagnoses_all=flt.diagnoses_all,
        diagnoses_none=flt.diagnoses_none,
        sex=SEX_TO_PROTO[flt.sex],
        datasets=flt.datasets,
        exclude_record_ids=flt.exclude_record_ids,
        exclude_patient_ids=flt.exclude_patient_ids,
    )
    if flt.age_min is not None:
        msg.age_min = flt.age_min
    if flt.age_max is not None:
        msg.age_max = flt.age_max
    for r in flt.measurements:
        entry = msg.measurements.add(measurement=MEASUREMENT_TO_PROTO[r.measurement])
        if r.min is not None:
            entry.min = r.min
        if r.max is not None:
            entry.max = r.max
    return msg


def measurement_from_proto(msg: pb.MeasurementRange) -> dict[str, object]:
    """A range as plain fields, for the service to validate (an unknown enum number fails there)."""
    return {
        "measurement": MEASUREMENT_FROM_PROTO.get(msg.measurement, "?"),
        "min": msg.min if msg.HasField("min") else None,
        "max": msg.max if msg.HasField("max") else None,
    }


def filter_from_proto(msg: pb.Filter) -> SearchFilter:
    """An unvalidated filter (``model_construct``): ``SearchService`` bounds and validates it once.

    Every field is given: for one left out, ``model_construct`` inspects the signature of its default
    factory on each call (~0.1 ms a request). ``sites`` and ``exclude_duplicates`` are the server's to set.
    An empty message (most searches) is the default filter, which costs a third of the construction.
    """
    if not msg.ByteSize():
        return SearchFilter()
    return SearchFilter.model_construct(
        diagnoses_any=list(msg.diagnoses_any),
        diagnoses_all=list(msg.diagnoses_all),
        diagnoses_none=list(msg.diagnoses_none),
        age_min=msg.age_min if msg.HasField("age_min") else None,
        age_max=msg.age_max if msg.HasField("age_max") else None,
        sex=SEX_FROM_PROTO.get(msg.sex, "?"),  # an unknown enum number fails validation as sex
        datasets=list(msg.datasets),
        exclude_record_ids=list(msg.exclude_record_ids),
        exclude_patient_ids=list(msg.exclude_patient_ids),
        measurements=[measurement_from_proto(r) for r in msg.measurements],
        exclude_duplicates=False,
        sites=[],
    )


def options_to_proto(options: SearchOptions) -> pb.SearchOptions:
    msg = pb.SearchOptions(
        filter=filter_to_proto(options.filter),
        k=options.k,
        exact=options.exact,
        with_summary=options.with_summary,
        include_duplicates=options.include_duplicates,
        include_query_record=options.include_query_record,
    )
    if options.score_threshold is not None:
        msg.score_threshold = options.score_threshold
    for view, weight in options.similar_by:
        msg.similar_by.add(view=VIEW_TO_PROTO[check_view_or_blend(view)], weight=weight)
    return msg


def options_from_proto(msg: pb.SearchOptions) -> SearchOptions:
    return SearchOptions(
        filter=filter_from_proto(msg.filter),
        k=msg.k if msg.HasField("k") else DEFAULT_K,
        score_threshold=msg.score_threshold if msg.HasField("score_threshold") else None,
        exact=msg.exact,
        with_summary=msg.with_summary,
        include_duplicates=msg.include_duplicates,
        include_query_record=msg.include_query_record,
        similar_by=tuple((_view_from_proto(v.view), float(v.weight)) for v in msg.similar_by),
    )


VIEW_TO_PROTO = {name: pb.View.Value(f"VIEW_{name.upper()}") for name in SIMILAR_BY}
VIEW_FROM_PROTO = {number: name for name, number in VIEW_TO_PROTO.items()}


def _view_from_proto(value: int) -> str:
    if value not in VIEW_FROM_PROTO:
        raise InvalidQuery(f"options.similar_by: unknown view {value}; views are {', '.join(SIMILAR_BY)}")
    return VIEW_FROM_PROTO[value]


# --- ECGs and vectors ----------------------------------------------------------------------------


def units_to_proto(units: Sequence[str] | str) -> list[pb.Units]:
    """Unit names ("mV", "uV", "V", case-insensitive) -> Units values; InvalidQuery names an unknown one."""
    names = [units] if isinstance(units, str) else list(units)
    out = []
    for name in names:
        value = UNITS_TO_PROTO.get((name or "mV").strip().lower())
        if value is None:
            raise InvalidQuery(f"ecg.units: unknown amplitude unit {name[:16]!r}; use mV, uV or V")
        out.append(value)
    return out


def ecg_to_proto(
    signal: np.ndarray, fs: float, leads: Sequence[str], units: Sequence[str] | str = "mV"
) -> pb.Ecg:
    """Send the raw samples as one lead-major array: the server prepares them like stored ECGs."""
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidQuery(f"expected a (leads, samples) array, got shape {x.shape}")
    return pb.Ecg(
        lead_names=list(leads),
        sampling_rate_hz=float(fs),
        units=units_to_proto(units),
        flat_samples=x.ravel(),
        n_leads=x.shape[0],
    )


def ecg_from_proto(msg: pb.Ecg) -> EcgQuery:
    """Either form of samples -> an EcgQuery; the service checks its shape and bounds before any work."""
    if msg.leads and msg.flat_samples:
        raise InvalidQuery("ecg: give the samples either per lead or as flat_samples, not both")
    if msg.leads:
        lengths = {len(lead.values) for lead in msg.leads}
        if len(lengths) != 1:
            raise InvalidQuery(
                f"ecg.leads: leads differ in length ({min(lengths)} to {max(lengths)} samples)"
            )
        signal = np.array([np.asarray(lead.values, dtype=np.float32) for lead in msg.leads])
    else:
        signal = np.asarray(msg.flat_samples, dtype=np.float32)
    units = tuple(UNITS_FROM_PROTO.get(u, "?") for u in msg.units)
    return EcgQuery(
        signal=signal,
        fs=msg.sampling_rate_hz,
        leads=tuple(msg.lead_names),
        units=units if len(units) > 1 else (units[0] if units else "mV"),
        n_leads=msg.n_leads or None,
    )


def file_to_proto(file: EcgFile) -> pb.EcgFile:
    hint = FORMAT_TO_PROTO.get(file.format_hint)
    if hint is None:
        raise InvalidQuery(f"file.format_hint: unknown format {str(file.format_hint)[:16]!r}")
    return pb.EcgFile(content=file.content, format_hint=hint)


def file_from_proto(msg: pb.EcgFile) -> EcgFile:
    return EcgFile(content=bytes(msg.content), format_hint=FORMAT_FROM_PROTO.get(msg.format_hint, "?"))


def upsert_item_to_proto(item: UpsertItem) -> pb.UpsertItem:
    msg = pb.UpsertItem(native_id=item.native_id, patient_key=item.patient_key)
    if item.file is not None:
        msg.file.CopyFrom(file_to_proto(item.file))
    elif item.ecg is not None:
        msg.ecg.CopyFrom(ecg_to_proto(item.ecg.signal, item.ecg.fs, item.ecg.leads, item.ecg.units))
    return msg


def upsert_item_from_proto(msg: pb.UpsertItem) -> UpsertItem:
    kind = msg.WhichOneof("source")
    return UpsertItem(
        file=file_from_proto(msg.file) if kind == "file" else None,
        ecg=ecg_from_proto(msg.ecg) if kind == "ecg" else None,
        native_id=msg.native_id,
        patient_key=msg.patient_key,
    )


def vector_from_proto(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def query_to_proto(query: Query) -> pb.Query:
    msg = pb.Query(options=options_to_proto(query.options), include_same_patient=query.include_same_patient)
    if query.record_id is not None:
        msg.record_id = query.record_id
    elif query.ecg is not None:
        msg.ecg.CopyFrom(ecg_to_proto(query.ecg.signal, query.ecg.fs, query.ecg.leads, query.ecg.units))
    elif query.vector is not None:
        msg.vector.values[:] = np.asarray(query.vector, dtype=np.float32).tolist()
    return msg


def query_from_proto(msg: pb.Query) -> Query:
    options = options_from_proto(msg.options)
    kind = msg.WhichOneof("query")
    same = msg.include_same_patient
    if kind == "record_id":
        return Query(options=options, record_id=msg.record_id, include_same_patient=same)
    if kind == "ecg":
        return Query(options=options, ecg=ecg_from_proto(msg.ecg), include_same_patient=same)
    if kind == "vector":
        return Query(options=options, vector=vector_from_proto(msg.vector.values), include_same_patient=same)
    return Query(options=options, include_same_patient=same)  # none given: the service says so


# --- payloads, hits, summaries -------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1)  # naive: what Timestamp counts from, in UTC


def timestamp_fields(when: datetime) -> dict[str, int]:
    """A datetime as Timestamp fields (what a message's constructor takes); a naive one (the sources carry
    no zone) is read as if UTC. Computed here, not by ``FromDatetime``: a hit's conversion runs for every
    hit of every reply, and ``FromDatetime`` cost a third of it."""
    naive = when if when.tzinfo is None else when.astimezone(UTC).replace(tzinfo=None)
    delta = naive - _EPOCH
    return {"seconds": delta.days * 86_400 + delta.seconds, "nanos": delta.microseconds * 1000}


def timestamp_to_proto(when: datetime, msg: Timestamp) -> None:
    """Set ``msg`` to ``when`` (``timestamp_fields``)."""
    msg.CopyFrom(Timestamp(**timestamp_fields(when)))


def _wire_kind(proto: str) -> str:
    """How a payload field crosses the wire, from its proto type: sex, timestamp, repeated, map,
    optional (presence tracked) or plain."""
    if proto == "Sex":
        return "sex"
    if proto == "google.protobuf.Timestamp":
        return "timestamp"
    return next(
        (
            p
            for p in ("repeated", "map", "optional")
            if proto.startswith(p + " ") or proto.startswith(p + "<")
        ),
        "plain",
    )


# The payload's fields by how they cross the wire, worked out once from PAYLOAD_FIELDS: a hit's conversion
# runs for every hit of every reply, on both ends, and reading the proto types per field cost ~50 us a
# payload. A plain field's default is indistinguishable from unset: ``_PLAIN`` says which the payload needs.
_KINDS = tuple((f.name, _wire_kind(f.proto)) for f in PAYLOAD_FIELDS)
_PLAIN = tuple((n, EcgPayload.model_fields[n].is_required()) for n, kind in _KINDS if kind == "plain")
_OPTIONAL = tuple(n for n, kind in _KINDS if kind == "optional")
_REPEATED = tuple(n for n, kind in _KINDS if kind == "repeated")
_MAPS = tuple(n for n, kind in _KINDS if kind == "map")
_STAMPS = tuple(n for n, kind in _KINDS if kind == "timestamp")
_SEXES = tuple(n for n, kind in _KINDS if kind == "sex")
_SCALARS = tuple(n for n, _ in _PLAIN) + _OPTIONAL
_COLLECTIONS = _REPEATED + _MAPS


def payload_fields(payload: EcgPayload) -> dict[str, Any]:
    """Every field of PAYLOAD_FIELDS as ``pb.Payload``'s constructor takes it; an absent optional value
    and an empty list or map stay unset (the same message). A reply is built from these in one
    constructor call (``result_to_proto``): building each hit's message apart and then copying it into
    the reply cost twice as much. The values are read from the model's ``__dict__``, where pydantic
    keeps them: an attribute lookup per field cost a fifth more, for every hit of every reply."""
    held = payload.__dict__
    values = {name: value for name in _SCALARS if (value := held[name]) is not None}
    for name in _COLLECTIONS:
        if value := held[name]:
            values[name] = value
    for name in _STAMPS:
        if (when := held[name]) is not None:
            values[name] = timestamp_fields(when)
    for name in _SEXES:
        values[name] = SEX_TO_PROTO[held[name]]
    return values


def payload_to_proto(payload: EcgPayload) -> pb.Payload:
    """Every field of PAYLOAD_FIELDS by its proto type (``payload_fields``)."""
    return pb.Payload(**payload_fields(payload))


def payload_values(msg: pb.Payload) -> dict[str, Any]:
    """The fields of a Payload message as ``EcgPayload`` takes them. A value the wire cannot tell from
    unset (an unset optional field; '', 0 or false of a plain one that the payload need not have) is
    left to the payload's default: None, or 'local' for the site of a server older than that field.

    Each field is read by name (``HasField`` for those with presence): listing the set fields and
    looking each one's name up cost more, for every hit of every reply."""
    values: dict[str, Any] = {}
    for name, required in _PLAIN:
        value = getattr(msg, name)
        if value or required:
            values[name] = value
    for name in _OPTIONAL:
        if msg.HasField(name):
            values[name] = getattr(msg, name)
    for name in _REPEATED:
        values[name] = list(getattr(msg, name))
    for name in _MAPS:
        values[name] = dict(getattr(msg, name))
    for name in _STAMPS:
        if msg.HasField(name):
            values[name] = getattr(msg, name).ToDatetime()  # naive, as stored
    for name in _SEXES:
        values[name] = SEX_FROM_PROTO.get(getattr(msg, name))
    return values


def payload_from_proto(msg: pb.Payload) -> EcgPayload:
    """The payload of a Payload message (``payload_values``), validated."""
    return EcgPayload(**payload_values(msg))


def _hit_fields(hit: Hit) -> dict[str, Any]:
    return {"record_id": hit.record_id, "score": hit.score, "payload": payload_fields(hit.payload)}


def hit_to_proto(hit: Hit) -> pb.Hit:
    return pb.Hit(**_hit_fields(hit))


def summary_to_proto(summary: NeighbourhoodSummary) -> pb.NeighbourhoodSummary:
    return pb.NeighbourhoodSummary(
        n_neighbours=summary.n_neighbours,
        collection_count=summary.collection_count,
        diagnoses=[pb.DiagnosisConcentration(**row.model_dump()) for row in summary.diagnoses],
        exclusions=[EXCLUSION_TO_PROTO[e] for e in summary.exclusions],
    )


def summary_from_proto(msg: pb.NeighbourhoodSummary) -> NeighbourhoodSummary:
    rows = [
        DiagnosisConcentration(
            code=r.code,
            description=r.description,
            count=r.count,
            fraction=r.fraction,
            base_rate=r.base_rate,
            enrichment=r.enrichment,
            in_query=r.in_query,
            enrichment_low=r.enrichment_low if r.HasField("enrichment_low") else None,
            enrichment_high=r.enrichment_high if r.HasField("enrichment_high") else None,
            highlighted=r.highlighted,
        )
        for r in msg.diagnoses
    ]
    return NeighbourhoodSummary(
        n_neighbours=msg.n_neighbours,
        collection_count=msg.collection_count,
        diagnoses=rows,
        exclusions=[EXCLUSION_FROM_PROTO[e] for e in msg.exclusions if e in EXCLUSION_FROM_PROTO],
    )


ResultMessage = TypeVar(
    "ResultMessage",
    pb.SearchResult,
    pb.SearchByRecordResponse,
    pb.SearchByEcgResponse,
    pb.SearchByVectorResponse,
)


def result_to_proto(result: SearchResult, kind: type[ResultMessage]) -> ResultMessage:
    """Hits and summary into ``kind``: each search RPC has its own response message of the same shape."""
    msg = kind(hits=[_hit_fields(h) for h in result.hits])  # one constructor: no per-hit message copies
    if result.summary is not None:
        msg.summary.CopyFrom(summary_to_proto(result.summary))
    if result.query_record_id is not None:
        msg.query_record_id = result.query_record_id
    return msg


def result_from_proto(
    msg: pb.SearchResult | pb.SearchByRecordResponse | pb.SearchByEcgResponse | pb.SearchByVectorResponse,
) -> SearchResult:
    """Hits validated in one pass (pydantic's validator over the whole list, not one model per hit)."""
    hits = [
        {"record_id": h.record_id, "score": h.score, "payload": payload_values(h.payload)} for h in msg.hits
    ]
    return SearchResult.model_validate(
        {
            "hits": hits,
            "summary": summary_from_proto(msg.summary) if msg.HasField("summary") else None,
            "query_record_id": msg.query_record_id if msg.HasField("query_record_id") else None,
        }
    )


# --- collection and model ------------------------------------------------------------------------


def info_to_proto(
    info: CollectionInfo, card: ModelCard, updated_at: datetime | None = None
) -> pb.CollectionInfoResponse:
    msg = pb.CollectionInfoResponse(
        name=info.name,
        count=info.count,
        dim=info.dim,
        model_version=info.model_version,
        backend=info.backend,
        indexed=info.indexed,
        diagnosis_counts=info.diagnosis_counts,
        model=pb.ModelCard(
            name=card.name,
            version=card.version,
            sampling_rate_hz=card.sampling_rate_hz,
            input_samples=card.input_samples,
            lead_order=card.lead_order,
            embedding_dim=card.embedding_dim,
            normalisation=card.normalisation,
            initialisation=card.initialisation,
            json=card.model_dump_json(),
        ),
    )
    if updated_at is not None:
        timestamp_to_proto(updated_at, msg.statistics_updated_at)
    return msg


def info_from_proto(msg: pb.CollectionInfoResponse) -> tuple[CollectionInfo, ModelCard]:
    info = CollectionInfo(
        name=msg.name,
        count=msg.count,
        dim=msg.dim,
        model_version=msg.model_version,
        backend=msg.backend,
        indexed=msg.indexed,
        diagnosis_counts=dict(msg.diagnosis_counts),
    )
    return info, ModelCard.model_validate(json.loads(msg.model.json))


def ecg_response_to_proto(record_id: str, prepared: np.ndarray) -> pb.GetEcgResponse:
    """A prepared (12, MODEL_SAMPLES) signal in the model's lead order and rate."""
    from ecgsearch.ecg import signals  # the server's side only: a client never loads signal code

    return pb.GetEcgResponse(
        record_id=record_id,
        lead_names=list(signals.LEADS),
        sampling_rate_hz=signals.MODEL_FS,
        n_samples=prepared.shape[1],
        samples=np.asarray(prepared, dtype=np.float32).ravel().tolist(),  # a list: 6x faster than an array
    )


def ecg_response_from_proto(msg: pb.GetEcgResponse) -> np.ndarray:
    """The prepared (leads, samples) float32 array of a GetEcg reply."""
    samples = np.asarray(msg.samples, dtype=np.float32)
    return samples.reshape(len(msg.lead_names), int(msg.n_samples))


def recorded_response_to_proto(record_id: str, ecg: RecordedEcg) -> pb.GetEcgResponse:
    """A recording (12, n) in the model's lead order at its own rate (GetEcg with as_recorded)."""
    from ecgsearch.ecg import signals  # the server's side only

    return pb.GetEcgResponse(
        record_id=record_id,
        lead_names=list(signals.LEADS),
        sampling_rate_hz=round(ecg.fs),
        n_samples=ecg.signal.shape[1],
        samples=np.asarray(ecg.signal, dtype=np.float32).ravel().tolist(),
        as_recorded=True,
        recorded_rate_hz=ecg.fs,
    )


def recorded_response_from_proto(msg: pb.GetEcgResponse) -> RecordedEcg:
    """The recording of a GetEcg reply asked ``as_recorded``; ValueError when the server sent the prepared
    signal instead (a server older than the field)."""
    if not msg.as_recorded:
        raise ValueError(
            f"GetEcg of {msg.record_id!r}: the server returned the prepared signal, not the recording"
        )
    return RecordedEcg(ecg_response_from_proto(msg), float(msg.recorded_rate_hz))


def snapshot_to_proto(info: SnapshotInfo) -> pb.Snapshot:
    msg = pb.Snapshot(
        name=info.name,
        location=info.location,
        collection=info.collection,
        backend=info.backend,
        model_version=info.model_version or "",
    )
    if info.created is not None:
        msg.created.FromDatetime(info.created)
    if info.size_bytes is not None:
        msg.size_bytes = info.size_bytes
    if info.count is not None:
        msg.count = info.count
    return msg


def snapshot_from_proto(msg: pb.Snapshot) -> SnapshotInfo:
    return SnapshotInfo(
        name=msg.name,
        location=msg.location,
        collection=msg.collection,
        backend=msg.backend,
        created=msg.created.ToDatetime(tzinfo=UTC) if msg.HasField("created") else None,
        size_bytes=msg.size_bytes if msg.HasField("size_bytes") else None,
        count=msg.count if msg.HasField("count") else None,
        model_version=msg.model_version or None,
    )


# --- pushes --------------------------------------------------------------------------------------


def upsert_response_to_proto(results: Sequence[Pushed]) -> pb.UpsertEcgsResponse:
    return pb.UpsertEcgsResponse(
        results=[
            pb.UpsertResult(record_id=r.record_id, status=STATUS_TO_PROTO[r.status], reason=r.reason)
            for r in results
        ]
    )


def upsert_response_from_proto(msg: pb.UpsertEcgsResponse) -> list[Pushed]:
    return [Pushed(r.record_id, STATUS_FROM_PROTO.get(r.status, "rejected"), r.reason) for r in msg.results]
