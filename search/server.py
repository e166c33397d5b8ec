"""The gRPC front of ``SearchService``: thin servicer, one error table, auth, health, reflection, metrics.

Each RPC unpacks its request (``wire``), calls the service, packs the reply. Everything around the
call is one interceptor: request id; the caller, resolved from its bearer token or client certificate
(``auth``) and checked against the method's scope (``scope_of``); latency; the structured log line, the
audit line (``audit``) and the Prometheus metrics (``telemetry``); error -> status mapping with
google.rpc.BadRequest details; undecodable request bytes -> INVALID_ARGUMENT. Servicer methods never
see tokens or exceptions; they read the caller (``current_caller``) only to keep a site-restricted
caller to its sites. Messages and log fields are cut to MAX_MESSAGE_CHARS, and gRPC's
``maximum_concurrent_rpcs`` answers excess load with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import collections
import contextvars
import ipaddress
import json
import logging
import os
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from ecgsearch.encoder.signals import SignalError
from ecgsearch.export.runtime import Embedder
from ecgsearch.search import audit, wire
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.auth import ANONYMOUS, Caller, CallerRegistry, Callers, legacy
from ecgsearch.search.schema import InvalidQuery, StoreUnavailable, UnknownRecord
from ecgsearch.search.service import (
    Budget,
    Cancelled,
    DeadlineExceeded,
    EcgUnavailable,
    FieldViolation,
    Query,
    SearchOptions,
    SearchService,
    describe_validation,
)
from ecgsearch.search.settings import ServiceSettings
from ecgsearch.search.snapshots import SnapshotError
from ecgsearch.search.store import Store, StoreError, open_store
from ecgsearch.search.telemetry import Telemetry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EcgSearchService"].full_name
WRITE_METHODS: set[str] = {"UpsertEcgs"}  # RPCs that add or change stored ECGs: scope 'write'
REQUEST_ID = "x-request-id"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MAX_MESSAGE_CHARS = 300  # caller-facing error messages and logged errors are cut here
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a caller's x-request-id is kept only in this form

log = logging.getLogger("ecgsearch.server")

# Scopes: every RPC of the service needs 'search' unless listed here (by method name, e.g. "PushEcgs").
ADMIN_METHODS: set[str] = {"CreateSnapshot", "ListSnapshots"}  # operator RPCs: scope 'admin'

NOBODY = Caller("nobody", frozenset(), frozenset())  # outside a call: no scope, no site
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=NOBODY)


def scope_of(method: str) -> str:
    """The scope a caller needs for ``method`` (the RPC's name, without the service)."""
    if method in ADMIN_METHODS:
        return "admin"
    if method in WRITE_METHODS:
        return "write"
    return "search"


def current_caller() -> Caller:
    """The caller of the RPC being served on this thread (set by the interceptor around each call)."""
    return _CALLER.get()


# The one place exceptions become status codes; anything not listed is INTERNAL without details.
ERROR_TABLE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], grpc.StatusCode], ...] = (
    ((InvalidQuery, ValidationError, SignalError), grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownRecord, grpc.StatusCode.NOT_FOUND),
    ((EcgUnavailable, StoreError, SnapshotError), grpc.StatusCode.FAILED_PRECONDITION),
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


def _tolerant(deserialize: Callable[[bytes], Any] | None, name: str) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so garbage bytes become a client error instead of INTERNAL."""
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return _Undecodable(f"{len(data):,} bytes that do not decode as {name}")

    return decode


# --- servicer ------------------------------------------------------------------------------------


class EcgSearchServicer(pb_grpc.EcgSearchServiceServicer):
    """Unpack -> service -> pack. ``service`` is None until the store and the model are open."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.service: SearchService | None = None
        self.telemetry = telemetry
        self._snapshotting = threading.Lock()  # one snapshot at a time

    @property
    def _svc(self) -> SearchService:
        if self.service is None:
            raise StoreUnavailable("the server is starting: store or model not open yet")
        return self.service

    def _visible(self, record_id: str) -> None:
        """NOT_FOUND, as for an unknown id, when a site-restricted caller names another site's record."""
        caller = current_caller()
        if caller.sites is not None:
            payload, _ = self._svc.get_record(record_id)
            if not caller.sees(payload.site):
                raise UnknownRecord(record_id.strip()[:64])

    def SearchByRecord(self, request: pb.SearchByRecordRequest, context: grpc.ServicerContext):  # noqa: N802
        self._visible(request.record_id)
        result = self._svc.search_by_record(
            request.record_id,
            restricted(wire.options_from_proto(request.options)),
            include_same_patient=request.include_same_patient,
            budget=budget_of(context),
        )
        return wire.result_to_proto(result, pb.SearchByRecordResponse)

    def SearchByEcg(self, request: pb.SearchByEcgRequest, context: grpc.ServicerContext):  # noqa: N802
        options = restricted(wire.options_from_proto(request.options))
        ecg = wire.ecg_from_proto(request.ecg)
        result = self._svc.search_by_ecg(ecg, options, budget=budget_of(context))
        return wire.result_to_proto(result, pb.SearchByEcgResponse)

    def SearchByFile(self, request: pb.SearchByFileRequest, context: grpc.ServicerContext):  # noqa: N802
        options = wire.options_from_proto(request.options)
        file = wire.file_from_proto(request.file)
        result = self._svc.search_by_file(file, options, budget=budget_of(context))
        return wire.result_to_proto(result, pb.SearchByFileResponse)

    def UpsertEcgs(self, request: pb.UpsertEcgsRequest, context: grpc.ServicerContext):  # noqa: N802
        items = [wire.upsert_item_from_proto(i) for i in request.items]
        results = self._svc.upsert(items, request.dataset, site=push_site(), budget=budget_of(context))
        return wire.upsert_response_to_proto(results)

    def SearchByVector(self, request: pb.SearchByVectorRequest, context: grpc.ServicerContext):  # noqa: N802
        options = restricted(wire.options_from_proto(request.options))
        vector = wire.vector_from_proto(request.vector)
        result = self._svc.search_by_vector(vector, options, budget=budget_of(context))
        return wire.result_to_proto(result, pb.SearchByVectorResponse)

    def BatchSearch(self, request: pb.BatchSearchRequest, context: grpc.ServicerContext):  # noqa: N802
        queries = [restricted_query(wire.query_from_proto(q)) for q in request.queries]
        for query in queries:
            if query.record_id is not None:
                self._visible(query.record_id)
        results = self._svc.batch(queries, budget=budget_of(context))
        return pb.BatchSearchResponse(results=[wire.result_to_proto(r, pb.SearchResult) for r in results])

    def GetRecord(self, request: pb.GetRecordRequest, context: grpc.ServicerContext):  # noqa: N802
        payload, vector = self._svc.get_record(request.record_id, with_vector=request.with_vector)
        if not current_caller().sees(payload.site):
            raise UnknownRecord(request.record_id.strip()[:64])
        reply = pb.GetRecordResponse(payload=wire.payload_to_proto(payload))
        if vector is not None:
            reply.vector[:] = vector.tolist()
        return reply

    def GetEcg(self, request: pb.GetEcgRequest, context: grpc.ServicerContext):  # noqa: N802
        self._visible(request.record_id)
        prepared = self._svc.get_ecg(request.record_id)
        return wire.ecg_response_to_proto(request.record_id.strip(), prepared)

    def CollectionInfo(self, request: pb.CollectionInfoRequest, context: grpc.ServicerContext):  # noqa: N802
        svc = self._svc
        return wire.info_to_proto(svc.info(), svc.model_card, svc.info_updated_at)

    def ServerStats(self, request: pb.ServerStatsRequest, context: grpc.ServicerContext):  # noqa: N802
        reply = pb.ServerStatsResponse(
            uptime_s=self.telemetry.uptime_s,
            rpcs=[
                pb.RpcStats(
                    method=method,
                    count=int(row["count"]),
                    errors=int(row["errors"]),
                    p50_ms=row["p50_ms"],
                    p95_ms=row["p95_ms"],
                    p99_ms=row["p99_ms"],
                )
                for method, row in self.telemetry.per_method().items()
            ],
        )
        reply.started_at.FromDatetime(self.telemetry.started_at)
        reply.ecgs_prepared = self.service.prepared_count if self.service is not None else 0
        return reply

    def CreateSnapshot(self, request: pb.CreateSnapshotRequest, context: grpc.ServicerContext):  # noqa: N802
        with self._snapshotting:
            made = self._svc.store.create_snapshot()
        return pb.CreateSnapshotResponse(snapshot=wire.snapshot_to_proto(made))

    def ListSnapshots(self, request: pb.ListSnapshotsRequest, context: grpc.ServicerContext):  # noqa: N802
        found = self._svc.store.list_snapshots()
        return pb.ListSnapshotsResponse(snapshots=[wire.snapshot_to_proto(s) for s in found])


def restricted(options: SearchOptions) -> SearchOptions:
    """The options with the caller's sites added to the filter: the service adds it, never the caller."""
    sites = current_caller().sites
    if sites is None:
        return options
    return replace(options, filter=options.filter.model_copy(update={"sites": sorted(sites)}))


def push_site() -> str | None:
    """The site pushed ECGs are stored under: a caller restricted to one site writes for it; an
    unrestricted caller writes for the default site (None); a caller of several sites cannot say which."""
    sites = current_caller().sites
    if sites is None:
        return None
    if len(sites) != 1:
        raise PermissionDenied("a caller allowed several sites cannot push: give its writer one site")
    return next(iter(sites))


def restricted_query(query: Query) -> Query:
    return replace(query, options=restricted(query.options))


def budget_of(context: grpc.ServicerContext) -> Budget:
    """The caller's deadline (as a time.monotonic() instant) and whether the call is still live."""
    remaining = context.time_remaining()
    deadline = None if remaining is None or remaining > 1e9 else time.monotonic() + remaining
    return Budget(deadline=deadline, cancelled=lambda: not context.is_active())


# --- interceptors --------------------------------------------------------------------------------


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


def _bearer(header: str | None) -> str | None:
    if not header or not header.startswith("Bearer "):
        return None
    return header.removeprefix("Bearer ").strip()


def _certificate_name(context: grpc.ServicerContext) -> str | None:
    """The subject common name of the verified client certificate (mutual TLS), if any."""
    names = (context.auth_context() or {}).get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else None


class Unauthenticated(Exception):
    """No or an unknown credential (maps to UNAUTHENTICATED)."""


class PermissionDenied(Exception):
    """A known caller without the method's scope (maps to PERMISSION_DENIED)."""


class CallInterceptor(grpc.ServerInterceptor):
    """Around every service call: request id, caller and scope, latency, log, audit and metrics lines,
    and the error table.

    ``registry`` None serves without authentication (every call is ``anonymous`` with every scope).
    With a registry, a call needs ``authorization: Bearer <token>`` naming a caller, or (mutual TLS) a
    client certificate whose common name the tokens file names; when no caller is configured at all
    but mutual TLS is on, a verified certificate is enough and its common name is the caller (scope
    search). Health and reflection are not wrapped: orchestrators and grpcurl probe without credentials.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        registry: CallerRegistry | None,
        audit_log: audit.AuditLog | None = None,
        mutual_tls: bool = False,
    ) -> None:
        self.telemetry = telemetry
        self.registry = registry
        self.audit_log = audit_log
        self.mutual_tls = mutual_tls

    def _caller(self, metadata: dict[str, str], context: grpc.ServicerContext) -> Caller:
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

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if (
            handler is None
            or handler.unary_unary is None
            or not details.method.startswith(f"/{SERVICE_NAME}/")
        ):
            return handler
        inner = handler.unary_unary
        method = details.method.rsplit("/", 1)[-1]
        metadata = _metadata(details)
        offered = metadata.get(REQUEST_ID, "")
        request_id = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        message_name = f"{method}Request"
        scope = scope_of(method)

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            context.set_trailing_metadata(((REQUEST_ID, request_id),))
            start = time.perf_counter()
            code, message, reply = grpc.StatusCode.OK, "", None
            caller_name = audit.UNAUTHENTICATED
            bound = None
            self.telemetry.in_flight.inc()
            try:
                caller = self._caller(metadata, context)
                caller_name = caller.name
                if not caller.may(scope):
                    raise PermissionDenied(f"caller {caller.name!r} lacks scope {scope!r} for {method}")
                bound = _CALLER.set(caller)
                if isinstance(request, _Undecodable):
                    raise FieldViolation("request", request.message)
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded("deadline exceeded before the request started")
                reply = inner(request, context)
                return reply
            except Unauthenticated as exc:
                code, message = grpc.StatusCode.UNAUTHENTICATED, str(exc)
                context.abort_with_status(rich_status(code, message, [], request_id))
            except PermissionDenied as exc:
                code, message = grpc.StatusCode.PERMISSION_DENIED, bounded(str(exc))
                context.abort_with_status(rich_status(code, message, [], request_id))
            except Exception as exc:
                code, message, violations = status_of(exc, request_id)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception(
                        "internal error", extra={"fields": {"method": method, "request_id": request_id}}
                    )
                context.abort_with_status(rich_status(code, message, violations, request_id))
            finally:
                if bound is not None:
                    _CALLER.reset(bound)
                seconds = time.perf_counter() - start
                self.telemetry.in_flight.dec()
                self.telemetry.record(method, code.name, seconds)
                fields = {
                    "method": method,
                    "request_id": request_id,
                    "caller": caller_name,
                    "code": code.name,
                    "latency_ms": round(seconds * 1000, 3),
                    "peer": bounded(context.peer(), 80),
                }
                if message:
                    fields["error"] = message
                log.info("rpc", extra={"fields": fields})
                if self.audit_log is not None:
                    self._audit(request_id, caller_name, method, code, request, reply, seconds)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=_tolerant(handler.request_deserializer, message_name),
            response_serializer=handler.response_serializer,
        )

    def _audit(
        self,
        request_id: str,
        caller: str,
        method: str,
        code: grpc.StatusCode,
        request: Any,
        reply: Any,
        seconds: float,
    ) -> None:
        assert self.audit_log is not None
        try:
            self.audit_log.write(
                audit.entry(
                    request_id=request_id,
                    caller=caller,
                    method=method,
                    status=code.name,
                    request=request,
                    reply=reply,
                    latency_s=seconds,
                )
            )
        except Exception:  # a full disk must not turn answered calls into errors; it is logged
            log.exception("audit line not written", extra={"fields": {"request_id": request_id}})


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

    @property  # type: ignore[override]
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
    metrics_port: int | None = None,
    telemetry: Telemetry | None = None,
) -> Iterator[tuple[grpc.Server, int]]:
    """Start the server, yield ``(server, bound_port)``, stop it gracefully on exit.

    ``settings`` comes from the edge (``ServiceSettings()`` in ``serve``); keyword arguments override it,
    so tests pass ``port=0, token="t", store=..., embedder=...``. A store or embedder passed in stays
    open on exit; one opened here is closed here. Health reports SERVING only once both are open.
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
    with ExitStack() as resources:
        audit_log = audit.AuditLog(settings.audit_log) if settings.audit_log else None
        if audit_log is not None:
            resources.callback(audit_log.close)
        if settings.metrics_port is not None:
            telemetry.serve_http(settings.host, settings.metrics_port)
            resources.callback(telemetry.close)
        interceptor = CallInterceptor(telemetry, registry, audit_log, mutual_tls=bool(settings.tls_client_ca))
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.max_workers or min(32, 2 * (os.cpu_count() or 1) + 4)
            ),
            interceptors=[interceptor],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = EcgSearchServicer(telemetry)
        telemetry.watch(lambda: servicer.service)
        pb_grpc.add_EcgSearchServiceServicer_to_server(servicer, server)
        health_servicer = health.HealthServicer()
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
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
                servicer.service = SearchService(
                    store,
                    embedder or Embedder(settings.model),
                    stats_refresh_s=settings.stats_refresh_s,
                    ecg_roots=settings.ecg_root_list(),
                    site_secret_file=settings.site_secret_file,
                    archive_path=settings.archive_path,
                )
                owned.callback(servicer.service.close)
                for name in ("", SERVICE_NAME):
                    health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
                log.info(
                    "serving",
                    extra={
                        "fields": {
                            "address": f"{settings.host}:{bound}",
                            "tls": bool(settings.tls_cert),
                            "mutual_tls": bool(settings.tls_client_ca),
                            "auth": registry is not None,
                            "audit_log": settings.audit_log,
                            "metrics_port": telemetry.http_port,
                        }
                    },
                )
                yield server, bound
            finally:
                health_servicer.enter_graceful_shutdown()
                server.stop(settings.grace_s).wait()
                log.info("stopped", extra={"fields": {"stats": telemetry.per_method()}})


def _registry(settings: ServiceSettings, token: str | None) -> CallerRegistry | None:
    """The callers of TOKENS_FILE (re-read on change) plus TOKENS and ``token`` (plain, scope search)."""
    fixed = legacy([*(settings.tokens or "").split(","), *([token] if token else [])])
    if settings.tokens_file is None and not fixed:
        return None
    return CallerRegistry(settings.tokens_file, fixed)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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

    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with run_server(settings) as (server, _):
            server.wait_for_termination()
    except _Terminate as stop:
        log.info("shutdown", extra={"fields": {"signal": str(stop)}})
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
