"""The gRPC front of the service: one handler table, the call pipeline, health, reflection, metrics.

Every call of ``ecgsearch.v1.EcgSearchService`` takes one path:

1. ``CallInterceptor`` (outermost, a gRPC interceptor): admits the call or refuses it (the server at
   its limit of concurrent calls: RESOURCE_EXHAUSTED; an unknown method: UNIMPLEMENTED); a refusal
   passes only the Metrics and Audit stages, so it is logged, counted and audited like any call;
2. ``Calls.serve``, the handler of every method (registered as client-streaming so that a request
   gRPC refuses while receiving it, such as one over the message limit, still reaches it), gives the
   call a request id and runs it through one chain of stages, each with one job (see "the call
   pipeline" below): ``Metrics`` (in-flight gauge, per-method counts and latency, the log line),
   ``Audit`` (exactly one audit line per call; with a fail-closed trail, the default, no work while
   it cannot be written and UNAVAILABLE instead of a reply whose line was lost), ``errors`` (every
   exception becomes a status through one table, ``ERROR_TABLE``, with google.rpc.BadRequest
   details), ``Receive`` (the one request message), ``Identity`` (the caller, from its bearer token
   or client certificate);
3. last, ``Calls.enter``: the caller's scope, undecodable bytes -> INVALID_ARGUMENT, the deadline, then
   ``Door.enter`` (``door.py``: scope, cost, heavy budget, the caller's sites on every read and its
   site on every write) and the RPC's thin handler in ``RPCS``; the reply is serialized and its size
   checked.

What gRPC-Python answers before any of this runs, and so is neither audited nor counted here:
request metadata over gRPC's header limit (16 KiB by default), calls beyond gRPC's own backstop of
twice ``max_concurrent_rpcs``, and calls to the health and reflection services (probes, not reads).
A request over the message limit reaches ``Calls.serve`` only as a failed receive: its line says
RESOURCE_EXHAUSTED, which is what gRPC answered, though a client that cancels before its message
arrives looks the same. Handlers never see tokens or exceptions; messages and log fields are cut to
MAX_MESSAGE_CHARS.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from ecgsearch.ecg.schema import MAX_K, InvalidQuery, StoreUnavailable, UnknownRecord
from ecgsearch.ecg.signals import SignalError
from ecgsearch.export.runtime import Embedder
from ecgsearch.search import wire
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search.api import (
    DEFAULT_K,
    Budget,
    Cancelled,
    DeadlineExceeded,
    EcgUnavailable,
    FieldViolation,
    SnapshotError,
    describe_validation,
)
from ecgsearch.search.engine.store import Store, StoreError, open_store
from ecgsearch.search.serving import audit
from ecgsearch.search.serving.auth import ANONYMOUS, Caller, CallerRegistry, Callers, plain_tokens
from ecgsearch.search.serving.cost import (
    PREPARED_BYTES,
    RECORDED_BYTES,
    Cost,
    HeavyBudget,
    Overloaded,
    ReplyTooLarge,
    search_cost,
)
from ecgsearch.search.serving.cpus import pin_process
from ecgsearch.search.serving.door import Door, PermissionDenied, Pricing, Rpc, Unauthenticated, Walled
from ecgsearch.search.serving.loopback import is_loopback
from ecgsearch.search.serving.service import SearchService
from ecgsearch.search.serving.settings import ServiceSettings
from ecgsearch.search.serving.telemetry import Telemetry

SERVICE = pb.DESCRIPTOR.services_by_name["EcgSearchService"]
SERVICE_NAME = SERVICE.full_name
WRITE_METHODS: set[str] = {"UpsertEcgs"}  # RPCs that add or change stored ECGs: scope 'write'
REQUEST_ID = "x-request-id"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
AUDIT_REFUSAL = "the audit trail cannot be written: the server answers no call until it can"
MAX_MESSAGE_CHARS = 300  # caller-facing error messages and logged errors are cut here
CANCEL_WAIT_S = 0.25  # how long a request stream that ended empty may take to show it was cancelled
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a caller's x-request-id is kept only in this form

log = logging.getLogger("ecgsearch.server")

# Scopes: every RPC of the service needs 'search' unless listed here (by method name, e.g. "PushEcgs").
ADMIN_METHODS: set[str] = {"CreateSnapshot", "ListSnapshots"}  # operator RPCs: scope 'admin'


def scope_of(method: str) -> str:
    """The scope a caller needs for ``method`` (the RPC's name, without the service)."""
    if method in ADMIN_METHODS:
        return "admin"
    if method in WRITE_METHODS:
        return "write"
    return "search"


class NotReceived(RuntimeError):
    """gRPC refused the request message while receiving it: over the message limit (RESOURCE_EXHAUSTED)."""


# The one place exceptions become status codes; anything not listed is INTERNAL without details.
ERROR_TABLE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    ((InvalidQuery, ValidationError, SignalError), grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownRecord, grpc.StatusCode.NOT_FOUND),
    ((EcgUnavailable, StoreError, SnapshotError), grpc.StatusCode.FAILED_PRECONDITION),
    ((ReplyTooLarge, Overloaded, NotReceived), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
)


def status_of(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """Status code, caller-facing message and BadRequest field violations of a serving exception."""
    for types, code in ERROR_TABLE:
        if isinstance(exc, types):
            violations: list[tuple[str, str]] = []
            message = describe_validation(exc) if isinstance(exc, ValidationError) else str(exc)
            if isinstance(exc, FieldViolation):
                violations = [(exc.field, exc.description)]
            elif isinstance(exc, SignalError):
                violations = [(exc.record, exc.reason)]
            elif code is grpc.StatusCode.INVALID_ARGUMENT:
                violations = [("", message)]
            return code, bounded(message), [(bounded(f, 80), bounded(d)) for f, d in violations]
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})", []


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Cut a message or log field to ``limit`` characters: no client input may grow a line unbounded."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    """A status with trailing metadata, for ``context.abort_with_status``."""


def rich_status(
    code: grpc.StatusCode, message: str, violations: list[tuple[str, str]], request_id: str
) -> grpc.Status:
    """The status with ``google.rpc.BadRequest`` details (when there are violations) and the request id."""
    metadata: list[tuple[str, str | bytes]] = [(REQUEST_ID, request_id)]
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        status = status_pb2.Status(code=code.value[0], message=message)
        status.details.add().Pack(bad)
        metadata.append(("grpc-status-details-bin", status.SerializeToString()))
    return _Status(code, message, tuple(metadata))


class _Undecodable:
    """What the request deserializer returns for bytes that are no valid message (INVALID_ARGUMENT)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(deserialize: Callable[[bytes], Any], name: str) -> Callable[[bytes], Any]:
    """Wrap a request deserializer so garbage bytes become a client error instead of INTERNAL."""

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return _Undecodable(f"{len(data):,} bytes that do not decode as {name}")

    return decode


# --- the thin servicer: one entry per RPC of the service -----------------------------------------
# Each handler unpacks its request (``wire``), calls the caller's view of the service (``Walled``)
# and packs the reply; each cost function prices the request from its fields alone (``cost.py``).


def _k(options: pb.SearchOptions) -> int:
    k = options.k if options.HasField("k") else DEFAULT_K
    return min(max(k, 1), MAX_K)  # an invalid k is the service's INVALID_ARGUMENT, not a cost


def _samples(ecg: pb.Ecg) -> int:
    return len(ecg.flat_samples) + sum(len(lead.values) for lead in ecg.leads)


def _searches(options: list[pb.SearchOptions], p: Pricing, **work: int) -> Cost:
    summaries = sum(o.with_summary for o in options)
    return search_cost(
        [_k(o) for o in options], p.hit, summaries=summaries, summary_rows=p.summary_rows, **work
    )


def _fixed(reply_bytes: int, **work: int) -> Callable[[Any, Pricing], Cost]:
    return lambda request, p: Cost(reply_bytes=reply_bytes, **work)


def _search_by_record(view: Walled, request: pb.SearchByRecordRequest) -> pb.SearchByRecordResponse:
    options = wire.options_from_proto(request.options)
    result = view.search_by_record(request.record_id, options, request.include_same_patient)
    return wire.result_to_proto(result, pb.SearchByRecordResponse)


def _search_by_ecg(view: Walled, request: pb.SearchByEcgRequest) -> pb.SearchByEcgResponse:
    result = view.search_by_ecg(wire.ecg_from_proto(request.ecg), wire.options_from_proto(request.options))
    return wire.result_to_proto(result, pb.SearchByEcgResponse)


def _search_by_file(view: Walled, request: pb.SearchByFileRequest) -> pb.SearchByFileResponse:
    result = view.search_by_file(wire.file_from_proto(request.file), wire.options_from_proto(request.options))
    return wire.result_to_proto(result, pb.SearchByFileResponse)


def _search_by_vector(view: Walled, request: pb.SearchByVectorRequest) -> pb.SearchByVectorResponse:
    vector = wire.vector_from_proto(request.vector)
    result = view.search_by_vector(vector, wire.options_from_proto(request.options))
    return wire.result_to_proto(result, pb.SearchByVectorResponse)


def _batch_search(view: Walled, request: pb.BatchSearchRequest) -> pb.BatchSearchResponse:
    reply = pb.BatchSearchResponse()
    for result in view.batch([wire.query_from_proto(q) for q in request.queries]):
        packed = wire.result_to_proto(result, pb.SearchResult)
        view.reply.add(packed.ByteSize() + 4)  # stops the batch once it passes the message limit
        reply.results.append(packed)
    return reply


def _upsert_ecgs(view: Walled, request: pb.UpsertEcgsRequest) -> pb.UpsertEcgsResponse:
    items = [wire.upsert_item_from_proto(i) for i in request.items]
    return wire.upsert_response_to_proto(view.upsert(items, request.dataset))


def _get_record(view: Walled, request: pb.GetRecordRequest) -> pb.GetRecordResponse:
    payload, vector = view.get_record(request.record_id, request.with_vector)
    reply = pb.GetRecordResponse(payload=wire.payload_to_proto(payload))
    if vector is not None:
        reply.vector[:] = vector.tolist()
    return reply


def _get_ecg(view: Walled, request: pb.GetEcgRequest) -> pb.GetEcgResponse:
    if request.as_recorded:
        return wire.recorded_response_to_proto(
            request.record_id.strip(), view.recorded_ecg(request.record_id)
        )
    return wire.ecg_response_to_proto(request.record_id.strip(), view.get_ecg(request.record_id))


def _get_ecg_cost(request: pb.GetEcgRequest, p: Pricing) -> Cost:
    """The prepared signal's size; as recorded, a 10 s recording at 1 kHz (longer ones are bounded by the
    service's MAX_RECORDED_SAMPLES, and the message limit still holds)."""
    reply = RECORDED_BYTES if request.as_recorded else PREPARED_BYTES
    return Cost(reply_bytes=reply + 256, ecgs=1)


def _collection_info(view: Walled, request: pb.CollectionInfoRequest) -> pb.CollectionInfoResponse:
    return wire.info_to_proto(*view.info())


def _server_stats(view: Walled, request: pb.ServerStatsRequest) -> pb.ServerStatsResponse:
    figures = view.server_figures()
    reply = pb.ServerStatsResponse(
        uptime_s=figures.uptime_s,
        rpcs=[
            pb.RpcStats(
                method=method,
                count=int(row["count"]),
                errors=int(row["errors"]),
                p50_ms=row["p50_ms"],
                p95_ms=row["p95_ms"],
                p99_ms=row["p99_ms"],
            )
            for method, row in figures.rpcs.items()
        ],
        ecgs_prepared=figures.ecgs_prepared,
        search_plans=[
            pb.SearchPlanStats(
                plan=plan,
                count=row["count"] or 0,
                filtered=row["filtered"] or 0,
                estimate=row["estimate"],
                total=row["total"],
            )
            for plan, row in figures.search_plans.items()
        ],
    )
    reply.started_at.FromDatetime(figures.started_at)
    return reply


def _create_snapshot(view: Walled, request: pb.CreateSnapshotRequest) -> pb.CreateSnapshotResponse:
    return pb.CreateSnapshotResponse(snapshot=wire.snapshot_to_proto(view.create_snapshot()))


def _list_snapshots(view: Walled, request: pb.ListSnapshotsRequest) -> pb.ListSnapshotsResponse:
    return pb.ListSnapshotsResponse(snapshots=[wire.snapshot_to_proto(s) for s in view.list_snapshots()])


HIT_ROOM = 64  # a GetRecord reply beyond one hit's payload: its tags and lengths

RPCS: dict[str, Rpc] = {
    "SearchByRecord": Rpc(lambda r, p: _searches([r.options], p), _search_by_record),
    "SearchByEcg": Rpc(
        lambda r, p: _searches([r.options], p, ecgs=1, samples=_samples(r.ecg)), _search_by_ecg
    ),
    "SearchByFile": Rpc(
        lambda r, p: _searches([r.options], p, ecgs=1, file_bytes=len(r.file.content)), _search_by_file
    ),
    "UpsertEcgs": Rpc(
        lambda r, p: Cost(
            ecgs=len(r.items),
            samples=sum(_samples(i.ecg) for i in r.items if i.HasField("ecg")),
            file_bytes=sum(len(i.file.content) for i in r.items if i.HasField("file")),
            reply_bytes=len(r.items) * 512,
        ),
        _upsert_ecgs,
    ),
    "SearchByVector": Rpc(lambda r, p: _searches([r.options], p), _search_by_vector),
    "BatchSearch": Rpc(
        lambda r, p: _searches(
            [q.options for q in r.queries],
            p,
            ecgs=sum(q.HasField("ecg") for q in r.queries),
            samples=sum(_samples(q.ecg) for q in r.queries if q.HasField("ecg")),
        ),
        _batch_search,
    ),
    "GetRecord": Rpc(
        lambda r, p: Cost(reply_bytes=p.hit.estimate + HIT_ROOM + (5 * p.dim if r.with_vector else 0)),
        _get_record,
    ),
    "GetEcg": Rpc(_get_ecg_cost, _get_ecg),
    "CollectionInfo": Rpc(lambda r, p: Cost(reply_bytes=16_384 + 64 * p.summary_rows), _collection_info),
    "ServerStats": Rpc(_fixed(4096 + 128 * len(SERVICE.methods)), _server_stats),
    "CreateSnapshot": Rpc(_fixed(1024), _create_snapshot),
    "ListSnapshots": Rpc(_fixed(65_536), _list_snapshots),
}


def budget_of(context: grpc.ServicerContext) -> Budget:
    """The caller's deadline (as a time.monotonic() instant) and whether the call is still live."""
    remaining = context.time_remaining()
    deadline = None if remaining is None or remaining > 1e9 else time.monotonic() + remaining
    return Budget(deadline=deadline, cancelled=lambda: not context.is_active())


# --- identity ------------------------------------------------------------------------------------


def _bearer(header: str | None) -> str | None:
    if not header or not header.startswith("Bearer "):
        return None
    return header.removeprefix("Bearer ").strip()


def _certificate_name(context: grpc.ServicerContext) -> str | None:
    """The subject common name of the verified client certificate (mutual TLS), if any."""
    names = (context.auth_context() or {}).get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else None


class Identity:
    """Who is calling: a caller of the callers file by bearer token or (mutual TLS) certificate.

    ``registry`` None serves without authentication (every call is ``anonymous`` with every scope).
    With a registry, a call needs ``authorization: Bearer <token>`` naming a caller, or (mutual TLS) a
    client certificate whose common name the tokens file names; when no caller is configured at all
    but mutual TLS is on, a verified certificate is enough and its common name is the caller (scope
    search).
    """

    def __init__(self, registry: CallerRegistry | None, mutual_tls: bool = False) -> None:
        self.registry = registry
        self.mutual_tls = mutual_tls

    def resolve(self, metadata: dict[str, str], context: grpc.ServicerContext) -> Caller:
        if self.registry is None and not self.mutual_tls:
            return ANONYMOUS
        callers = self.registry.current() if self.registry is not None else Callers()
        token = _bearer(metadata.get("authorization"))
        found = callers.by_token(token) if token is not None else None
        if found is None and token is None and self.mutual_tls:
            name = _certificate_name(context)
            if name is not None:
                found = callers.by_certificate(name) if callers else Caller(name, frozenset({"search"}))
        if found is None:
            raise Unauthenticated("missing or invalid bearer token")
        return found

    def __call__(self, call: Call, inner: Next) -> None:
        """The pipeline's identity stage: the caller is known (or Unauthenticated) before the door."""
        call.principal = self.resolve(call.metadata, call.context)
        call.caller = call.principal.name
        inner(call)

    def name_of(self, metadata: dict[str, str], context: grpc.ServicerContext) -> str:
        """The caller's name for a refusal's audit line, or ``unauthenticated``."""
        try:
            return self.resolve(metadata, context).name
        except Unauthenticated:
            return audit.UNAUTHENTICATED


# --- the call pipeline ---------------------------------------------------------------------------
#
# Each call passes a chain of stages, outermost first, each with one job: Metrics (the in-flight gauge,
# per-method counts and latency, the log line), Audit (one audit line per call, failing closed),
# Errors (an exception -> its status, through ERROR_TABLE), Receive (the one request message),
# Identity (the caller, from its bearer token or certificate), and last the door's entry (scope, then
# Door.enter: cost, heavy budget, the wall; then the reply's size). A stage is ``stage(call, inner)``:
# it may act before and after ``inner(call)``; what it learns it writes on the call for the stages
# outside it. Plain functions rather than gRPC interceptors, because a gRPC interceptor wraps the
# handler and never sees the status a call ends with, which the log, the metrics and the audit need.


def _metadata(pairs: Any) -> dict[str, str]:
    return {k: v for k, v in (pairs or ()) if isinstance(v, str)}


def _request_id(metadata: dict[str, str]) -> str:
    offered = metadata.get(REQUEST_ID, "")
    return offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex


@dataclass
class Call:
    """One call as it passes the stages, and what became of it (the log, metrics and audit line)."""

    method: str
    context: grpc.ServicerContext
    requests: Iterator[Any] = field(default_factory=lambda: iter(()))
    metadata: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    received: Any = None  # the request message, or _Undecodable
    principal: Caller | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    violations: tuple[tuple[str, str], ...] = ()
    caller: str = audit.UNAUTHENTICATED
    reply: Message | None = None
    data: bytes | None = None

    @property
    def request(self) -> Message | None:
        return self.received if isinstance(self.received, Message) else None

    def fail(self, code: grpc.StatusCode, message: str, violations: Sequence[tuple[str, str]] = ()) -> None:
        """End the call with this status and no reply."""
        self.code, self.message, self.violations = code, message, tuple(violations)
        self.reply, self.data = None, None


Next = Callable[[Call], None]
Stage = Callable[[Call, Next], None]


def chain(stages: Sequence[Stage], last: Next) -> Next:
    """``stages[0]`` around ``stages[1]`` ... around ``last``."""
    handler = last
    for stage in reversed(stages):
        handler = functools.partial(lambda s, inner, call: s(call, inner), stage, handler)
    return handler


class Metrics:
    """The in-flight gauge, per-method counts and latency, and the call's JSON log line."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def __call__(self, call: Call, inner: Next) -> None:
        start = time.perf_counter()
        self.telemetry.in_flight.inc()
        try:
            inner(call)
        finally:
            self.telemetry.in_flight.dec()
        seconds = time.perf_counter() - start
        self.telemetry.record(call.method, call.code.name, seconds)
        if not log.isEnabledFor(logging.INFO):  # the line would be dropped: not worth its fields
            return
        fields = {
            "method": call.method,
            "request_id": call.request_id,
            "caller": call.caller,
            "code": call.code.name,
            "latency_ms": round(seconds * 1000, 3),
            "peer": bounded(call.context.peer(), 80),
        }
        if call.message:
            fields["error"] = call.message
        log.info("rpc", extra={"fields": fields})


class Audit:
    """Exactly one audit line per call. Failing closed: no work while the trail cannot be written, and
    a call whose line could not be written is answered UNAVAILABLE instead of its reply."""

    def __init__(self, trail: audit.AuditTrail) -> None:
        self.trail = trail

    def __call__(self, call: Call, inner: Next) -> None:
        start = time.perf_counter()
        refused = call.code is not grpc.StatusCode.OK  # refused before the service: nothing to withhold
        if refused or self.trail.ready():
            inner(call)
        else:
            call.fail(grpc.StatusCode.UNAVAILABLE, AUDIT_REFUSAL)
        line = audit.entry(
            request_id=call.request_id,
            caller=call.caller,
            method=call.method,
            status=call.code.name,
            request=call.request,
            reply=call.reply,
            latency_s=time.perf_counter() - start,
            error=call.message or None,
        )
        if not self.trail.record(line) and not refused:
            call.fail(grpc.StatusCode.UNAVAILABLE, AUDIT_REFUSAL)


def errors(call: Call, inner: Next) -> None:
    """Every exception of the stages inside becomes the call's status (ERROR_TABLE); INTERNAL is logged
    with its traceback and answered without one."""
    try:
        inner(call)
    except Exception as exc:
        code, message, violations = status_of(exc, call.request_id)
        if code is grpc.StatusCode.INTERNAL:
            log.exception(
                "internal error", extra={"fields": {"method": call.method, "request_id": call.request_id}}
            )
        call.fail(code, message, violations)


class Receive:
    """The call's one request message (a unary RPC: exactly one); a message gRPC refused while
    receiving it is NotReceived (RESOURCE_EXHAUSTED)."""

    def __init__(self, message_limit: int) -> None:
        self.message_limit = message_limit

    def __call__(self, call: Call, inner: Next) -> None:
        try:
            call.received = next(call.requests)
        except StopIteration:
            if not _cancelled_soon(call.context):  # the client closed its stream without a message
                raise FieldViolation("request", "no request message") from None
            self._not_received(call.context)
        except grpc.RpcError:
            self._not_received(call.context)
        inner(call)

    def _not_received(self, context: grpc.ServicerContext) -> NoReturn:
        """gRPC ended the call while receiving its message, and answered the client itself."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the request arrived")
        raise NotReceived(
            f"request not received: larger than the server's {self.message_limit:,}-byte message limit "
            "(or cancelled before it arrived)"
        )


def _cancelled_soon(context: grpc.ServicerContext, wait_s: float = CANCEL_WAIT_S) -> bool:
    """Whether gRPC ends the call within ``wait_s``. A message over the limit first reads as an empty
    stream and only a moment later as a cancelled call (gRPC-Python sees the two events apart), so a
    look at ``is_active`` right away would call an oversized request "no message"."""
    ended = threading.Event()
    if not context.add_callback(ended.set):
        return True  # already over
    return ended.wait(wait_s)


class Calls:
    """The handler of every method of the service: the stages above, then the door's entry."""

    def __init__(
        self,
        door: Door,
        identity: Identity,
        trail: audit.AuditTrail,
        telemetry: Telemetry,
        message_limit: int,
    ) -> None:
        self.door = door
        self.identity = identity
        self.message_limit = message_limit
        metrics, trail_stage = Metrics(telemetry), Audit(trail)
        self._call = chain([metrics, trail_stage, errors, Receive(message_limit), identity], self.enter)
        self._refusal = chain([metrics, trail_stage], self._refused)

    def handlers(self) -> grpc.GenericRpcHandler:
        """The service's methods, each a client-streaming handler of one request message."""
        table = {}
        for method in SERVICE.methods:
            request_type = getattr(pb, method.input_type.name)
            table[method.name] = grpc.stream_unary_rpc_method_handler(
                self._behavior(method.name),
                request_deserializer=_tolerant(request_type.FromString, method.input_type.name),
                response_serializer=None,  # the reply is serialized (and its size checked) in enter
            )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, table)

    def _behavior(self, method: str) -> Callable[[Iterator[Any], grpc.ServicerContext], bytes | None]:
        return lambda requests, context: self.serve(method, requests, context)

    def serve(self, method: str, requests: Iterator[Any], context: grpc.ServicerContext) -> bytes | None:
        call = self._start(Call(method, context, requests))
        self._call(call)
        return self._finish(call)

    def refuse(self, method: str, code: grpc.StatusCode, message: str, context: grpc.ServicerContext) -> None:
        """Answer a call refused before the service (no request read), with its log and audit line."""
        call = self._start(Call(method, context))
        call.fail(code, message)
        self._refusal(call)
        self._finish(call)

    def _start(self, call: Call) -> Call:
        call.metadata = _metadata(call.context.invocation_metadata())
        call.request_id = _request_id(call.metadata)
        call.context.set_trailing_metadata(((REQUEST_ID, call.request_id),))
        return call

    def _finish(self, call: Call) -> bytes | None:
        if call.code is not grpc.StatusCode.OK:
            call.context.abort_with_status(
                rich_status(call.code, call.message, list(call.violations), call.request_id)
            )
        return call.data

    def _refused(self, call: Call) -> None:
        call.caller = self.identity.name_of(call.metadata, call.context)

    def enter(self, call: Call) -> None:
        """The scope first (an unscoped caller learns nothing of its request), then the request's form
        and deadline, then ``Door.enter``; the reply serialized and held to the message limit."""
        assert call.principal is not None  # Identity ran
        scope = scope_of(call.method)
        self.door.admit(call.principal, scope, call.method)
        if isinstance(call.received, _Undecodable):
            raise FieldViolation("request", call.received.message)
        remaining = call.context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the request started")
        reply = self.door.enter(call.principal, call.method, scope, call.received, budget_of(call.context))
        data = reply.SerializeToString()
        if len(data) > self.message_limit:
            raise ReplyTooLarge(
                f"the reply is {len(data):,} bytes, over the server's {self.message_limit:,}-byte message "
                "limit: ask for fewer queries or a smaller k"
            )
        call.reply, call.data = reply, data


class CallInterceptor(grpc.ServerInterceptor):
    """Outermost, around every call: answers unknown methods UNIMPLEMENTED and, past ``limit`` calls
    of the service at once, new ones RESOURCE_EXHAUSTED; both refusals are logged and audited.

    The count is taken in the worker thread as the call starts (``admitted``), so a call gRPC itself
    drops before it starts is never counted.
    """

    def __init__(self, calls: Calls, limit: int) -> None:
        self.calls = calls
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def intercept_service(
        self, continuation: Callable, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if details.method.startswith(EXEMPT_PREFIXES):
            return continuation(details)
        handler = continuation(details)
        name = details.method.rsplit("/", 1)[-1] if details.method.startswith(f"/{SERVICE_NAME}/") else ""
        if handler is None or name not in RPCS:
            method = bounded(details.method or "?", 80)
            message = f"unknown method {method}"

            def unknown(requests: Iterator[Any], context: grpc.ServicerContext) -> None:
                self.calls.refuse(method, grpc.StatusCode.UNIMPLEMENTED, message, context)

            return grpc.stream_unary_rpc_method_handler(unknown)
        behavior = handler.stream_unary

        def admitted(requests: Iterator[Any], context: grpc.ServicerContext) -> bytes | None:
            with self._lock:
                full = self.active >= self.limit
                if not full:
                    self.active += 1
            if full:
                message = f"the server is at its limit of {self.limit} concurrent calls: retry later"
                self.calls.refuse(name, grpc.StatusCode.RESOURCE_EXHAUSTED, message, context)
                return None
            try:
                return behavior(requests, context)
            finally:
                with self._lock:
                    self.active -= 1

        return grpc.stream_unary_rpc_method_handler(
            admitted, request_deserializer=handler.request_deserializer, response_serializer=None
        )


# --- logging -------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers parse without configuration."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so a swapped-out stream is never written to."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the server's loggers (called by ``serve``, not on import)."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("ecgsearch")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# --- running -------------------------------------------------------------------------------------


@contextmanager
def run_server(
    settings: ServiceSettings | None = None,
    *,
    store: Store | None = None,
    embedder: Embedder | None = None,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    insecure: bool | None = None,
    max_message_mb: float | None = None,
    tokens_file: Path | None = None,
    audit_log: str | Path | None = None,
    audit_fail_open: bool | None = None,
    metrics_port: int | None = None,
    telemetry: Telemetry | None = None,
) -> Iterator[tuple[grpc.Server, int]]:
    """Start the server, yield ``(server, bound_port)``, stop it gracefully on exit.

    ``settings`` comes from the edge (``ServiceSettings()`` in ``serve``); keyword arguments override it,
    so tests pass ``port=0, token="t", store=..., embedder=...``. A store or embedder passed in stays
    open on exit; one opened here is closed here. Health reports SERVING only once both are open, and
    (an audit trail failing closed) while its lines can be written.
    ``telemetry`` (made here when not given) holds the metrics; with ``metrics_port`` it serves them
    at ``/metrics`` and records the bound port (``metrics_port=0``: any free one) in ``http_port``.
    """
    settings = (settings or ServiceSettings.model_construct()).model_copy(
        update={
            k: v
            for k, v in {
                "host": host,
                "port": port,
                "insecure": insecure,
                "max_message_mb": max_message_mb,
                "tokens_file": tokens_file,
                "audit_log": str(audit_log) if audit_log is not None else None,
                "audit_fail_open": audit_fail_open,
                "metrics_port": metrics_port,
            }.items()
            if v is not None
        }
    )
    registry = _registry(settings, token)
    if registry is None and not settings.insecure and not settings.tls_client_ca:
        raise ValueError(
            "no bearer tokens configured: set ECGSEARCH_TOKENS_FILE (or ECGSEARCH_TOKENS) "
            "(or ECGSEARCH_INSECURE=1 for local use only)"
        )
    if registry is None and not settings.tls_client_ca and not is_loopback(settings.host):
        if not settings.allow_insecure_remote:
            raise ValueError(
                f"refusing to serve without authentication on non-loopback host {settings.host}: "
                "configure tokens or mutual TLS, or pass --allow-insecure-remote "
                "(ECGSEARCH_ALLOW_INSECURE_REMOTE=1) if the network itself is trusted"
            )
        log.warning("serving without authentication", extra={"fields": {"host": settings.host}})
    credentials = _credentials(settings) if settings.tls_cert else None
    limit = int(settings.max_message_mb * 1024 * 1024)
    telemetry = telemetry or Telemetry()
    concurrent = settings.max_concurrent_rpcs
    heavy_mb = settings.heavy_budget_mb or 2 * settings.max_message_mb
    with ExitStack() as resources:
        health_servicer = health.HealthServicer()
        serving = _Health(health_servicer)
        sink = audit.AuditLog(settings.audit_log) if settings.audit_log else None
        trail = audit.AuditTrail(sink, fail_open=settings.audit_fail_open, on_change=serving.audit)
        resources.callback(trail.close)
        if settings.metrics_port is not None:
            telemetry.serve_http(settings.host, settings.metrics_port)
            resources.callback(telemetry.close)
        door = Door(
            RPCS,
            reply_limit=limit,
            heavy=HeavyBudget(int(heavy_mb * 1024 * 1024), max_waiting=max(1, concurrent // 2)),
            telemetry=telemetry,
        )
        identity = Identity(registry, mutual_tls=bool(settings.tls_client_ca))
        calls = Calls(door, identity, trail, telemetry, limit)
        server = grpc.server(
            # a thread for every admitted call, and a few to answer the calls refused past the limit
            futures.ThreadPoolExecutor(
                max_workers=settings.max_workers or concurrent + max(4, concurrent // 8)
            ),
            handlers=[calls.handlers()],
            interceptors=[CallInterceptor(calls, concurrent)],
            maximum_concurrent_rpcs=2 * concurrent,  # gRPC's own backstop, beyond the audited limit
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        telemetry.watch(lambda: door.service)
        telemetry.watch_heavy(door.heavy)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{settings.host}:{settings.port}"
        try:
            bound = (
                server.add_secure_port(address, credentials)
                if credentials is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(
                f"cannot listen on {address}: the port is in use or the address is not this machine's"
            )
        server.start()
        with ExitStack() as owned:
            try:
                if store is None:
                    store = open_store(
                        path=settings.store_path,
                        url=settings.qdrant_url,
                        api_key=(
                            settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
                        ),
                        collection=settings.collection,
                    )
                    owned.callback(store.close)
                service = SearchService(
                    store,
                    embedder or Embedder(settings.model),
                    stats_refresh_s=settings.stats_refresh_s,
                    ecg_roots=settings.ecg_root_list(),
                    site_secret_file=settings.site_secret_file,
                    archive_path=settings.archive_path,
                )
                owned.callback(service.close)
                door.open(service)
                serving.open()
                log.info(
                    "serving",
                    extra={
                        "fields": {
                            "address": f"{settings.host}:{bound}",
                            "tls": bool(settings.tls_cert),
                            "mutual_tls": bool(settings.tls_client_ca),
                            "auth": registry is not None,
                            "audit_log": settings.audit_log,
                            "audit_fail_open": settings.audit_fail_open,
                            "metrics_port": telemetry.http_port,
                        }
                    },
                )
                yield server, bound
            finally:
                health_servicer.enter_graceful_shutdown()
                server.stop(settings.grace_s).wait()
                log.info("stopped", extra={"fields": {"stats": telemetry.per_method()}})


class _Health:
    """SERVING once the service is open and while the audit trail takes lines; NOT_SERVING otherwise."""

    def __init__(self, servicer: health.HealthServicer) -> None:
        self._servicer = servicer
        self._open = False
        self._audit_ok = True
        self._set()

    def open(self) -> None:
        self._open = True
        self._set()

    def audit(self, ok: bool) -> None:
        self._audit_ok = ok
        self._set()

    def _set(self) -> None:
        up = self._open and self._audit_ok
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self._servicer.set(name, status)


def _registry(settings: ServiceSettings, token: str | None) -> CallerRegistry | None:
    """The callers of TOKENS_FILE (re-read on change) plus TOKENS and ``token`` (plain, scope search)."""
    fixed = plain_tokens([*(settings.tokens or "").split(","), *([token] if token else [])])
    if settings.tokens_file is None and not fixed:
        return None
    return CallerRegistry(settings.tokens_file, fixed)


def _credentials(settings: ServiceSettings) -> grpc.ServerCredentials:
    """TLS from PEM files; with a client CA, clients must present a certificate it signed (mTLS).

    The pair is checked here first: grpc reports a key that does not match its certificate only as a
    misleading "failed to bind".
    """
    assert settings.tls_cert and settings.tls_key
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key
        )
    except ssl.SSLError as exc:
        raise ValueError(
            f"TLS key {settings.tls_key} does not match certificate {settings.tls_cert} ({exc.reason})"
        ) from None
    except OSError as exc:
        raise OSError(
            f"cannot read TLS files {settings.tls_cert}, {settings.tls_key}: {exc.strerror}"
        ) from None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class _Terminate(Exception):
    """Raised in the main thread by SIGTERM so the server context exits through its graceful path."""


def serve(settings: ServiceSettings) -> None:
    """Run until SIGTERM or SIGINT, then drain: NOT_SERVING, grace period for in-flight calls, close."""

    def terminate(signum: int, frame: object) -> None:
        raise _Terminate(signal.Signals(signum).name)

    cpus = settings.cpu_set()
    if cpus is not None:  # before the server starts its threads; pin_process moves the earlier ones too
        pin_process(cpus)
        log.info("cpus", extra={"fields": {"cpus": settings.cpus}})
    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with run_server(settings) as (server, _):
            server.wait_for_termination()
    except _Terminate as stop:
        log.info("shutdown", extra={"fields": {"signal": str(stop)}})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
