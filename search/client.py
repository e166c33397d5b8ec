"""A small Python client for the ecgsearch gRPC service; integrators can copy it as a starting point.

Every method returns the same pydantic models the server uses (``Hit``, ``CollectionInfo``, ...). ECGs
are sent raw, in their own rate, units and lead order: the server prepares them exactly like stored ECGs.

    with EcgSearchClient("localhost:50051", token="...") as client:
        result = client.search_by_record("ptbxl:17", k=10, diagnoses_any=["AF"], with_summary=True)
        for hit in result.hits:
            print(hit.record_id, hit.score, hit.payload.diagnoses)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ecgsearch.ecg.schema import (
    CollectionInfo,
    EcgPayload,
    SearchFilter,
    check_blend_alone,
    check_view_or_blend,
    parse_similar_by,
)
from ecgsearch.export.card import ModelCard
from ecgsearch.search import wire
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.api import (
    DEFAULT_K,
    EcgFile,
    EcgQuery,
    Pushed,
    Query,
    RecordedEcg,
    SearchOptions,
    SearchResult,
    SnapshotInfo,
    UpsertItem,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class EcgSearchClient:
    """One channel to one server. ``token`` is sent as ``authorization: Bearer <token>`` on every call.

    ``tls=True`` uses the system roots (or ``root_cert``, a PEM path); ``client_cert``/``client_key`` add
    a client certificate for mutual TLS (both or neither). ``timeout`` (seconds) is every call's deadline.
    Errors are ``grpc.RpcError``; ``bad_request(error)`` lists the fields an INVALID_ARGUMENT names.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool = False,
        root_cert: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if bool(client_cert) != bool(client_key):
            raise ValueError("client_cert and client_key go together (mutual TLS)")
        if tls or root_cert or client_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(root_cert),
                private_key=_read(client_key),
                certificate_chain=_read(client_cert),
            )
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.EcgSearchServiceStub(self.channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.last_request_id: str | None = None

    # --- searches --------------------------------------------------------------------------------

    def search_by_record(
        self, record_id: str, *, include_same_patient: bool = False, **options: Any
    ) -> SearchResult:
        """Neighbours of a stored record: never itself, nor (unless asked) its patient's other ECGs.

        Options: see ``options``.
        """
        request = pb.SearchByRecordRequest(
            record_id=record_id, options=_options(**options), include_same_patient=include_same_patient
        )
        return wire.result_from_proto(self._call(self.stub.SearchByRecord, request))

    def search_by_ecg(
        self,
        signal: np.ndarray,
        fs: float,
        leads: Sequence[str],
        *,
        units: Sequence[str] | str = "mV",
        **options: Any,
    ) -> SearchResult:
        """Neighbours of a raw (n_leads, n_samples) ECG at ``fs`` Hz with named leads."""
        request = pb.SearchByEcgRequest(
            ecg=wire.ecg_to_proto(signal, fs, leads, units), options=_options(**options)
        )
        return wire.result_from_proto(self._call(self.stub.SearchByEcg, request))

    def search_by_wfdb(self, path: str | Path, **options: Any) -> SearchResult:
        """Read a WFDB record here and send its raw samples (the server prepares them)."""
        from ecgsearch.ecg import signals  # here only: the client imports no signal code otherwise

        raw = signals.read_wfdb(path)
        return self.search_by_ecg(raw.signal, raw.fs, raw.leads, units=raw.units, **options)

    def search_by_file(
        self, file: str | Path | bytes, *, format_hint: str | None = None, **options: Any
    ) -> SearchResult:
        """Neighbours of an ECG file of any format the server reads (``ecgsearch.ecg.formats``): its
        bytes are sent as they are and read by the server, so nothing needs decoding here."""
        content = file if isinstance(file, bytes) else Path(file).read_bytes()
        request = pb.SearchByFileRequest(
            file=wire.file_to_proto(EcgFile(content, format_hint)), options=_options(**options)
        )
        return wire.result_from_proto(self._call(self.stub.SearchByFile, request))

    def upsert(self, items: Sequence[UpsertItem], *, dataset: str = "") -> list[Pushed]:
        """Add ECGs (files or raw ECGs) to the served collection; needs a token with the write scope.

        One result per item: stored, skipped (already stored) or rejected with its reason."""
        request = pb.UpsertEcgsRequest(items=[wire.upsert_item_to_proto(i) for i in items], dataset=dataset)
        return wire.upsert_response_from_proto(self._call(self.stub.UpsertEcgs, request))

    def upsert_files(self, paths: Sequence[str | Path], *, dataset: str = "") -> list[Pushed]:
        """``upsert`` for files on disk, sent as their bytes (their names are never sent)."""
        return self.upsert([UpsertItem(file=EcgFile(Path(p).read_bytes())) for p in paths], dataset=dataset)

    def search_by_vector(self, vector: np.ndarray | Sequence[float], **options: Any) -> SearchResult:
        """Neighbours of an embedding made by the collection's model."""
        values = np.asarray(vector, dtype=np.float32).ravel().tolist()  # a list: 6x faster than an array
        request = pb.SearchByVectorRequest(vector=values, options=_options(**options))
        return wire.result_from_proto(self._call(self.stub.SearchByVector, request))

    def batch(self, queries: Sequence[Query]) -> list[SearchResult]:
        """Several queries (``service.Query``: record_id, ecg or vector, with options) in one call."""
        request = pb.BatchSearchRequest(queries=[wire.query_to_proto(q) for q in queries])
        reply = self._call(self.stub.BatchSearch, request)
        return [wire.result_from_proto(r) for r in reply.results]

    # --- records and collection ------------------------------------------------------------------

    def get_record(
        self, record_id: str, *, with_vector: bool = False
    ) -> tuple[EcgPayload, np.ndarray | None]:
        reply = self._call(
            self.stub.GetRecord, pb.GetRecordRequest(record_id=record_id, with_vector=with_vector)
        )
        vector = np.asarray(reply.vector, dtype=np.float32) if with_vector else None
        return wire.payload_from_proto(reply.payload), vector

    def get_ecg(self, record_id: str) -> np.ndarray:
        """The prepared signal of a stored record: (12, 1000) float32, 100 Hz, the model's lead order."""
        return wire.ecg_response_from_proto(
            self._call(self.stub.GetEcg, pb.GetEcgRequest(record_id=record_id))
        )

    def recorded_ecg(self, record_id: str) -> RecordedEcg:
        """A stored record's whole recording at its file's own rate: (12, n) float32 mV, the model's lead
        order, unfiltered (PTB-XL: the 500 Hz file where the server holds one)."""
        request = pb.GetEcgRequest(record_id=record_id, as_recorded=True)
        return wire.recorded_response_from_proto(self._call(self.stub.GetEcg, request))

    def info(self) -> CollectionInfo:
        return wire.info_from_proto(self._call(self.stub.CollectionInfo, pb.CollectionInfoRequest()))[0]

    def serving(self, timeout: float = 2.0) -> bool:
        """Whether the service's gRPC health check (no token needed) reports SERVING; False when it
        reports anything else or cannot be reached within ``timeout`` seconds."""
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def model_card(self) -> ModelCard:
        """The card of the model the server encodes ECG queries with."""
        return wire.info_from_proto(self._call(self.stub.CollectionInfo, pb.CollectionInfoRequest()))[1]

    def stats(self) -> dict[str, dict[str, float]]:
        """Per-RPC count, errors and latency percentiles (ms) since the server started."""
        reply = self._call(self.stub.ServerStats, pb.ServerStatsRequest())
        return {
            r.method: {
                "count": r.count,
                "errors": r.errors,
                "p50_ms": r.p50_ms,
                "p95_ms": r.p95_ms,
                "p99_ms": r.p99_ms,
            }
            for r in reply.rpcs
        }

    def search_plans(self) -> dict[str, dict[str, int | None]]:
        """Per plan of the embedded store (search/engine/plan.py): the searches that took it, how many of
        them were filtered, and the engine's estimate (matching points of ``total``) for the latest
        filtered one (None: none was)."""
        reply = self._call(self.stub.ServerStats, pb.ServerStatsRequest())
        return {
            p.plan: {
                "count": p.count,
                "filtered": p.filtered,
                "estimate": p.estimate if p.HasField("estimate") else None,
                "total": p.total if p.HasField("total") else None,
            }
            for p in reply.search_plans
        }

    def create_snapshot(self) -> SnapshotInfo:
        """Snapshot the served collection (needs a caller with scope admin)."""
        reply = self._call(self.stub.CreateSnapshot, pb.CreateSnapshotRequest())
        return wire.snapshot_from_proto(reply.snapshot)

    def list_snapshots(self) -> list[SnapshotInfo]:
        """The served collection's snapshots, oldest first (scope admin)."""
        reply = self._call(self.stub.ListSnapshots, pb.ListSnapshotsRequest())
        return [wire.snapshot_from_proto(s) for s in reply.snapshots]

    # --- plumbing --------------------------------------------------------------------------------

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: Any) -> Any:
        try:
            reply, call = method.with_call(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            self.last_request_id = _request_id(error.trailing_metadata())
            raise
        self.last_request_id = _request_id(call.trailing_metadata())
        return reply

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EcgSearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def options(
    *,
    k: int = DEFAULT_K,
    score_threshold: float | None = None,
    exact: bool = False,
    with_summary: bool = False,
    include_duplicates: bool = False,
    include_query_record: bool = False,
    similar_by: str | dict[str, float] | Sequence[tuple[str, float]] | None = None,
    filter: SearchFilter | None = None,
    **filter_fields: Any,
) -> SearchOptions:
    """Search options from keywords: filter fields (``diagnoses_any=["AF"]``, ``age_min=60``) or a filter.

    ``similar_by``: a view (``"rhythm"``), a blend (``"waveform=1,rhythm=0.5"`` or a dict of view ->
    weight), or ``"blend"``, the default blend (the waveform's candidates reranked by rhythm when it is
    irregular, and by voltage); None searches the served vector, as before views."""
    flt = filter if filter is not None else SearchFilter(**filter_fields)
    return SearchOptions(
        filter=flt,
        k=k,
        score_threshold=score_threshold,
        exact=exact,
        with_summary=with_summary,
        include_duplicates=include_duplicates,
        include_query_record=include_query_record,
        similar_by=_similar_by(similar_by),
    )


def _similar_by(
    value: str | dict[str, float] | Sequence[tuple[str, float]] | None,
) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return parse_similar_by(value)
    pairs = tuple(
        (check_view_or_blend(v), float(w)) for v, w in (value.items() if isinstance(value, dict) else value)
    )
    check_blend_alone([v for v, _ in pairs])
    return pairs


def ecg_query(
    signal: np.ndarray, fs: float, leads: Sequence[str], units: Sequence[str] | str = "mV"
) -> EcgQuery:
    """A raw ECG for ``batch``."""
    per_lead = units if isinstance(units, str) else tuple(units)
    return EcgQuery(signal=np.asarray(signal), fs=fs, leads=tuple(leads), units=per_lead)


def bad_request(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) of each google.rpc.BadRequest violation an error carries (none: [])."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    found = []
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found += [(v.field, v.description) for v in bad.field_violations]
    return found


def _options(**kwargs: Any) -> pb.SearchOptions:
    return wire.options_to_proto(options(**kwargs))


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _request_id(metadata: Sequence[tuple[str, str]] | None) -> str | None:
    return next((v for k, v in metadata or () if k == "x-request-id"), None)
