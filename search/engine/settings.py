"""Index and search settings, and their one translation into each engine's objects.

``IndexSettings`` says what a collection is built and searched with, in the project's words. Each
setting's meaning is written once, below, as engine-neutral keyword arguments; ``EDGE``
(qdrant-edge-py) and ``CLIENT`` (qdrant-client) only name the class each engine spells that idea
with (``HnswIndexConfig`` vs ``HnswConfigDiff``, int8 given bare vs wrapped in ``ScalarQuantization``,
a keyword index as an enum vs a params object). ``filters.py`` does the same for filters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import qdrant_edge as edge
from pydantic import BaseModel, ConfigDict, Field
from qdrant_client import models as qm

from ecgsearch.ecg.schema import IndexKind
from ecgsearch.search.engine.plan import PlanLimits


class IndexSettings(BaseModel):
    """Index and search settings of a collection; build-time ones are fixed when it is created.

    Defaults favour recall, as clinical search should: a denser graph (m 32, ef_construct 256), ef 512
    at search (at 300k, ef 256 left unfiltered and by-record searches at 0.994-0.995 recall@10 and ef
    512 reached 0.998-1.000 for 1.2-1.5x the latency: results/recall_300k_ef.json), and ACORN (max
    selectivity 1.0) whenever a filtered search walks the graph, since plain filtered HNSW loses
    recall on filters that keep a large share of points. The
    embedded store plans each filtered search by the filter's estimated matching count
    (search/engine/plan.py): an exact scan up to ``exact_max_points`` (a count, so it holds at any
    collection size), an oversampled unfiltered search post-filtered for filters keeping at least
    ``postfilter_min_fraction``, ACORN between; defaults from results/recall_1m.json, the exact bound
    raised from 100,000 to 250,000 after ACORN over 158,000 matching points at 4M took p50 70 ms for
    recall@10 0.960 (results/recall_4m_one_segment.json), where an exact scan costs ~15 ms per 100,000 points
    (docs/results.md, the search plan) and is exact by construction. A near-total
    filter (at least ``hnsw_min_fraction``, such as the service's copy rule) is the engine's own
    filtered HNSW without ACORN (results/recall_200k_service.json). With ACORN
    on, Qdrant's extra per-payload-value links (``payload_m``) add build time (+30 % at 100k) and
    no recall, so they are off. Vectors are int8-quantized with float32 rescoring: at 1M it built
    2.3x faster than float32 and reached recall@10 0.997 unfiltered at ef 256, where float32
    reached 0.990. A collection is indexed in segments of at most ``max_segment_points`` (1M: the
    size whose recall through the service is measured >= 0.99 in every class,
    results/recall_1m_service.json): one graph of 4M points lost recall at the same ef and held
    2.2 GB of heap per million while it was built (results/recall_4m_one_segment.json); in 1M
    segments every class reached >= 0.996 and the heap 1.06 GB per million (results/recall_4m.json).
    The embedded store indexes what it has written every ``index_after_points`` (50,000): every search
    scans the points not yet indexed one by one, and ingest searches once per ECG for its copies, so a
    store that indexed only at the segment bound made each ECG's copy search slower as the segment
    filled (results/ingest_prefill_200k_before.json: 200,000 unindexed points); the engine adds the
    newly indexed points to the open segment's graph up to the bound (Qdrant's incremental HNSW), for
    51% more build CPU at 1M (results/recall_1m_indexed_every_50k.json).
    ``ecgsearch bench recall`` measures what these settings give (results/recall_*.json).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hnsw_m: int = Field(default=32, ge=4, le=128, description="HNSW edges per node")
    hnsw_ef_construct: int = Field(default=256, ge=8, le=2048, description="HNSW build candidates")
    search_ef: int = Field(default=512, ge=1, le=4096, description="HNSW search candidates when not given")
    quantization: bool = Field(default=True, description="int8 scalar quantization (4x less vector RAM)")
    rescore: bool = Field(default=True, description="rescore quantized candidates with float32 vectors")
    oversampling: float = Field(default=2.0, ge=1.0, le=16.0, description="quantized candidates per result")
    acorn: bool = Field(default=True, description="ACORN for filtered HNSW search (recall on broad filters)")
    acorn_max_selectivity: float | None = Field(
        default=1.0, gt=0.0, le=1.0, description="ACORN only for filters keeping at most this fraction"
    )
    full_scan_threshold_kb: int = Field(
        default=10_000, ge=0, description="below this many KB of matching vectors Qdrant searches exactly"
    )
    indexing_threshold_kb: int = Field(
        default=1, ge=1, description="segments above this size get an HNSW graph when optimized"
    )
    payload_m: int = Field(
        default=0, ge=0, le=128, description="edges of extra per-payload-value HNSW links (0: none)"
    )
    exact_max_points: int = Field(
        default=250_000,
        ge=0,
        description="filters matching at most this many points (estimated) are searched exactly",
    )
    postfilter_min_fraction: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="filters keeping at least this fraction post-filter an unfiltered HNSW search",
    )
    postfilter_safety: float = Field(
        default=10.0, ge=1.0, le=100.0, description="post-filter candidates: k / fraction x this"
    )
    postfilter_max_limit: int = Field(
        default=1000, ge=1, le=10_000, description="most candidates a post-filtered search asks for"
    )
    hnsw_min_fraction: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="filters keeping at least this fraction run as the engine's filtered HNSW (no ACORN)",
    )
    max_segment_points: int | None = Field(
        default=1_000_000,
        ge=1000,
        description="points per segment: a larger collection is indexed as several bounded segments",
    )
    index_after_points: int | None = Field(
        default=50_000,
        ge=1000,
        description="points the embedded store writes before it indexes them (searches scan the rest)",
    )

    def index_every(self) -> int | None:
        """Points an embedded store writes between two indexings: ``index_after_points``, and never
        more than a segment holds."""
        given = [n for n in (self.index_after_points, self.max_segment_points) if n is not None]
        return min(given) if given else None

    def max_segment_kb(self, vector_dim: int) -> int | None:
        """The engine's segment bound (KB of float32 vectors of the largest named vector), with 10 %
        headroom so a segment closed by the upsert that crossed the bound is still whole."""
        if self.max_segment_points is None:
            return None
        return math.ceil(self.max_segment_points * 1.1 * vector_dim * 4 / 1024)

    def plan_limits(self) -> PlanLimits:
        """The search-plan thresholds (search/engine/plan.py) of this collection."""
        return PlanLimits(
            exact_max_points=self.exact_max_points,
            postfilter_min_fraction=self.postfilter_min_fraction,
            postfilter_safety=self.postfilter_safety,
            postfilter_max_limit=self.postfilter_max_limit,
            hnsw_min_fraction=self.hnsw_min_fraction,
        )


# The neutral meaning of each fixed choice, shared by both engines.
class _Int8(TypedDict):
    quantile: float
    always_ram: bool


class _Integer(TypedDict):
    lookup: bool
    range: bool


class _Tenant(TypedDict):
    is_tenant: bool


INT8 = _Int8(quantile=0.99, always_ram=True)  # int8 scalar quantization, kept in RAM
INTEGER_INDEX = _Integer(lookup=True, range=True)  # ages: equality and ranges
TENANT_INDEX = _Tenant(is_tenant=True)  # keyword, points stored grouped by site


@dataclass(frozen=True)
class Engine:
    """One engine's class for each index and search idea; no setting's value is chosen here."""

    name: str
    hnsw: Callable[..., Any]
    optimizers: Callable[..., Any]
    int8: Callable[[], Any]
    payload: Mapping[IndexKind, Callable[[], Any]]
    search: Callable[..., Any]
    quantized: Callable[..., Any]
    acorn: Callable[..., Any]


EDGE = Engine(
    name="qdrant-edge",
    hnsw=edge.HnswIndexConfig,
    optimizers=edge.EdgeOptimizersConfig,
    int8=lambda: edge.ScalarQuantizationConfig(type=edge.ScalarType.Int8, **INT8),
    payload={
        "keyword": lambda: edge.PayloadSchemaType.Keyword,
        "float": lambda: edge.PayloadSchemaType.Float,
        "bool": lambda: edge.PayloadSchemaType.Bool,
        "integer": lambda: edge.IntegerIndexParams(**INTEGER_INDEX),
        "tenant": lambda: edge.KeywordIndexParams(**TENANT_INDEX),
    },
    search=edge.SearchParams,
    quantized=edge.QuantizationSearchParams,
    acorn=edge.AcornSearchParams,
)
CLIENT = Engine(
    name="qdrant-client",
    hnsw=qm.HnswConfigDiff,
    optimizers=qm.OptimizersConfigDiff,
    int8=lambda: qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, **INT8)),
    payload={
        "keyword": lambda: qm.PayloadSchemaType.KEYWORD,
        "float": lambda: qm.PayloadSchemaType.FLOAT,
        "bool": lambda: qm.PayloadSchemaType.BOOL,
        "integer": lambda: qm.IntegerIndexParams(type=qm.IntegerIndexType.INTEGER, **INTEGER_INDEX),
        "tenant": lambda: qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, **TENANT_INDEX),
    },
    search=qm.SearchParams,
    quantized=qm.QuantizationSearchParams,
    acorn=qm.AcornSearchParams,
)


@dataclass(frozen=True)
class Build:
    """What a new collection is made with, in one engine's objects."""

    hnsw: Any
    optimizers: Any
    quantization: Any | None


def build(s: IndexSettings, engine: Engine, *, vector_dim: int) -> Build:
    """The graph, optimizer and quantization settings of a new collection whose largest named vector
    has ``vector_dim`` dimensions (the engine bounds a segment by that vector's bytes)."""
    return Build(
        hnsw=engine.hnsw(
            m=s.hnsw_m,
            ef_construct=s.hnsw_ef_construct,
            full_scan_threshold=s.full_scan_threshold_kb,
            payload_m=s.payload_m,
        ),
        optimizers=engine.optimizers(
            indexing_threshold=s.indexing_threshold_kb, max_segment_size=s.max_segment_kb(vector_dim)
        ),
        quantization=engine.int8() if s.quantization else None,
    )


def payload_schemas(indexes: Mapping[str, IndexKind], engine: Engine) -> dict[str, Any]:
    """Payload field -> the engine's index schema of its kind."""
    return {field_name: engine.payload[kind]() for field_name, kind in indexes.items()}


def search_params(s: IndexSettings, engine: Engine, *, exact: bool, ef: int | None, filtered: bool) -> Any:
    """One search's parameters: ``ef`` (else the collection's), quantized candidates rescored in float32
    when the collection is quantized, ACORN when a filter walks the graph."""
    return engine.search(
        hnsw_ef=ef or s.search_ef,
        exact=exact,
        quantization=engine.quantized(rescore=s.rescore, oversampling=s.oversampling)
        if s.quantization
        else None,
        acorn=(
            engine.acorn(enable=True, max_selectivity=s.acorn_max_selectivity)
            if s.acorn and filtered
            else None
        ),
    )
