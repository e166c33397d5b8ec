"""The one door of the service: every call enters through ``Door.enter`` with its caller as an argument.

``Door.enter(caller, method, scope, request, budget)`` is the only way from the transport into the
service. In this order it

1. checks the caller's scope for the method (``PermissionDenied``);
2. prices the request (``cost.py``: searches, hits, ECGs, samples, file bytes, estimated reply) from
   the request alone, and refuses a reply that cannot fit the message limit before any work
   (``ReplyTooLarge``);
3. lets a heavy call wait its turn in the heavy budget (light calls never wait for it);
4. hands the RPC's handler a ``Walled`` view of the service built for this caller, never the service.

``Walled`` binds the caller's sites to every read (searches of every kind, record and ECG lookups,
collection figures, server figures) and the caller's one site to every write; snapshots, which hold
every site's ECGs, need an all-sites caller. Handlers only unpack, call the view and pack: they
cannot forget the wall, and an RPC without an entry in the table (``Rpc``) has no way in at all
(the descriptor test in tests/search/test_door.py keeps the table and a cross-site case per RPC).

No grpc here: the transport (``server.py``) resolves the caller and maps the errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgsearch.ecg.schema import CollectionInfo, EcgPayload, StoreUnavailable
from ecgsearch.search import wire
from ecgsearch.search.api import (
    Budget,
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
from ecgsearch.search.serving.auth import Caller
from ecgsearch.search.serving.cost import Cost, HeavyBudget, HitSize, ReplyMeter, check_reply

if TYPE_CHECKING:
    from ecgsearch.export.card import ModelCard
    from ecgsearch.search.serving.service import SearchService
    from ecgsearch.search.serving.telemetry import Telemetry

HIT_SAMPLE = 1000  # stored hits per probe when the size of a hit is (re)measured


class Unauthenticated(Exception):
    """No or an unknown credential (maps to UNAUTHENTICATED)."""


class PermissionDenied(Exception):
    """A known caller without the method's scope, or outside what its sites allow (PERMISSION_DENIED)."""


@dataclass(frozen=True)
class Pricing:
    """What a request's cost is computed with: the size of a hit, summary rows, the vector size."""

    hit: HitSize
    summary_rows: int
    dim: int


@dataclass(frozen=True)
class Rpc:
    """One RPC: the cost of its request, and its handler (unpack, call the view, pack)."""

    cost: Callable[[Any, Pricing], Cost]
    handle: Callable[[Walled, Any], Any]


@dataclass(frozen=True)
class ServerFigures:
    """What ServerStats shows a caller: per-RPC rows and prepared ECGs only to an all-sites caller."""

    uptime_s: float
    started_at: datetime
    rpcs: dict[str, dict[str, float]]
    ecgs_prepared: int
    search_plans: dict[str, dict[str, int | None]]  # plan kind: count, latest estimate and total


class Walled:
    """The service as one caller may use it: each read carries the caller's sites, each write its site."""

    def __init__(self, door: Door, service: SearchService, caller: Caller, budget: Budget) -> None:
        self._door = door
        self._service = service
        self._sites = caller.sites
        self.caller = caller.name
        self.budget = budget
        self.reply = ReplyMeter(door.reply_limit)

    # --- reads -----------------------------------------------------------------------------------

    def search_by_record(
        self, record_id: str, options: SearchOptions, include_same_patient: bool
    ) -> SearchResult:
        return self._service.search_by_record(
            record_id,
            options,
            sites=self._sites,
            include_same_patient=include_same_patient,
            budget=self.budget,
        )

    def search_by_ecg(self, ecg: EcgQuery, options: SearchOptions) -> SearchResult:
        return self._service.search_by_ecg(ecg, options, sites=self._sites, budget=self.budget)

    def search_by_file(self, file: EcgFile, options: SearchOptions) -> SearchResult:
        return self._service.search_by_file(file, options, sites=self._sites, budget=self.budget)

    def search_by_vector(self, vector: np.ndarray, options: SearchOptions) -> SearchResult:
        return self._service.search_by_vector(vector, options, sites=self._sites, budget=self.budget)

    def batch(self, queries: Sequence[Query]) -> Iterator[SearchResult]:
        return self._service.batch_results(queries, sites=self._sites, budget=self.budget)

    def get_record(self, record_id: str, with_vector: bool) -> tuple[EcgPayload, np.ndarray | None]:
        return self._service.get_record(record_id, sites=self._sites, with_vector=with_vector)

    def get_ecg(self, record_id: str) -> np.ndarray:
        return self._service.get_ecg(record_id, sites=self._sites)

    def recorded_ecg(self, record_id: str) -> RecordedEcg:
        return self._service.recorded_ecg(record_id, sites=self._sites)

    def info(self) -> tuple[CollectionInfo, ModelCard, datetime]:
        svc = self._service
        return svc.info(sites=self._sites), svc.model_card, svc.info_updated_at(sites=self._sites)

    def server_figures(self) -> ServerFigures:
        """Uptime for everyone; the per-RPC rows and prepared ECGs, which count every site's calls,
        only for an all-sites caller."""
        telemetry = self._door.telemetry
        every = self._sites is None
        return ServerFigures(
            uptime_s=telemetry.uptime_s,
            started_at=telemetry.started_at,
            rpcs=telemetry.per_method() if every else {},
            ecgs_prepared=self._service.prepared_count if every else 0,
            search_plans=self._service.store.plans.rows() if every else {},
        )

    # --- writes ----------------------------------------------------------------------------------

    def upsert(self, items: Sequence[UpsertItem], dataset: str) -> list[Pushed]:
        return self._service.upsert(items, dataset, site=self._write_site(), budget=self.budget)

    def _write_site(self) -> str | None:
        """The site a push is for: a one-site caller's site; an all-sites caller writes for the default
        site (None); a caller of several sites cannot say which."""
        if self._sites is None:
            return None
        if len(self._sites) != 1:
            raise PermissionDenied("a caller allowed several sites cannot push: give its writer one site")
        return next(iter(self._sites))

    # --- operator calls --------------------------------------------------------------------------

    def create_snapshot(self) -> SnapshotInfo:
        self._every_site("a snapshot holds every site's ECGs")
        with self._door.snapshotting:
            return self._service.store.create_snapshot(archive=self._service.archive_path)

    def list_snapshots(self) -> list[SnapshotInfo]:
        self._every_site("snapshots hold every site's ECGs")
        return self._service.store.list_snapshots()

    def _every_site(self, why: str) -> None:
        if self._sites is not None:
            raise PermissionDenied(f"{why}: only a caller of every site may do this")


class Door:
    """The entry of every call (see the module doc); ``open`` gives it the service once it is ready."""

    def __init__(
        self,
        rpcs: Mapping[str, Rpc],
        *,
        reply_limit: int,
        heavy: HeavyBudget,
        telemetry: Telemetry,
    ) -> None:
        self.rpcs = dict(rpcs)
        self.reply_limit = reply_limit
        self.heavy = heavy
        self.telemetry = telemetry
        self.hit = HitSize()
        self.snapshotting = threading.Lock()  # one snapshot at a time
        self.service: SearchService | None = None

    def open(self, service: SearchService) -> None:
        """Serve ``service``: measure the size of its hits now and after each statistics refresh."""
        self.measure_hits(service)
        service.on_refresh(lambda: self.measure_hits(service))
        self.service = service

    def measure_hits(self, service: SearchService) -> None:
        self.hit.observe([wire.hit_to_proto(h).ByteSize() for h in service.sample_hits(HIT_SAMPLE)])

    def admit(self, caller: Caller, scope: str, method: str) -> None:
        """PermissionDenied unless the caller holds the method's scope."""
        if not caller.may(scope):
            raise PermissionDenied(f"caller {caller.name!r} lacks scope {scope!r} for {method}")

    def enter(self, caller: Caller, method: str, scope: str, request: Any, budget: Budget) -> Any:
        """Scope, cost, budget, wall: then the RPC's handler, given this caller's view of the service."""
        self.admit(caller, scope, method)
        service = self.service
        if service is None:
            raise StoreUnavailable("the server is starting: store or model not open yet")
        rpc = self.rpcs[method]
        cost = rpc.cost(request, self.pricing(service))
        check_reply(cost, self.reply_limit, self.hit)
        if cost.heavy:
            budget = replace(budget, polite=True)
        view = Walled(self, service, caller, budget)
        with self.heavy.hold(cost.weight, budget) if cost.heavy else nullcontext():
            return rpc.handle(view, request)

    def pricing(self, service: SearchService) -> Pricing:
        return Pricing(self.hit, len(service.info(sites=None).diagnosis_counts), service.embedder.dim)
