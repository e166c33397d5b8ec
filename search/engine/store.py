"""The only module that talks to Qdrant.

``open_store(path=...)`` -> EdgeStore (qdrant-edge-py, Qdrant's engine in-process, on disk);
``open_store(url=...)`` -> ServerStore (qdrant-client against a Qdrant server or cluster).
Callers see the ``Store`` protocol only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import grpc
import numpy as np
import qdrant_edge as edge
from pydantic import BaseModel, ConfigDict, Field
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ecgsearch.ecg.schema import (
    GAIN_VIEW,
    LEARNED_VIEW,
    MAX_K,
    PAYLOAD_FIELDS,
    VIEW_DISTANCE,
    VIEW_PREFETCH,
    VIEW_RRF_K,
    CollectionInfo,
    EcgPayload,
    Hit,
    IndexKind,
    InvalidQuery,
    SearchFilter,
    StoreUnavailable,
    UnknownRecord,
    check_view,
    point_id,
)
from ecgsearch.search.engine.filters import to_client, to_edge
from ecgsearch.search.engine.plan import Plan, PlanTally, choose
from ecgsearch.search.engine.settings import (
    CLIENT,
    EDGE,
    IndexSettings,
    build,
    payload_schemas,
    search_params,
)

if TYPE_CHECKING:
    from ecgsearch.search.api import SnapshotInfo


class Store(Protocol):
    """A collection of ECG embeddings with payloads, whatever the backend.

    Both backends implement every method (tests/search/test_store_conformance.py runs each on both);
    where one cannot do a thing (qdrant-client's local mode has no snapshots) it raises StoreError.
    """

    name: str  # the collection (an alias resolved)
    backend: str  # "qdrant-edge", "qdrant-server" or "qdrant-local"
    plans: PlanTally  # the plan of every search (the embedded store's; a Qdrant server plans its own)

    def create_collection(
        self, *, dim: int, model_version: str, views: dict[str, ViewSpec] | None = None
    ) -> None:
        """Create if absent; if present, refuse (ModelMismatch) unless dim, model_version and the named
        views (when given) match, and (SettingsMismatch) when the store was opened with explicit
        settings that differ from its own."""

    def upsert(
        self,
        payloads: Sequence[EcgPayload],
        vectors: np.ndarray,
        named: Sequence[dict[str, list[float]]] | None = None,
    ) -> None:
        """Insert or overwrite points; the point id derives from payload.record_id (idempotent). A
        collection with views needs ``named``, each point's views (``ViewVectors.rows``: a gain-suspect
        ECG has no voltage vector, and its payload says ``gain_suspect``)."""

    def search_views(
        self,
        queries: Sequence[dict[str, list[float]]],
        similar_by: dict[str, float],
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
    ) -> list[list[Hit]]:
        """Search one named view, or a weighted-RRF blend of several (InvalidQuery on a collection
        made before views, naming the migration)."""

    def search_reranked(
        self,
        queries: Sequence[dict[str, list[float]]],
        weights: Sequence[dict[str, float]],
        *,
        k: int,
        missing: dict[str, float],
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
    ) -> list[list[Hit]]:
        """Each query's top VIEW_PREFETCH by the learned view (filtered), reranked by its cosine minus,
        per other view in the query's ``weights``, weight x the candidate's distance in that view (a
        candidate without the view's vector: ``missing[view]``): the default blend's search."""

    def get_views(self, record_id: str) -> dict[str, list[float]]:
        """A stored record's named vectors."""

    def views(self) -> dict[str, ViewSpec]:
        """The named views this collection holds, with the version of each (none: made before views)."""

    def existing(self, record_ids: Sequence[str]) -> set[str]:
        """Which of these record ids are already stored (for resume)."""

    def content_hashes(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        """Stored ones of these record ids -> their payload's content hash (None: stored without one)."""

    def sites_of(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        """Stored ones of these record ids -> their payload's site (None: stored without one).

        One retrieval of one payload key per batch, whether an id is stored or not: the service's
        visibility check, which must cost the same for an unknown id and another site's id.
        """

    def search(
        self,
        vector: np.ndarray,
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """k nearest by cosine among points matching the filter, best first."""

    def search_batch(
        self,
        vectors: np.ndarray,
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
        score_threshold: float | None = None,
    ) -> list[list[Hit]]:
        """One result list per query row."""

    def get(self, record_id: str, *, sites: Sequence[str] | None = None) -> tuple[EcgPayload, np.ndarray]:
        """Payload and stored vector of one record; raises UnknownRecord.

        With ``sites``, one filtered read (this id and a site among them): an id that is not stored and
        one of another site both find nothing, after the same work in the engine.
        """

    def count(self, filter: SearchFilter | None = None) -> int:
        """Points matching the filter (all points without one)."""

    def info(self, filter: SearchFilter | None = None) -> CollectionInfo:
        """Count, dim, model version, backend and per-diagnosis counts (of the points ``filter`` keeps)."""

    def optimize(self) -> None:
        """Build the HNSW index over every point (embedded) or wait until indexing is done (server)."""

    def close(self) -> None:
        """Flush and release the store (the embedded shard holds a lock until then)."""

    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection``, replacing its old target: how a new model goes live."""

    def aliases(self) -> dict[str, str]:
        """Every alias of the store and the collection it points at."""

    def index_settings(self) -> IndexSettings:
        """The index settings the open collection was created with."""

    def create_snapshot(self, directory: Path | None = None, archive: Path | None = None) -> SnapshotInfo:
        """Snapshot the collection (and, embedded, the kept signals under ``archive``)."""

    def list_snapshots(self, directory: Path | None = None) -> list[SnapshotInfo]:
        """The collection's snapshots, oldest first."""

    def restore_snapshot(self, source: str | Path, archive: Path | None = None) -> SnapshotInfo:
        """Recover this collection from a snapshot (and, embedded, its kept signals into ``archive``)."""

    def __enter__(self) -> Self:
        """``with open_store(...) as store:`` closes the store on leaving."""

    def __exit__(self, *exc: object) -> None: ...


class StoreError(RuntimeError):
    """A store operation that cannot be done as asked (not a connectivity problem)."""


class ModelMismatch(StoreError):
    """The collection holds vectors of another model or dimension: they must never be mixed."""


class SettingsMismatch(StoreError):
    """Index settings were asked for that differ from those an existing collection was made with."""


class ViewSpec(BaseModel):
    """One named vector of a collection: its size, distance and the version of its vectors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(gt=0)
    distance: Literal["cosine", "euclid"]
    version: str
    served: bool = False  # the view is the served vector itself: stored once, searched as it


GAIN_SUSPECT = edge.Filter(must_not=[edge.IsEmptyCondition(key="gain_suspect")])  # stored only when true


def _unindexed_points(shard: edge.EdgeShard, manifest: CollectionManifest) -> int:
    """Points not yet in an indexed segment. The engine counts indexed vectors, one per named vector a
    point holds: the served vector, each stored view, less the voltage vector a gain-suspect ECG is
    stored without (counted on the payload index of ``gain_suspect``). The vectors still missing,
    divided by those a point holds and rounded up, err towards indexing early, never late.

    (``MatchValue(True)`` of qdrant-edge-py 0.9.0 matches no stored ``true``, so the flag is counted as
    "not empty": only ``true`` is ever stored, ``None`` being left out of the payload.)
    """
    info = shard.info()
    views = [name for name, spec in manifest.views.items() if not spec.served]
    per_point = 1 + len(views)
    without_voltage = (
        shard.count(edge.CountRequest(exact=True, filter=GAIN_SUSPECT)) if GAIN_VIEW in views else 0
    )
    missing = info.points_count * per_point - without_voltage - info.indexed_vectors_count
    return max(0, -(-missing // per_point))


def _largest_dim(dim: int, views: dict[str, ViewSpec] | None) -> int:
    """The largest named vector's size: the engine measures a segment by it."""
    return max([dim, *(spec.dim for spec in (views or {}).values())])


def view_specs(
    dims: dict[str, int], versions: dict[str, str], *, served_dim: int | None = None
) -> dict[str, ViewSpec]:
    """Every declared view (``ecg.schema.VIEW_DISTANCE``) as a collection holds it: its size
    (``ecg.views.view_dims``) and the version of its vectors (``ecg.views.view_versions``);
    ``ecg.views.collection_layout(encoder)`` gives all three. A learned view as wide as the served vector
    (``served_dim``) is that vector (``views.waveform_from_embedding`` of a model without measured
    blocks), so it is not stored a second time."""
    return {
        v: ViewSpec(
            dim=dims[v],
            distance=d,
            version=versions[v],
            served=v == LEARNED_VIEW and dims[v] == served_dim,
        )
        for v, d in VIEW_DISTANCE.items()
    }


class CollectionManifest(BaseModel):
    """What a collection was made with; the embedded store keeps it as JSON beside the shard."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dim: int = Field(gt=0)
    model_version: str
    created: datetime
    settings: IndexSettings = Field(default_factory=IndexSettings)
    views: dict[str, ViewSpec] = Field(
        default_factory=dict,
        description="named vectors beside the served one: view -> version of its vectors (none: made "
        "before views; search it by its one vector, or migrate)",
    )


# The payload fields the filters read (ecg.schema.PAYLOAD_FIELDS declares which, and how).
PAYLOAD_INDEXES: dict[str, IndexKind] = {f.name: f.index for f in PAYLOAD_FIELDS if f.index is not None}
BATCH = 512
# Points written between flushes of the embedded shard: a flush lets the engine drop write-ahead-log
# segments it has persisted, so a bulk load keeps ~100 MB of log instead of ~2.2 KB per point written
# (9 GB at 4M, all replayed after a crash); at 304-d one flush took ~0.2 s in a probe, against ~6 s for
# the store to upsert 50,000 points.
FLUSH_EVERY_POINTS = 50_000
log = logging.getLogger(__name__)
FACET_LIMIT = 10_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _index_payloads(shard: edge.EdgeShard) -> None:
    """Create the payload indexes of PAYLOAD_INDEXES the shard lacks (a new shard: all of them).

    A collection made before an index was declared gets it when opened, so its filters are
    estimated and planned as a new collection's; an index already there is left as it is.
    """
    have = set(shard.info().payload_schema)
    missing = {f: schema for f, schema in payload_schemas(PAYLOAD_INDEXES, EDGE).items() if f not in have}
    for field_name, schema in missing.items():
        shard.update(edge.UpdateOperation.create_field_index(field_name, schema))
    if missing:
        shard.flush()
        if have:
            log.info("payload indexes added to an existing collection: %s", ", ".join(missing))


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise StoreError(f"invalid collection or alias name {name!r}: use letters, digits, '.', '_', '-'")
    return name


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidQuery(f"k must be between 1 and {MAX_K}, got {k}")


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Query or data vectors as a float32 (n, dim) matrix; InvalidQuery when the shape is wrong."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise InvalidQuery(f"vectors must have {dim} dimensions, got shape {tuple(np.shape(vectors))}")
    if not np.all(np.isfinite(array)):
        raise InvalidQuery("vectors contain NaN or infinite values")
    return array


def _payload_dict(payload: EcgPayload) -> dict[str, Any]:
    """Stored form of a payload: JSON types, unknown fields left out so they match no condition; the
    fingerprint (excluded from every dump) is stored too, for copy detection."""
    stored = payload.model_dump(mode="json", exclude_none=True)
    if payload.fingerprint is not None:
        stored["fingerprint"] = payload.fingerprint
    return stored


def _vector_of(stored: Any) -> np.ndarray:
    if isinstance(stored, dict):  # named-vector form; ours is the unnamed default vector
        stored = stored.get("", next(iter(stored.values())))
    return np.asarray(stored, dtype=np.float32)


def _hit(payload: dict[str, Any] | None, score: float) -> Hit:
    model = EcgPayload.model_validate(payload or {})
    return Hit(record_id=model.record_id, score=float(score), payload=model)


def _check_match(
    existing: CollectionManifest, dim: int, model_version: str, requested: IndexSettings | None
) -> None:
    """Refuse to add to a collection made by another model, or with other index settings than asked."""
    if existing.dim != dim or existing.model_version != model_version:
        raise ModelMismatch(
            f"collection {existing.name!r} holds {existing.dim}-d vectors of model "
            f"{existing.model_version!r}, not {dim}-d vectors of {model_version!r}; vectors of two "
            "models must not be mixed: create a new collection for the new model and switch the alias to it"
        )
    if requested is not None and requested != existing.settings:
        have, want = existing.settings.model_dump(), requested.model_dump()
        diff = ", ".join(f"{key} {have[key]} (asked {want[key]})" for key in have if have[key] != want[key])
        raise SettingsMismatch(
            f"collection {existing.name!r} was created with {diff}; index settings are fixed when a "
            "collection is created: ingest into a new collection to change them"
        )


def _check_views(existing: CollectionManifest, views: dict[str, ViewSpec] | None) -> None:
    """Refuse vectors of other views (or of another version of a view) than the collection holds. A
    collection made before views takes the served vectors alone, as before (``upsert`` drops the views)."""
    if views is None or views == existing.views or not existing.views:
        return
    have = ", ".join(f"{k} {v.version}" for k, v in sorted(existing.views.items())) or "no named views"
    want = ", ".join(f"{k} {v.version}" for k, v in sorted(views.items())) or "no named views"
    raise ModelMismatch(
        f"collection {existing.name!r} holds {have}, not {want}; {MIGRATE}".format(name=existing.name)
    )


MIGRATE = (
    "re-embed into a new collection (ecgsearch ingest SOURCE --collection {name}-views) and switch "
    "the alias clients use to it (ecgsearch collection alias ALIAS {name}-views)"
)


def _views_query(name: str, held: dict[str, ViewSpec], similar_by: dict[str, float]) -> dict[str, float]:
    """The views a query blends (weight > 0), each one the collection ``name`` holds (``held``)."""
    used = {check_view(v): float(w) for v, w in similar_by.items() if w > 0}
    if not used:
        raise InvalidQuery("similar_by needs at least one view with a weight above 0")
    if not held:
        raise InvalidQuery(
            f"collection {name!r} holds no named views (it was made before them); "
            + MIGRATE.format(name=name)
        )
    missing = sorted(set(used) - set(held))
    if missing:
        raise InvalidQuery(f"collection {name!r} holds no {', '.join(missing)} view")
    return used


def _named_rows(
    vectors: np.ndarray, named: Sequence[dict[str, list[float]]] | None, views: dict[str, ViewSpec]
) -> list[Any]:
    """Each point's stored vector: the served one alone, or the served one (named "") and its views."""
    if not views:
        return [v.tolist() for v in vectors]
    if named is None or len(named) != len(vectors):
        raise StoreError("this collection holds named views: upsert needs every point's views")
    return [
        {"": v.tolist(), **{name: x for name, x in row.items() if not views[name].served}}
        for v, row in zip(vectors, named, strict=True)
    ]


def _edge_views(views: dict[str, ViewSpec]) -> dict[str, edge.EdgeVectorParams]:
    kind = {"cosine": edge.Distance.Cosine, "euclid": edge.Distance.Euclid}
    return {
        v: edge.EdgeVectorParams(size=spec.dim, distance=kind[spec.distance])
        for v, spec in views.items()
        if not spec.served
    }


def _client_views(views: dict[str, ViewSpec]) -> dict[str, qm.VectorParams]:
    kind = {"cosine": qm.Distance.COSINE, "euclid": qm.Distance.EUCLID}
    return {
        v: qm.VectorParams(size=spec.dim, distance=kind[spec.distance])
        for v, spec in views.items()
        if not spec.served
    }


def _reranking(name: str, held: dict[str, ViewSpec], weights: dict[str, float]) -> dict[str, float]:
    """The views (other than the learned one) that rerank a query's candidates, weight > 0, each one the
    collection holds (InvalidQuery as ``_views_query`` says it)."""
    _views_query(name, held, {LEARNED_VIEW: 1.0, **weights})
    return {v: float(w) for v, w in weights.items() if v != LEARNED_VIEW and w > 0}


def _using(views: dict[str, ViewSpec], view: str) -> str:
    """The stored vector a view is searched by: its own, or the served one ("") it is."""
    return "" if views[view].served else view


def _query_view(query: dict[str, list[float]], view: str) -> list[float]:
    if view not in query:
        why = " (its gain is suspect)" if view == "voltage" else ""
        raise InvalidQuery(f"the query ECG has no {view} vector{why}: search it by another view")
    return list(query[view])


def _views_of(stored: Any, views: dict[str, ViewSpec]) -> dict[str, list[float]]:
    """A point's views as stored: its named vectors, and the served one under a view that is it."""
    if not isinstance(stored, dict):
        return {}
    return {v: list(stored[_using(views, v)]) for v in views if _using(views, v) in stored}


class _Backend:
    """What both backends do the same way: resume checks in batches, one search is a batch of one,
    ``with`` closes the store."""

    search_batch: Callable[..., list[list[Hit]]]
    close: Callable[[], None]
    _stored_ids: Callable[[list[str]], list[str]]  # which of these point ids exist (one batch)

    def existing(self, record_ids: Sequence[str]) -> set[str]:
        by_point = {point_id(r): r for r in record_ids}
        ids = list(by_point)
        found: set[str] = set()
        for start in range(0, len(ids), BATCH):
            found.update(by_point[i] for i in self._stored_ids(ids[start : start + BATCH]))
        return found

    def search(
        self,
        vector: np.ndarray,
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        return self.search_batch(
            vector, k=k, filter=filter, exact=exact, ef=ef, score_threshold=score_threshold
        )[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EdgeStore(_Backend):
    """Embedded store: one qdrant-edge shard per collection under ``path/collections/<name>/``.

    Edge has no collections or aliases, so this class keeps them: ``manifest.json`` beside each shard
    (dim, model version, settings) and ``path/aliases.json``. One process owns a shard at a time:
    its write-ahead log is locked until ``close()``.
    """

    backend = "qdrant-edge"

    def __init__(
        self, path: str | Path, collection: str = "ecgs", settings: IndexSettings | None = None
    ) -> None:
        self.root = Path(path).expanduser()
        self.requested = _check_name(collection)
        self.name = self._aliases().get(collection, collection)
        self._shard: edge.EdgeShard | None = None
        self._closed = False
        self._unflushed = 0  # points upserted since the last flush (FLUSH_EVERY_POINTS)
        self._unindexed = 0  # points written since the last optimize (IndexSettings.index_every)
        self.last_plan: Plan | None = None  # the plan of the latest search (tests, benchmarks)
        self.plans = PlanTally()  # every search's plan, for the server's stats
        self.manifest = self._read_manifest()
        self.requested_settings = settings
        self.settings = settings or (self.manifest.settings if self.manifest else IndexSettings())
        if self.manifest is not None:
            self._shard = self._open(lambda: edge.EdgeShard.load(str(self._shard_dir)))
            _index_payloads(self._shard)
            self._unindexed = _unindexed_points(self._shard, self.manifest)

    # -- layout ---------------------------------------------------------------------------------
    @property
    def _dir(self) -> Path:
        return self.root / "collections" / self.name

    @property
    def _shard_dir(self) -> Path:
        return self._dir / "shard"

    @property
    def _manifest_path(self) -> Path:
        return self._dir / "manifest.json"

    def _read_manifest(self) -> CollectionManifest | None:
        if not self._manifest_path.is_file():
            return None
        try:
            return CollectionManifest.model_validate_json(self._manifest_path.read_text())
        except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
            detail = " ".join(str(error).split())[:200]
            raise StoreError(f"{self._manifest_path}: unreadable collection manifest ({detail})") from None

    def _aliases(self) -> dict[str, str]:
        path = self.root / "aliases.json"
        if not path.is_file():
            return {}
        try:
            aliases = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise StoreError(
                f"{path}: unreadable aliases file ({' '.join(str(error).split())[:200]})"
            ) from None
        if not isinstance(aliases, dict):
            raise StoreError(f"{path}: expected a JSON object of alias -> collection")
        return aliases

    def _open(self, opener: Callable[[], edge.EdgeShard]) -> edge.EdgeShard:
        try:
            return opener()
        except Exception as error:  # the binding raises plain Exception
            if "WAL" in str(error) or "WouldBlock" in str(error):
                raise StoreUnavailable(
                    f"store {self._dir} is already open in another process: another ecgsearch "
                    "process (serve or ingest) holds its write-ahead log lock; wait for that ingest "
                    "to finish or stop that serve, or ingest into a new collection and switch to it"
                ) from error
            raise StoreUnavailable(f"cannot open store {self._dir}: {error}") from error

    @property
    def shard(self) -> edge.EdgeShard:
        if self._closed:
            raise StoreUnavailable(f"store {self.root} is closed")
        if self._shard is None:
            raise StoreUnavailable(
                f"collection {self.requested!r} does not exist in {self.root}; ingest ECGs first"
            )
        return self._shard

    # -- Store protocol -------------------------------------------------------------------------
    def create_collection(
        self, *, dim: int, model_version: str, views: dict[str, ViewSpec] | None = None
    ) -> None:
        """Create the shard and its payload indexes (before any HNSW graph), or check the existing one.

        ``views`` (``view_specs``) adds a named vector per view beside the
        served one (named ""), so a query can search any view or a blend of them."""
        if self.manifest is not None:
            _check_match(self.manifest, dim, model_version, self.requested_settings)
            _check_views(self.manifest, views)
            return
        s = self.settings
        made = build(s, EDGE, vector_dim=_largest_dim(dim, views))
        # int8 copies for the served vector only: a view of 4-12 numbers saves a few bytes a point by
        # them and loses neighbours (4-d at 200k: recall@10 0.985 quantized, 1.0 in float32)
        served = edge.EdgeVectorParams(
            size=dim, distance=edge.Distance.Cosine, quantization_config=made.quantization
        )
        config = edge.EdgeConfig(
            vectors={"": served, **_edge_views(views)} if views else served,
            hnsw_config=made.hnsw,
            optimizers=made.optimizers,
        )
        self._dir.mkdir(parents=True, exist_ok=True)
        shard = self._open(lambda: edge.EdgeShard.create(str(self._shard_dir), config))
        _index_payloads(shard)
        manifest = CollectionManifest(
            name=self.name,
            dim=dim,
            model_version=model_version,
            created=datetime.now(UTC),
            settings=s,
            views=dict(views or {}),
        )
        _write_atomic(self._manifest_path, manifest.model_dump_json(indent=2))
        self.manifest, self._shard = manifest, shard

    def upsert(
        self,
        payloads: Sequence[EcgPayload],
        vectors: np.ndarray,
        named: Sequence[dict[str, list[float]]] | None = None,
    ) -> None:
        matrix = self._matrix(vectors)
        if len(payloads) != len(matrix):
            raise ValueError(f"{len(payloads)} payloads but {len(matrix)} vectors")
        rows = _named_rows(matrix, named, self._manifest().views)
        for start in range(0, len(payloads), BATCH):
            points = [
                edge.Point(point_id(p.record_id), rows[i], _payload_dict(p))
                for i, p in enumerate(payloads[start : start + BATCH], start=start)
            ]
            self.shard.update(edge.UpdateOperation.upsert_points(points))
        self._unflushed += len(payloads)
        self._unindexed += len(payloads)
        every = self.settings.index_every()
        if every is not None and self._unindexed >= every:
            # Index what was written: searches (ingest's copy search among them) scan unindexed points
            # one by one. The engine adds them to the open segment's graph while it stays within
            # ``max_segment_points`` and starts a new segment past it, so no graph outgrows the bound
            # (a bounded peak of memory). A serving process answers nothing else meanwhile: say so.
            started, pending = time.perf_counter(), self._unindexed
            self.optimize()
            log.info(
                "indexed the %d points written since the last indexing in %.1f s",
                pending,
                time.perf_counter() - started,
            )
        elif self._unflushed >= FLUSH_EVERY_POINTS:
            self.shard.flush()
            self._unflushed = 0

    def _stored_ids(self, ids: list[str]) -> list[str]:
        # qdrant_edge's stub: List[PointId] (invariant) where the ids are only read
        records = self.shard.retrieve(ids, with_payload=False, with_vector=False)  # type: ignore[arg-type]
        return [str(r.id) for r in records]

    def content_hashes(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        return self._payload_values(record_ids, "content_hash")

    def sites_of(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        return self._payload_values(record_ids, "site")

    def _payload_values(self, record_ids: Sequence[str], key: str) -> dict[str, str | None]:
        """One payload key of each stored record (absent ids are left out), reading only that key."""
        by_point = {point_id(r): r for r in record_ids}
        ids: list[edge.PointId] = list(by_point)
        found: dict[str, str | None] = {}
        for start in range(0, len(ids), BATCH):
            for r in self.shard.retrieve(ids[start : start + BATCH], with_payload=[key], with_vector=False):
                found[by_point[str(r.id)]] = (r.payload or {}).get(key)
        return found

    def search_batch(
        self,
        vectors: np.ndarray,
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
        score_threshold: float | None = None,
    ) -> list[list[Hit]]:
        """Search by the plan for this filter (search/engine/plan.py); ``exact`` forces an exact scan.

        The plan taken is kept in ``last_plan`` and logged at DEBUG (for tests and benchmarks).
        """
        _check_k(k)
        matrix = self._matrix(vectors)
        flt = to_edge(filter)
        plan = Plan("exact") if exact else self.plan_for(filter, k)
        self.last_plan = plan
        rows = [row.tolist() for row in matrix]
        if plan.kind == "postfilter" and flt is not None:
            results = self._postfiltered(rows, k, flt, plan, ef, score_threshold)
        else:
            params = self._params(exact=plan.kind == "exact", ef=ef, filtered=plan.kind == "acorn")
            results = self._query(rows, k, flt, params, score_threshold, with_payload=True)
        log.debug("search plan %s", self.last_plan)
        if self.last_plan is not None:
            self.plans.record(self.last_plan)
        return [[_hit(p.payload, p.score) for p in points] for points in results]

    def search_views(
        self,
        queries: Sequence[dict[str, list[float]]],
        similar_by: dict[str, float],
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
    ) -> list[list[Hit]]:
        """Search named views: one view by its own vector, several fused by weighted RRF over each
        view's filtered top ``ecg.views.PREFETCH`` (Qdrant's prefetch). The filter applies in every
        view. A hit's score is the view's (cosine; Euclidean distance, lower is nearer) or the fusion's."""
        _check_k(k)
        manifest = self._manifest()
        used = _views_query(manifest.name, manifest.views, similar_by)
        flt = to_edge(filter)
        plan = Plan("exact") if exact else self.plan_for(filter, k)
        self.last_plan = plan
        params = self._params(exact=plan.kind == "exact", ef=ef, filtered=flt is not None)
        requests = []
        for q in queries:
            nearest = {
                v: edge.Query.Nearest(_query_view(q, v), using=_using(manifest.views, v)) for v in used
            }
            if len(used) == 1:
                request = edge.QueryRequest(
                    limit=k, query=next(iter(nearest.values())), filter=flt, params=params, with_payload=True
                )
            else:
                request = edge.QueryRequest(
                    limit=k,
                    prefetches=[
                        edge.Prefetch(limit=max(VIEW_PREFETCH, k), query=n, filter=flt, params=params)
                        for n in nearest.values()
                    ],
                    # the stub types this as Fusion, the binding takes its Fusion.Rrf variant
                    query=edge.Fusion.Rrf(k=VIEW_RRF_K, weights=list(used.values())),  # type: ignore[arg-type]
                    with_payload=True,
                )
            requests.append(request)
        return [[_hit(p.payload, p.score) for p in points] for points in self._execute(requests)]

    def search_reranked(
        self,
        queries: Sequence[dict[str, list[float]]],
        weights: Sequence[dict[str, float]],
        *,
        k: int,
        missing: dict[str, float],
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
    ) -> list[list[Hit]]:
        """The learned view's candidates rescored by Qdrant's nested prefetches (each other view's
        distance to the same candidates) and a score formula."""
        _check_k(k)
        manifest = self._manifest()
        held = manifest.views
        flt = to_edge(filter)
        plan = Plan("exact") if exact else self.plan_for(filter, k)
        self.last_plan = plan
        params = self._params(exact=plan.kind == "exact", ef=ef, filtered=flt is not None)
        limit = max(VIEW_PREFETCH, k)
        requests = []
        for q, w in zip(queries, weights, strict=True):
            used = _reranking(manifest.name, held, w)

            def nearest(view: str, q: dict[str, list[float]] = q) -> Any:
                return edge.Query.Nearest(_query_view(q, view), using=_using(held, view))

            base = edge.Prefetch(limit=limit, query=nearest(LEARNED_VIEW), filter=flt, params=params)
            rescored = [edge.Prefetch(limit=limit, query=nearest(v), prefetches=[base]) for v in used]
            terms = [edge.Expression.Variable("$score[0]")] + [
                edge.Expression.Mult(
                    [edge.Expression.Constant(-wv), edge.Expression.Variable(f"$score[{i}]")]
                )
                for i, wv in enumerate(used.values(), start=1)
            ]
            defaults = {f"$score[{i}]": missing[v] for i, v in enumerate(used, start=1)}
            requests.append(
                edge.QueryRequest(
                    limit=k,
                    prefetches=[base, *rescored],
                    query=edge.Formula(edge.Expression.Sum(terms), defaults=defaults),
                    with_payload=True,
                )
            )
        return [[_hit(p.payload, p.score) for p in points] for points in self._execute(requests)]

    def views(self) -> dict[str, ViewSpec]:
        return dict(self._manifest().views)

    def get_views(self, record_id: str) -> dict[str, list[float]]:
        """A stored record's named vectors (none in a collection made before views)."""
        records = self.shard.retrieve([point_id(record_id)], with_payload=False, with_vector=True)
        if not records:
            raise UnknownRecord(record_id)
        return _views_of(records[0].vector, self._manifest().views)

    def plan_for(self, filter: SearchFilter | None, k: int) -> Plan:
        """The plan a top-k search with this filter takes, from the payload indexes' estimate.

        ``count(exact=False)`` reads the payload indexes' cardinality estimates: no point is
        visited, so its cost does not grow with the matching count.
        """
        flt = to_edge(filter)
        total = self.shard.count(edge.CountRequest(exact=False))
        estimate = None if flt is None else self.shard.count(edge.CountRequest(exact=False, filter=flt))
        s = self.settings
        return choose(k=k, estimate=estimate, total=total, limits=s.plan_limits(), search_ef=s.search_ef)

    def _query(
        self,
        rows: list[list[float]],
        limit: int,
        flt: edge.Filter | None,
        params: edge.SearchParams,
        score_threshold: float | None,
        *,
        with_payload: bool,
    ) -> list[list[Any]]:
        requests = [
            edge.QueryRequest(
                limit=limit,
                query=edge.Query.Nearest(row),
                filter=flt,
                params=params,
                with_payload=with_payload,
                with_vector=False,
                score_threshold=score_threshold,
            )
            for row in rows
        ]
        return self._execute(requests)

    def _execute(self, requests: list[edge.QueryRequest]) -> list[list[Any]]:
        """One query alone, several as one batch: each request's points."""
        if len(requests) == 1:
            return [self.shard.query(requests[0])]
        return self.shard.query_batch(edge.QueryBatchRequest(requests))

    def _postfiltered(
        self,
        rows: list[list[float]],
        k: int,
        flt: edge.Filter,
        plan: Plan,
        ef: int | None,
        score_threshold: float | None,
    ) -> list[list[Any]]:
        """An unfiltered search for ``plan.limit`` candidates, then the filter on those candidates.

        The second step is an exact search restricted to the candidate ids and the filter: the
        engine checks the filter on at most ``limit`` points and scores them in float32. Rows where
        fewer than k candidates pass fall back to ACORN.
        """
        limit = plan.limit or k
        wide = self._params(exact=False, ef=max(ef or 0, plan.ef or 0, limit), filtered=False)
        found = self._query(rows, limit, None, wide, score_threshold, with_payload=False)
        narrow = edge.SearchParams(exact=True, quantization=edge.QuantizationSearchParams(ignore=True))
        requests = [
            edge.QueryRequest(
                limit=k,
                query=edge.Query.Nearest(row),
                filter=edge.Filter(
                    must=[edge.HasIdCondition(point_ids={p.id for p in points}), *(flt.must or [])],
                    must_not=flt.must_not,
                ),
                params=narrow,
                with_payload=True,
                with_vector=False,
                score_threshold=score_threshold,
            )
            for row, points in zip(rows, found, strict=True)
            if points
        ]
        kept = iter(
            self.shard.query_batch(edge.QueryBatchRequest(requests))
            if len(requests) > 1
            else [self.shard.query(r) for r in requests]
        )
        results = [next(kept) if points else [] for points in found]
        short = [i for i, points in enumerate(results) if len(points) < k]
        if short:
            acorn = self._params(exact=False, ef=ef, filtered=True)
            redo = self._query([rows[i] for i in short], k, flt, acorn, score_threshold, with_payload=True)
            for i, points in zip(short, redo, strict=True):
                results[i] = points
        self.last_plan = dataclasses.replace(plan, fallback=len(short))
        return results

    def get(self, record_id: str, *, sites: Sequence[str] | None = None) -> tuple[EcgPayload, np.ndarray]:
        if sites is None:
            records = self.shard.retrieve([point_id(record_id)], with_payload=True, with_vector=True)
        else:
            within = to_edge(SearchFilter(sites=list(sites) or [""]))
            assert within is not None and within.must is not None
            flt = edge.Filter(must=[edge.HasIdCondition(point_ids={point_id(record_id)}), *within.must])
            request = edge.ScrollRequest(limit=1, filter=flt, with_payload=True, with_vector=True)
            records, _ = self.shard.scroll(request)
        if not records:
            raise UnknownRecord(record_id)
        return EcgPayload.model_validate(records[0].payload), _vector_of(records[0].vector)

    def count(self, filter: SearchFilter | None = None) -> int:
        return self.shard.count(edge.CountRequest(exact=True, filter=to_edge(filter)))

    def info(self, filter: SearchFilter | None = None) -> CollectionInfo:
        manifest = self._manifest()
        facets = self.shard.facet(
            edge.FacetRequest(key="diagnoses", limit=FACET_LIMIT, exact=True, filter=to_edge(filter))
        )
        return CollectionInfo(
            name=self.name,
            count=self.count(filter),  # exact: points_count is an estimate while the WAL is replayed
            dim=manifest.dim,
            model_version=manifest.model_version,
            backend=self.backend,
            indexed=_unindexed_points(self.shard, manifest) == 0,
            diagnosis_counts={str(h.value): h.count for h in facets.hits},
        )

    def optimize(self) -> None:
        self.shard.optimize()
        self.shard.flush()
        self._unflushed = self._unindexed = 0

    def close(self) -> None:
        self._closed = True
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None

    def set_alias(self, alias: str, collection: str) -> None:
        """Rewrite ``aliases.json`` atomically; processes with the old target open keep it until reopened."""
        _check_name(alias)
        if (self.root / "collections" / alias).is_dir():
            raise StoreError(f"{alias!r} is a collection name; an alias must differ from every collection")
        if not (self.root / "collections" / collection / "manifest.json").is_file():
            raise StoreError(f"cannot point alias {alias!r} at missing collection {collection!r}")
        aliases = self._aliases() | {alias: collection}
        _write_atomic(self.root / "aliases.json", json.dumps(aliases, indent=2, sort_keys=True))

    def aliases(self) -> dict[str, str]:
        return dict(sorted(self._aliases().items()))

    def index_settings(self) -> IndexSettings:
        return self._manifest().settings

    # -- helpers --------------------------------------------------------------------------------
    def _manifest(self) -> CollectionManifest:
        if self.manifest is None:
            self.shard  # raises StoreUnavailable naming the collection  # noqa: B018
            raise AssertionError("unreachable")
        return self.manifest

    def _matrix(self, vectors: np.ndarray) -> np.ndarray:
        return _as_matrix(vectors, self._manifest().dim)

    def _params(self, *, exact: bool, ef: int | None, filtered: bool) -> edge.SearchParams:
        params: edge.SearchParams = search_params(self.settings, EDGE, exact=exact, ef=ef, filtered=filtered)
        return params

    # -- snapshots ------------------------------------------------------------------------------
    def _archived_signals(self) -> list[str]:
        """Content hashes of the points whose signal is kept in the archive (``archived``)."""
        found: list[str] = []
        offset = None
        while True:
            page, offset = self.shard.scroll(
                edge.ScrollRequest(
                    offset=offset, limit=1024, with_payload=["archived", "content_hash"], with_vector=False
                )
            )
            for r in page:
                assert r.payload is not None  # asked for with_payload
                if r.payload.get("archived"):
                    found.append(r.payload["content_hash"])
            if offset is None:
                return found

    def create_snapshot(self, directory: Path | None = None, archive: Path | None = None) -> SnapshotInfo:
        """Flush, then archive the collection and the kept signals of its archived points
        (``ecgsearch.search.engine.snapshots``): edge cannot snapshot.

        This process holds the shard's lock and edge optimizes only when asked, so the copied files are
        those of the flushed state. Default directory: ``<store>/snapshots``; default archive of kept
        signals: ``<store>/archive`` (give the service's ``--archive-path`` when it has one).
        """
        from ecgsearch.search.engine import snapshots

        manifest = self._manifest()
        self.shard.flush()
        return snapshots.pack(
            self._dir,
            directory or snapshots.default_directory(self.root),
            collection=self.name,
            backend=self.backend,
            count=self.count(),
            model_version=manifest.model_version,
            dim=manifest.dim,
            archive_root=archive or self.root / "archive",
            signals=self._archived_signals(),
        )

    def list_snapshots(self, directory: Path | None = None) -> list[SnapshotInfo]:
        """This collection's archives in ``directory`` (default ``<store>/snapshots``), oldest first."""
        from ecgsearch.search.engine import snapshots

        return snapshots.list_archives(directory or snapshots.default_directory(self.root), self.name)

    def _open_restored(self) -> int:
        """Name the unpacked collection after this one, open its shard; its point count."""
        restored = CollectionManifest.model_validate_json(self._manifest_path.read_text())
        _write_atomic(
            self._manifest_path, restored.model_copy(update={"name": self.name}).model_dump_json(indent=2)
        )
        self.manifest = self._read_manifest()
        self.settings = self.requested_settings or self._manifest().settings
        self._shard = self._open(lambda: edge.EdgeShard.load(str(self._shard_dir)))
        _index_payloads(self._shard)
        return self.count()

    def restore_snapshot(self, source: str | Path, archive: Path | None = None) -> SnapshotInfo:
        """Verify an archive, unpack it as this collection (which must not exist yet) and its kept
        signals into ``archive`` (default ``<store>/archive``), open it and check its count; on any
        failure nothing of it is left on disk."""
        from ecgsearch.search.engine import snapshots

        if self.manifest is not None:
            raise StoreError(
                f"collection {self.name!r} exists in {self.root}; restore into a new collection or store"
            )
        with snapshots.restoring(Path(source), self._dir, archive or self.root / "archive") as meta:
            try:  # the shard is closed before the restore's files are removed
                count = self._open_restored()
                if count != meta["count"]:
                    raise StoreError(
                        f"restored {count} points from {source}, but the snapshot recorded {meta['count']}"
                    )
            except BaseException:
                if self._shard is not None:
                    self._shard.close()
                self._shard, self.manifest = None, None
                raise
        return snapshots.SnapshotInfo(
            name=Path(source).name,
            location=str(self._dir),
            collection=self.name,
            backend=self.backend,
            created=meta["created"],
            count=count,
            model_version=self._manifest().model_version,
            signals=meta["signals"],
            note=snapshots.SECRET_NOTE,
        )


LOCAL_MODE_WARNINGS = ("Payload indexes have no effect in the local Qdrant", "Local mode performs exact")


class ServerStore(_Backend):
    """Qdrant server or cluster through qdrant-client; also its local mode (``in_memory``, ``local_path``).

    Model version and dim live in the collection's metadata; aliases are Qdrant's own. For a
    3-node cluster create collections with ``shard_number=6, replication_factor=2``. Local mode is
    brute force and ignores HNSW, quantization and payload indexes: it checks semantics, not speed.

    Filtered searches are planned by the server itself, per segment, from its payload-index
    cardinality estimates (exact below ``full_scan_threshold_kb`` of matching vectors, else filtered
    HNSW with ACORN); the embedded store's plan (search/engine/plan.py) is not applied here. That threshold
    is in bytes and per segment: size ``full_scan_threshold_kb`` from the matching points a rare
    filter keeps per segment (1 KB each at 256-d float32), or a rare diagnosis outgrows it.
    """

    backend = "qdrant-server"

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        collection: str = "ecgs",
        shard_number: int = 1,
        replication_factor: int = 1,
        prefer_grpc: bool = True,
        *,
        settings: IndexSettings | None = None,
        client: QdrantClient | None = None,
        local_path: str | Path | None = None,
        in_memory: bool = False,
        timeout: int = 30,
    ) -> None:
        self.name = _check_name(collection)
        self.plans = PlanTally()  # stays empty: the server plans its searches itself
        self.requested_settings = settings
        self.settings = settings or IndexSettings()
        self.shard_number, self.replication_factor = shard_number, replication_factor
        if client is None:
            if local_path is not None:
                try:
                    client = QdrantClient(path=str(local_path))
                except RuntimeError as error:  # qdrant-client's lock on the folder
                    raise StoreUnavailable(
                        f"store {local_path} is already open in another process or client"
                    ) from error
            elif in_memory:
                client = QdrantClient(location=":memory:")
            elif url is not None:
                client = QdrantClient(url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout)
            else:
                raise ValueError("ServerStore needs url, local_path, in_memory or client")
        self.client = client
        options = client.init_options  # qdrant-client's public record of how it was opened
        self._local = options.get("location") == ":memory:" or bool(options.get("path"))
        if self._local:
            self.backend = "qdrant-local"
        self._dim: int | None = None
        self._closed = False
        self._views: dict[str, ViewSpec] | None = None

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run one client call; connection failures become StoreUnavailable.

        Local mode warns that payload indexes and HNSW settings do nothing there; true and known, so
        those two warnings are silenced for the call alone (no process-wide filter).
        """
        if self._closed:
            raise StoreUnavailable(f"store {self.client.init_options.get('url') or self.name} is closed")
        try:
            if not self._local:
                return fn()
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message="Payload indexes have no effect in the local Qdrant"
                )
                warnings.filterwarnings("ignore", message="Local mode performs exact")
                return fn()
        except (ResponseHandlingException, ConnectionError, grpc.RpcError) as error:
            where = self.client.init_options.get("url")
            raise StoreUnavailable(f"Qdrant at {where} is unreachable: {error}") from error
        except ValueError as error:  # local mode's word for a server's 404
            if self._local and str(error) == f"Collection {self.name} not found":
                raise StoreUnavailable(
                    f"collection {self.name!r} does not exist; ingest ECGs first"
                ) from error
            raise
        except UnexpectedResponse as error:
            if error.status_code == 404:
                raise StoreUnavailable(
                    f"collection {self.name!r} does not exist; ingest ECGs first"
                ) from error
            raise

    def _manifest(self) -> CollectionManifest:
        if not self._call(lambda: self.client.collection_exists(self.name)):
            raise StoreUnavailable(f"collection {self.name!r} does not exist; ingest ECGs first")
        info = self._call(lambda: self.client.get_collection(self.name))
        meta = info.config.metadata or {}
        vectors = info.config.params.vectors
        dim = int(meta.get("dim", getattr(vectors, "size", 0)))
        return CollectionManifest(
            name=self.name,
            dim=dim,
            model_version=str(meta.get("model_version", "")),
            created=meta.get("created") or datetime.now(UTC),
            settings=IndexSettings.model_validate(meta["settings"]) if "settings" in meta else self.settings,
            views={v: ViewSpec.model_validate(spec) for v, spec in (meta.get("views") or {}).items()},
        )

    def _dimension(self) -> int:
        if self._dim is None:
            self._dim = self._manifest().dim
        return self._dim

    def create_collection(
        self, *, dim: int, model_version: str, views: dict[str, ViewSpec] | None = None
    ) -> None:
        if self._call(lambda: self.client.collection_exists(self.name)):
            manifest = self._manifest()
            _check_match(manifest, dim, model_version, self.requested_settings)
            _check_views(manifest, views)
            return
        s = self.settings
        meta = {
            "dim": dim,
            "model_version": model_version,
            "created": datetime.now(UTC).isoformat(),
            "settings": s.model_dump(),
            "views": {v: spec.model_dump() for v, spec in (views or {}).items()},
        }
        made = build(s, CLIENT, vector_dim=_largest_dim(dim, views))
        served = qm.VectorParams(  # int8 for the served vector only, as the embedded store
            size=dim, distance=qm.Distance.COSINE, quantization_config=made.quantization
        )
        self._call(
            lambda: self.client.create_collection(
                self.name,
                vectors_config={"": served, **_client_views(views)} if views else served,
                shard_number=self.shard_number,
                replication_factor=self.replication_factor,
                hnsw_config=made.hnsw,
                optimizers_config=made.optimizers,
                metadata=meta,
            )
        )
        for field_name, schema in payload_schemas(PAYLOAD_INDEXES, CLIENT).items():
            self._call(
                partial(
                    self.client.create_payload_index, self.name, field_name, field_schema=schema, wait=True
                )
            )
        self._dim = dim
        self._views = dict(views or {})

    def views(self) -> dict[str, ViewSpec]:
        return dict(self._held_views())

    def _held_views(self) -> dict[str, ViewSpec]:
        if self._views is None:
            self._views = self._manifest().views
        return self._views

    def upsert(
        self,
        payloads: Sequence[EcgPayload],
        vectors: np.ndarray,
        named: Sequence[dict[str, list[float]]] | None = None,
    ) -> None:
        matrix = _as_matrix(vectors, self._dimension())
        if len(payloads) != len(matrix):
            raise ValueError(f"{len(payloads)} payloads but {len(matrix)} vectors")
        rows = _named_rows(matrix, named, self._held_views())
        for start in range(0, len(payloads), BATCH):
            points = [
                qm.PointStruct(id=point_id(p.record_id), vector=rows[i], payload=_payload_dict(p))
                for i, p in enumerate(payloads[start : start + BATCH], start=start)
            ]
            self._call(partial(self.client.upsert, self.name, points=points, wait=True))

    def _stored_ids(self, ids: list[str]) -> list[str]:
        records = self._call(
            lambda: self.client.retrieve(self.name, ids, with_payload=False, with_vectors=False)
        )
        return [str(r.id) for r in records]

    def content_hashes(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        return self._payload_values(record_ids, "content_hash")

    def sites_of(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        return self._payload_values(record_ids, "site")

    def _payload_values(self, record_ids: Sequence[str], key: str) -> dict[str, str | None]:
        """One payload key of each stored record (absent ids are left out), reading only that key."""
        by_point = {point_id(r): r for r in record_ids}
        ids, found = list(by_point), {}
        for start in range(0, len(ids), BATCH):
            part = ids[start : start + BATCH]
            records = self._call(
                partial(self.client.retrieve, self.name, part, with_payload=[key], with_vectors=False)
            )
            found.update({by_point[str(r.id)]: (r.payload or {}).get(key) for r in records})
        return found

    def search_batch(
        self,
        vectors: np.ndarray,
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
        score_threshold: float | None = None,
    ) -> list[list[Hit]]:
        _check_k(k)
        matrix = _as_matrix(vectors, self._dimension())
        flt = to_client(filter)
        params = search_params(self.settings, CLIENT, exact=exact, ef=ef, filtered=flt is not None)
        requests = [
            qm.QueryRequest(
                query=row.tolist(),
                filter=flt,
                params=params,
                limit=k,
                with_payload=True,
                score_threshold=score_threshold,
            )
            for row in matrix
        ]
        responses = self._call(lambda: self.client.query_batch_points(self.name, requests))
        return [[_hit(p.payload, p.score) for p in r.points] for r in responses]

    def search_views(
        self,
        queries: Sequence[dict[str, list[float]]],
        similar_by: dict[str, float],
        *,
        k: int,
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
    ) -> list[list[Hit]]:
        """As ``EdgeStore.search_views``: one view, or a weighted-RRF blend of filtered prefetches."""
        _check_k(k)
        held = self._held_views()  # read once per store, as upsert does: no manifest round trips per search
        used = _views_query(self.name, held, similar_by)
        flt = to_client(filter)
        params = qm.SearchParams(hnsw_ef=ef or self.settings.search_ef, exact=exact)
        requests = []
        for q in queries:
            rows = {v: _query_view(q, v) for v in used}
            if len(used) == 1:
                ((view, row),) = rows.items()
                request = qm.QueryRequest(
                    query=row, using=_using(held, view), filter=flt, params=params, limit=k, with_payload=True
                )
            else:
                request = qm.QueryRequest(
                    prefetch=[
                        qm.Prefetch(
                            query=row,
                            using=_using(held, v),
                            filter=flt,
                            params=params,
                            limit=max(VIEW_PREFETCH, k),
                        )
                        for v, row in rows.items()
                    ],
                    query=qm.RrfQuery(rrf=qm.Rrf(k=VIEW_RRF_K, weights=list(used.values()))),
                    limit=k,
                    with_payload=True,
                )
            requests.append(request)
        responses = self._call(lambda: self.client.query_batch_points(self.name, requests))
        return [[_hit(p.payload, p.score) for p in r.points] for r in responses]

    def search_reranked(
        self,
        queries: Sequence[dict[str, list[float]]],
        weights: Sequence[dict[str, float]],
        *,
        k: int,
        missing: dict[str, float],
        filter: SearchFilter | None = None,
        exact: bool = False,
        ef: int | None = None,
    ) -> list[list[Hit]]:
        """As ``EdgeStore.search_reranked``: nested prefetches and a score formula."""
        _check_k(k)
        held = self._held_views()
        flt = to_client(filter)
        params = qm.SearchParams(hnsw_ef=ef or self.settings.search_ef, exact=exact)
        limit = max(VIEW_PREFETCH, k)
        requests = []
        for q, w in zip(queries, weights, strict=True):
            used = _reranking(self.name, held, w)
            base = qm.Prefetch(
                query=_query_view(q, LEARNED_VIEW),
                using=_using(held, LEARNED_VIEW),
                filter=flt,
                params=params,
                limit=limit,
            )
            rescored = [
                qm.Prefetch(query=_query_view(q, v), using=_using(held, v), prefetch=[base], limit=limit)
                for v in used
            ]
            terms: list[Any] = ["$score[0]"] + [
                qm.MultExpression(mult=[-wv, f"$score[{i}]"]) for i, wv in enumerate(used.values(), start=1)
            ]
            requests.append(
                qm.QueryRequest(
                    prefetch=[base, *rescored],
                    query=qm.FormulaQuery(
                        formula=qm.SumExpression(sum=terms),
                        defaults={f"$score[{i}]": missing[v] for i, v in enumerate(used, start=1)},
                    ),
                    limit=k,
                    with_payload=True,
                )
            )
        responses = self._call(lambda: self.client.query_batch_points(self.name, requests))
        return [[_hit(p.payload, p.score) for p in r.points] for r in responses]

    def get_views(self, record_id: str) -> dict[str, list[float]]:
        records = self._call(
            lambda: self.client.retrieve(
                self.name, [point_id(record_id)], with_payload=False, with_vectors=True
            )
        )
        if not records:
            raise UnknownRecord(record_id)
        return _views_of(records[0].vector, self._held_views())

    def get(self, record_id: str, *, sites: Sequence[str] | None = None) -> tuple[EcgPayload, np.ndarray]:
        if sites is None:
            records = self._call(
                lambda: self.client.retrieve(
                    self.name, [point_id(record_id)], with_payload=True, with_vectors=True
                )
            )
        else:
            within = to_client(SearchFilter(sites=list(sites) or [""]))
            assert within is not None and isinstance(within.must, list)
            flt = qm.Filter(must=[qm.HasIdCondition(has_id=[point_id(record_id)]), *within.must])
            records, _ = self._call(
                lambda: self.client.scroll(
                    self.name, scroll_filter=flt, limit=1, with_payload=True, with_vectors=True
                )
            )
        if not records:
            raise UnknownRecord(record_id)
        return EcgPayload.model_validate(records[0].payload), _vector_of(records[0].vector)

    def count(self, filter: SearchFilter | None = None) -> int:
        result = self._call(lambda: self.client.count(self.name, count_filter=to_client(filter), exact=True))
        return int(result.count)

    def info(self, filter: SearchFilter | None = None) -> CollectionInfo:
        manifest = self._manifest()
        info = self._call(lambda: self.client.get_collection(self.name))
        facets = self._call(
            lambda: self.client.facet(
                self.name, "diagnoses", facet_filter=to_client(filter), limit=FACET_LIMIT, exact=True
            )
        )
        return CollectionInfo(
            name=self.name,
            count=self.count(filter),
            dim=manifest.dim,
            model_version=manifest.model_version,
            backend=self.backend,
            indexed=info.status == qm.CollectionStatus.GREEN,
            diagnosis_counts={str(h.value): h.count for h in facets.hits},
        )

    def optimize(self, timeout_s: float = 3600.0) -> None:
        """Wait until the server has finished indexing (it optimizes on its own)."""
        deadline = time.monotonic() + timeout_s
        while self._call(lambda: self.client.get_collection(self.name)).status != qm.CollectionStatus.GREEN:
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"collection {self.name!r} still indexing after {timeout_s:.0f} s")
            time.sleep(1.0)

    def close(self) -> None:
        self._closed = True
        self.client.close()

    def set_alias(self, alias: str, collection: str) -> None:
        """Switch (or create) the alias in one request, so readers never see it missing."""
        _check_name(alias)
        aliases = self._call(lambda: self.client.get_aliases()).aliases
        operations: list[Any] = [
            qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias))
            for a in aliases
            if a.alias_name == alias
        ]
        operations.append(
            qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=collection, alias_name=alias))
        )
        self._call(lambda: self.client.update_collection_aliases(change_aliases_operations=operations))

    def aliases(self) -> dict[str, str]:
        found = self._call(lambda: self.client.get_aliases()).aliases
        return dict(sorted((a.alias_name, a.collection_name) for a in found))

    def index_settings(self) -> IndexSettings:
        return self._manifest().settings

    # -- snapshots ------------------------------------------------------------------------------
    def _snapshot_call(self, fn: Callable[[], Any]) -> Any:
        try:
            return self._call(fn)
        except NotImplementedError:
            raise StoreError(
                "qdrant-client's local mode has no snapshots; snapshot a Qdrant server (--qdrant-url)"
            ) from None

    def create_snapshot(self, directory: Path | None = None, archive: Path | None = None) -> SnapshotInfo:
        """Qdrant's own snapshot of the collection, kept on the server (``directory`` is not used).

        It holds the collection only: back up the service's ``--archive-path`` (kept signals of pushed
        ECGs) beside it; ``archive`` is not used."""
        from ecgsearch.search.api import SnapshotInfo

        count = self.count()
        made = self._snapshot_call(lambda: self.client.create_snapshot(self.name, wait=True))
        return SnapshotInfo(
            name=made.name,
            location=made.name,
            collection=self.name,
            backend=self.backend,
            created=made.creation_time,
            size_bytes=made.size,
            count=count,
            model_version=self._manifest().model_version,
        )

    def list_snapshots(self, directory: Path | None = None) -> list[SnapshotInfo]:
        """The collection's snapshots on the server, oldest first."""
        from ecgsearch.search.api import SnapshotInfo

        found = self._snapshot_call(lambda: self.client.list_snapshots(self.name))
        rows = [
            SnapshotInfo(
                name=d.name,
                location=d.name,
                collection=self.name,
                backend=self.backend,
                created=d.creation_time,
                size_bytes=d.size,
            )
            for d in found
        ]
        return sorted(rows, key=lambda i: (i.created is None, i.created))

    def restore_snapshot(self, source: str | Path, archive: Path | None = None) -> SnapshotInfo:
        """Recover this collection from a snapshot location the server can read (``file://`` or URL);
        ``archive`` is not used (the server's snapshot holds no kept signals)."""
        from ecgsearch.search.api import SnapshotInfo

        location = str(source)
        self._snapshot_call(lambda: self.client.recover_snapshot(self.name, location=location, wait=True))
        self._dim = None
        manifest = self._manifest()
        return SnapshotInfo(
            name=location.rsplit("/", 1)[-1],
            location=location,
            collection=self.name,
            backend=self.backend,
            count=self.count(),
            model_version=manifest.model_version,
        )


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


DEFAULT_HOME = "~/.ecgsearch"


def default_store_path(home: str | Path | None = None) -> Path:
    """``<home>/store``; commands pass ``$ECGSEARCH_HOME`` (read at the edge), else ``~/.ecgsearch``."""
    return Path(home if home is not None else DEFAULT_HOME).expanduser() / "store"


def open_store(
    *,
    path: str | Path | None = None,
    url: str | None = None,
    api_key: str | None = None,
    collection: str = "ecgs",
    settings: IndexSettings | None = None,
    home: str | Path | None = None,
    shard_number: int = 1,
    replication_factor: int = 1,
    local: bool = False,
) -> Store:
    """The one place that picks a backend: ``url`` -> ServerStore, else the embedded store at ``path``.

    ``shard_number`` and ``replication_factor`` lay out a new collection on a Qdrant cluster; an
    embedded store is one shard on one machine and refuses them. ``local`` opens qdrant-client's local
    mode instead (the ServerStore code path without a server: at ``path`` on disk, else in memory), for
    tests and small checks; it searches by brute force.
    """
    if path is not None and url is not None:
        raise ValueError("give either path (embedded store) or url (Qdrant server), not both")
    if local:
        if url is not None:
            raise ValueError("local mode runs without a server: give path or nothing, not url")
        return ServerStore(collection=collection, settings=settings, local_path=path, in_memory=path is None)
    if url is not None:
        return ServerStore(
            url=url,
            api_key=api_key,
            collection=collection,
            settings=settings,
            shard_number=shard_number,
            replication_factor=replication_factor,
        )
    if (shard_number, replication_factor) != (1, 1):
        raise ValueError(
            "shard_number and replication_factor need a Qdrant server (url); embedded is one shard"
        )
    return EdgeStore(path if path is not None else default_store_path(home), collection, settings)
