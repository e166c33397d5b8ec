"""What the search service does, as plain Python: validate a query, encode it, search, summarise.

No grpc here: the gRPC servicer (``server.py``), the benchmarks and any later ingest-through-the-service
path call these methods, so every transport validates and answers the same way. Errors are the domain's
own (``InvalidQuery``, ``UnknownRecord``, ``StoreUnavailable``, ``SignalError``, ``DeadlineExceeded``);
mapping them to status codes is the transport's job.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ValidationError

from ecgsearch.encoder import signals
from ecgsearch.search import codes
from ecgsearch.search.schema import MAX_K, CollectionInfo, EcgPayload, Hit, InvalidQuery, SearchFilter

if TYPE_CHECKING:  # the client imports this module for its request types: keep it light
    from ecgsearch.export.card import ModelCard
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.store import Store

DEFAULT_K = 10
MAX_BATCH = 256
INFO_TTL_S = 5.0


class DeadlineExceeded(TimeoutError):
    """The caller's deadline passed before the expensive part of a request (maps to DEADLINE_EXCEEDED)."""


@dataclass(frozen=True)
class SearchOptions:
    """The parts every search shares; validated by ``SearchService``."""

    filter: SearchFilter = field(default_factory=SearchFilter)
    k: int = DEFAULT_K
    score_threshold: float | None = None
    exact: bool = False
    with_summary: bool = False


@dataclass(frozen=True)
class EcgQuery:
    """A raw ECG as the caller has it: (n_leads, n_samples) in its own rate, units and lead order."""

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    units: tuple[str, ...] | str = "mV"


@dataclass(frozen=True)
class Query:
    """One query of a batch: exactly one of record_id, ecg, vector."""

    options: SearchOptions = field(default_factory=SearchOptions)
    record_id: str | None = None
    ecg: EcgQuery | None = None
    vector: np.ndarray | None = None


class DiagnosisConcentration(BaseModel):
    """How one diagnosis concentrates among the neighbours compared with the whole collection."""

    code: str
    description: str
    count: int
    fraction: float
    base_rate: float
    enrichment: float
    in_query: bool = False


class NeighbourhoodSummary(BaseModel):
    """Per diagnosis among the k neighbours: the evidence a clinician reads off a search."""

    n_neighbours: int
    collection_count: int
    diagnoses: list[DiagnosisConcentration]


class SearchResult(BaseModel):
    """Hits best first, and the neighbourhood summary when asked for."""

    hits: list[Hit]
    summary: NeighbourhoodSummary | None = None


class SearchService:
    """Search over one store with one embedder; thread-safe as long as the store and embedder are."""

    def __init__(self, store: Store, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder
        self._info: CollectionInfo | None = None
        self._info_at = 0.0
        self._lock = threading.Lock()
        info = self.info(fresh=True)
        if info.model_version != embedder.version or info.dim != embedder.dim:
            from ecgsearch.search.store import ModelMismatch

            raise ModelMismatch(
                f"collection {info.name!r} holds {info.dim}-d vectors of model {info.model_version}, "
                f"but the server encodes with {embedder.dim}-d model {embedder.version} ({embedder.path})"
            )

    # --- queries ---------------------------------------------------------------------------------

    def search_by_record(
        self, record_id: str, options: SearchOptions | None = None, *, deadline: float | None = None
    ) -> SearchResult:
        """Neighbours of a stored record, never the record itself."""
        options, vector, query_codes = self._stored_query(
            record_id, self.validate(options or SearchOptions())
        )
        return self._search(vector, options, deadline, query_codes=query_codes)

    def search_by_ecg(
        self, ecg: EcgQuery, options: SearchOptions | None = None, *, deadline: float | None = None
    ) -> SearchResult:
        """Prepare the raw ECG exactly like stored ones, encode it, search."""
        options = self.validate(options or SearchOptions())
        (vector,) = self.encode([ecg], deadline=deadline)
        return self._search(vector, options, deadline)

    def search_by_vector(
        self,
        vector: np.ndarray | Sequence[float],
        options: SearchOptions | None = None,
        *,
        deadline: float | None = None,
    ) -> SearchResult:
        """Neighbours of an embedding of this collection's model (normalised here)."""
        options = self.validate(options or SearchOptions())
        return self._search(self.check_vector(vector), options, deadline)

    def batch(self, queries: Sequence[Query], *, deadline: float | None = None) -> list[SearchResult]:
        """Several queries in request order; ECGs are encoded in one model call. Any bad query fails all."""
        if not queries:
            raise InvalidQuery("empty batch")
        if len(queries) > MAX_BATCH:
            raise InvalidQuery(f"{len(queries)} queries in one batch; at most {MAX_BATCH}")
        plans: list[tuple[SearchOptions, np.ndarray | None, list[str] | None]] = []
        ecgs: list[EcgQuery] = []
        names: list[str] = []
        for i, query in enumerate(queries):
            try:
                kinds = [query.record_id is not None, query.ecg is not None, query.vector is not None]
                if sum(kinds) != 1:
                    raise InvalidQuery("give exactly one of record_id, ecg, vector")
                options = self.validate(query.options)
                if query.record_id is not None:
                    plans.append(self._stored_query(query.record_id, options))
                elif query.ecg is not None:
                    ecgs.append(query.ecg)
                    names.append(f"query[{i}]")
                    plans.append((options, None, None))
                else:
                    plans.append((options, self.check_vector(query.vector), None))
            except (InvalidQuery, signals.SignalError) as exc:
                raise type(exc)(*_prefixed(exc, i)) from exc
        encoded = iter(self.encode(ecgs, names=names, deadline=deadline)) if ecgs else iter(())
        results = []
        for options, vector, query_codes in plans:
            vec = vector if vector is not None else next(encoded)
            results.append(self._search(vec, options, deadline, query_codes=query_codes))
        return results

    def get_record(
        self, record_id: str, *, with_vector: bool = False
    ) -> tuple[EcgPayload, np.ndarray | None]:
        """Payload (and stored vector) of one record; UnknownRecord when absent."""
        payload, vector = self.store.get(_record_id(record_id))
        return payload, (vector if with_vector else None)

    def info(self, *, fresh: bool = False) -> CollectionInfo:
        """Collection facts, cached for a few seconds: summaries need the per-code counts on every query."""
        with self._lock:
            now = time.monotonic()
            if fresh or self._info is None or now - self._info_at > INFO_TTL_S:
                self._info = self.store.info()
                self._info_at = now
            return self._info

    @property
    def model_card(self) -> ModelCard:
        return self.embedder.card

    # --- validation and encoding -----------------------------------------------------------------

    def validate(self, options: SearchOptions) -> SearchOptions:
        """Range-check k and the threshold, resolve filter codes to the stored code system."""
        if isinstance(options.k, bool) or not isinstance(options.k, int) or not 1 <= options.k <= MAX_K:
            raise InvalidQuery(f"k must be between 1 and {MAX_K}, got {options.k}")
        threshold = options.score_threshold
        if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
            raise InvalidQuery(f"score_threshold must be a cosine similarity in [-1, 1], got {threshold}")
        return SearchOptions(
            resolve_filter(options.filter), options.k, threshold, options.exact, options.with_summary
        )

    def check_vector(self, vector: np.ndarray | Sequence[float] | None) -> np.ndarray:
        """A finite, non-zero vector of the collection's dimension, unit-normalised."""
        x = np.asarray(vector if vector is not None else [], dtype=np.float64)
        dim = self.info().dim
        if x.ndim != 1 or x.shape[0] != dim:
            raise InvalidQuery(f"vector must have {dim} values, got shape {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise InvalidQuery("vector holds NaN or infinite values")
        norm = float(np.linalg.norm(x))
        if norm == 0.0:
            raise InvalidQuery("vector is all zeros")
        return (x / norm).astype(np.float32)

    def encode(
        self, ecgs: Sequence[EcgQuery], *, names: Sequence[str] | None = None, deadline: float | None = None
    ) -> np.ndarray:
        """Raw ECGs -> unit embeddings, prepared by ``signals.prepare_array`` like every stored ECG."""
        names = names or ["query"] * len(ecgs)
        prepared = np.stack(
            [
                signals.prepare_array(e.signal, e.fs, e.leads, units=e.units, record=name)
                for e, name in zip(ecgs, names, strict=True)
            ]
        )
        check_deadline(deadline, "encoding")
        return self.embedder.embed(prepared)

    # --- search and summary ----------------------------------------------------------------------

    def _stored_query(
        self, record_id: str, options: SearchOptions
    ) -> tuple[SearchOptions, np.ndarray, list[str]]:
        """A stored record's vector and codes, and the options with the record itself excluded."""
        payload, vector = self.store.get(_record_id(record_id))
        flt = options.filter.model_copy(
            update={"exclude_record_ids": [*options.filter.exclude_record_ids, payload.record_id]}
        )
        return replace(options, filter=flt), vector, payload.diagnoses

    def _search(
        self,
        vector: np.ndarray,
        options: SearchOptions,
        deadline: float | None,
        *,
        query_codes: Sequence[str] | None = None,
    ) -> SearchResult:
        check_deadline(deadline, "search")
        hits = self.store.search(
            vector,
            k=options.k,
            filter=None if options.filter.is_empty() else options.filter,
            exact=options.exact,
            score_threshold=options.score_threshold,
        )
        summary = summarise(hits, self.info(), query_codes) if options.with_summary else None
        return SearchResult(hits=hits, summary=summary)


def resolve_filter(flt: SearchFilter) -> SearchFilter:
    """The filter with every diagnosis code in the stored code system (InvalidQuery on unknown codes)."""
    try:
        return SearchFilter.model_validate(
            {
                **flt.model_dump(),
                "diagnoses_any": _resolved(flt.diagnoses_any),
                "diagnoses_all": _resolved(flt.diagnoses_all),
                "diagnoses_none": _resolved(flt.diagnoses_none),
            }
        )
    except ValidationError as exc:
        raise InvalidQuery(describe_validation(exc)) from exc


def summarise(
    hits: Sequence[Hit], info: CollectionInfo, query_codes: Sequence[str] | None = None
) -> NeighbourhoodSummary:
    """Count each diagnosis among the neighbours and set it against its base rate in the collection."""
    counts = Counter(code for hit in hits for code in set(hit.payload.diagnoses))
    n = len(hits)
    in_query = set(query_codes or ())
    rows = []
    for code, count in counts.items():
        fraction = count / n
        base_rate = info.diagnosis_counts.get(code, 0) / info.count if info.count else 0.0
        rows.append(
            DiagnosisConcentration(
                code=code,
                description=codes.describe(code),
                count=count,
                fraction=fraction,
                base_rate=base_rate,
                enrichment=fraction / base_rate if base_rate > 0 else 0.0,
                in_query=code in in_query,
            )
        )
    rows.sort(key=lambda r: (-r.count, -r.enrichment, r.code))
    return NeighbourhoodSummary(n_neighbours=n, collection_count=info.count, diagnoses=rows)


def check_deadline(deadline: float | None, before: str) -> None:
    """Raise DeadlineExceeded when ``deadline`` (time.monotonic() seconds) has passed."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"deadline exceeded before {before}")


def describe_validation(exc: ValidationError) -> str:
    """One line per problem, without pydantic's links: what a caller needs to fix the request."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _resolved(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(codes.resolve(v) for v in values))


def _record_id(record_id: str | None) -> str:
    if not record_id or not record_id.strip():
        raise InvalidQuery("record_id is empty")
    return record_id.strip()


def _prefixed(exc: Exception, index: int) -> tuple:
    """Exception args naming the batch position, so a caller finds the bad query."""
    if isinstance(exc, signals.SignalError):
        return (f"query[{index}]", exc.reason)
    return (f"query[{index}]: {exc}",)
