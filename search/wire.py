"""pydantic/numpy <-> protobuf: every conversion between the domain models and the wire, one function each.

The servicer and the client both convert here, so a field added to the payload or the filter is added
in one place for both ends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import numpy as np

from ecgsearch.export.card import ModelCard
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search.schema import CollectionInfo, EcgPayload, Hit, InvalidQuery, SearchFilter
from ecgsearch.search.service import (
    DEFAULT_K,
    DiagnosisConcentration,
    EcgQuery,
    NeighbourhoodSummary,
    Query,
    SearchOptions,
    SearchResult,
)

# --- filter and options --------------------------------------------------------------------------


def filter_to_proto(flt: SearchFilter) -> pb.Filter:
    msg = pb.Filter(
        diagnoses_any=flt.diagnoses_any,
        diagnoses_all=flt.diagnoses_all,
        diagnoses_none=flt.diagnoses_none,
        sex=flt.sex or "",
        datasets=flt.datasets,
        exclude_record_ids=flt.exclude_record_ids,
        exclude_patient_ids=flt.exclude_patient_ids,
    )
    if flt.age_min is not None:
        msg.age_min = flt.age_min
    if flt.age_max is not None:
        msg.age_max = flt.age_max
    return msg


def filter_from_proto(msg: pb.Filter) -> SearchFilter:
    """Raises pydantic's ValidationError on a contradictory or malformed filter."""
    return SearchFilter(
        diagnoses_any=list(msg.diagnoses_any),
        diagnoses_all=list(msg.diagnoses_all),
        diagnoses_none=list(msg.diagnoses_none),
        age_min=msg.age_min if msg.HasField("age_min") else None,
        age_max=msg.age_max if msg.HasField("age_max") else None,
        sex=msg.sex or None,
        datasets=list(msg.datasets),
        exclude_record_ids=list(msg.exclude_record_ids),
        exclude_patient_ids=list(msg.exclude_patient_ids),
    )


def options_to_proto(options: SearchOptions) -> pb.SearchOptions:
    msg = pb.SearchOptions(
        filter=filter_to_proto(options.filter),
        k=options.k,
        exact=options.exact,
        with_summary=options.with_summary,
    )
    if options.score_threshold is not None:
        msg.score_threshold = options.score_threshold
    return msg


def options_from_proto(msg: pb.SearchOptions) -> SearchOptions:
    return SearchOptions(
        filter=filter_from_proto(msg.filter),
        k=msg.k if msg.HasField("k") else DEFAULT_K,
        score_threshold=msg.score_threshold if msg.HasField("score_threshold") else None,
        exact=msg.exact,
        with_summary=msg.with_summary,
    )


# --- ECGs and vectors ----------------------------------------------------------------------------


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
        units=[units] if isinstance(units, str) else list(units),
        flat_samples=x.ravel(),
        n_leads=x.shape[0],
    )


def ecg_from_proto(msg: pb.Ecg) -> EcgQuery:
    """Either form of samples -> (n_leads, n_samples); shape problems are InvalidQuery."""
    if msg.leads and msg.flat_samples:
        raise InvalidQuery("give the samples either per lead or as flat_samples, not both")
    if msg.leads:
        lengths = {len(lead.values) for lead in msg.leads}
        if len(lengths) != 1:
            raise InvalidQuery(f"leads have different lengths: {sorted(lengths)}")
        signal = np.array([np.asarray(lead.values, dtype=np.float32) for lead in msg.leads])
    elif msg.flat_samples:
        n = msg.n_leads or len(msg.lead_names)
        if n == 0 or len(msg.flat_samples) % n:
            raise InvalidQuery(f"{len(msg.flat_samples)} flat samples do not split into {n} leads")
        signal = np.asarray(msg.flat_samples, dtype=np.float32).reshape(n, -1)
    else:
        raise InvalidQuery("the ECG holds no samples")
    if len(msg.lead_names) != signal.shape[0]:
        raise InvalidQuery(f"{len(msg.lead_names)} lead names for {signal.shape[0]} leads")
    units: tuple[str, ...] | str = (
        tuple(msg.units) if len(msg.units) > 1 else (msg.units[0] if msg.units else "mV")
    )
    return EcgQuery(signal=signal, fs=msg.sampling_rate_hz, leads=tuple(msg.lead_names), units=units)


def vector_from_proto(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def query_to_proto(query: Query) -> pb.Query:
    msg = pb.Query(options=options_to_proto(query.options))
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
    if kind == "record_id":
        return Query(options=options, record_id=msg.record_id)
    if kind == "ecg":
        return Query(options=options, ecg=ecg_from_proto(msg.ecg))
    if kind == "vector":
        return Query(options=options, vector=vector_from_proto(msg.vector.values))
    raise InvalidQuery("query has none of record_id, ecg, vector")


# --- payloads, hits, summaries -------------------------------------------------------------------


def payload_to_proto(payload: EcgPayload) -> pb.Payload:
    msg = pb.Payload(
        record_id=payload.record_id,
        dataset=payload.dataset,
        diagnoses=payload.diagnoses,
        source_codes=payload.source_codes,
        scp_likelihoods=payload.scp_likelihoods,
        superclasses=payload.superclasses,
        age_over_89=payload.age_over_89,
        sex=payload.sex or "",
        sampling_rate_hz=payload.sampling_rate_hz,
        source_path=payload.source_path or "",
    )
    if payload.content_hash is not None:
        msg.content_hash = payload.content_hash
    if payload.duplicate_of is not None:
        msg.duplicate_of = payload.duplicate_of
    if payload.patient_id is not None:
        msg.patient_id = payload.patient_id
    if payload.age is not None:
        msg.age = payload.age
    if payload.duration_s is not None:
        msg.duration_s = payload.duration_s
    if payload.recorded_at is not None:
        msg.recorded_at = payload.recorded_at.isoformat()
    return msg


def payload_from_proto(msg: pb.Payload) -> EcgPayload:
    return EcgPayload(
        record_id=msg.record_id,
        dataset=msg.dataset,
        patient_id=msg.patient_id if msg.HasField("patient_id") else None,
        diagnoses=list(msg.diagnoses),
        source_codes=list(msg.source_codes),
        scp_likelihoods=dict(msg.scp_likelihoods),
        superclasses=list(msg.superclasses),
        age=msg.age if msg.HasField("age") else None,
        age_over_89=msg.age_over_89,
        sex=msg.sex or None,
        sampling_rate_hz=msg.sampling_rate_hz,
        duration_s=msg.duration_s if msg.HasField("duration_s") else None,
        recorded_at=datetime.fromisoformat(msg.recorded_at) if msg.HasField("recorded_at") else None,
        source_path=msg.source_path or None,
        content_hash=msg.content_hash if msg.HasField("content_hash") else None,
        duplicate_of=msg.duplicate_of if msg.HasField("duplicate_of") else None,
    )


def hit_to_proto(hit: Hit) -> pb.Hit:
    return pb.Hit(record_id=hit.record_id, score=hit.score, payload=payload_to_proto(hit.payload))


def hit_from_proto(msg: pb.Hit) -> Hit:
    return Hit(record_id=msg.record_id, score=msg.score, payload=payload_from_proto(msg.payload))


def summary_to_proto(summary: NeighbourhoodSummary) -> pb.NeighbourhoodSummary:
    return pb.NeighbourhoodSummary(
        n_neighbours=summary.n_neighbours,
        collection_count=summary.collection_count,
        diagnoses=[pb.DiagnosisConcentration(**row.model_dump()) for row in summary.diagnoses],
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
        )
        for r in msg.diagnoses
    ]
    return NeighbourhoodSummary(
        n_neighbours=msg.n_neighbours, collection_count=msg.collection_count, diagnoses=rows
    )


def result_to_proto(result: SearchResult) -> pb.SearchResponse:
    msg = pb.SearchResponse(hits=[hit_to_proto(h) for h in result.hits])
    if result.summary is not None:
        msg.summary.CopyFrom(summary_to_proto(result.summary))
    return msg


def result_from_proto(msg: pb.SearchResponse) -> SearchResult:
    summary = summary_from_proto(msg.summary) if msg.HasField("summary") else None
    return SearchResult(hits=[hit_from_proto(h) for h in msg.hits], summary=summary)


# --- collection and model ------------------------------------------------------------------------


def info_to_proto(info: CollectionInfo, card: ModelCard) -> pb.CollectionInfoResponse:
    return pb.CollectionInfoResponse(
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
