"""What crosses the wire, as plain types: requests, results, pushed-item results, snapshot info, budgets
and the domain errors a caller sees.

The client, the wire conversions, the viewer and the server import these from here, never the server's
domain module (``service.py``), so a client loads no model runtime, vector store or signal library. This
module imports only the stored-record schema, the format table, pydantic and the standard library
(numpy is named in annotations only). ``InvalidQuery``, ``UnknownRecord`` and ``StoreUnavailable`` live
in the schema, which raises them too; they are named here so that a caller finds every error in one
place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ValidationError

from ecgsearch.ecg.formats import NAMES
from ecgsearch.ecg.schema import Hit, InvalidQuery, SearchFilter, StoreUnavailable, UnknownRecord

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEFAULT_K",
    "FILE_FORMATS",
    "NO_BUDGET",
    "Budget",
    "Cancelled",
    "DeadlineExceeded",
    "DiagnosisConcentration",
    "EcgFile",
    "EcgQuery",
    "EcgUnavailable",
    "FieldViolation",
    "InvalidQuery",
    "NeighbourhoodSummary",
    "Pushed",
    "PushStatus",
    "Query",
    "RecordedEcg",
    "RecordTooLong",
    "SearchOptions",
    "SearchResult",
    "SnapshotError",
    "SnapshotInfo",
    "StoreUnavailable",
    "UnknownRecord",
    "UpsertItem",
    "WritesUnavailable",
    "describe_validation",
]

DEFAULT_K = 10
FILE_FORMATS = NAMES  # the format hints a file may carry (ecg.formats)

# --- errors ---------------------------------------------------------------------------------------


class FieldViolation(InvalidQuery):
    """One request field that breaks a bound or a rule; ``field`` is its path in the request."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}" if field else description)
        self.field = field
        self.description = description


class DeadlineExceeded(TimeoutError):
    """The caller's deadline passed before the next step of a request (maps to DEADLINE_EXCEEDED)."""


class Cancelled(RuntimeError):
    """The caller went away; the request stopped at the next step (maps to CANCELLED)."""


class EcgUnavailable(RuntimeError):
    """A stored record whose source file the service cannot read (maps to FAILED_PRECONDITION)."""


class RecordTooLong(EcgUnavailable):
    """GetEcg as recorded of a recording over the declared samples per lead (FAILED_PRECONDITION)."""


class WritesUnavailable(EcgUnavailable):
    """A push to a server not set up to write: no site secret or no archive (FAILED_PRECONDITION)."""


class SnapshotError(RuntimeError):
    """An archive that is not an ecgsearch snapshot, or a restore that cannot be done as asked."""


def describe_validation(exc: ValidationError) -> str:
    """One line per problem, without pydantic's links or the offending input."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


@dataclass(frozen=True)
class RecordedEcg:
    """A stored record's ECG as its file holds it: (12, n) float32 mV in the model's lead order, unfiltered,
    at ``fs``, the file's own rate (GetEcg with ``as_recorded``)."""

    signal: np.ndarray
    fs: float


# --- budgets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """When a request must stop: the caller's deadline (time.monotonic()) and a cancellation probe.

    Checked between the steps of a request (each ECG of a batch, before encoding, before searching),
    so a caller that gave up stops costing the server within one step.
    """

    deadline: float | None = None
    cancelled: Callable[[], bool] | None = None
    # A heavy call's budget: give the interpreter lock to other threads at each step, so light calls
    # served beside it wait one step at most, not the interpreter's switch interval per turn.
    polite: bool = False

    def check(self, before: str) -> None:
        if self.polite:
            time.sleep(0)
        if self.cancelled is not None and self.cancelled():
            raise Cancelled(f"call cancelled before {before}")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceeded(f"deadline exceeded before {before}")


NO_BUDGET = Budget()

# --- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchOptions:
    """The parts every search shares; validated by ``SearchService``."""

    filter: SearchFilter = field(default_factory=SearchFilter)
    k: int = DEFAULT_K
    score_threshold: float | None = None
    exact: bool = False
    with_summary: bool = False
    # Also return ECGs recorded at ingest as copies of another stored ECG (``duplicate_of``).
    include_duplicates: bool = False
    # Searches by ECG or file: also return the stored ECG that is the query itself (the same recording
    # by content) and its copies; by default they are left out and named in ``query_record_id``.
    include_query_record: bool = False
    # Similar by what (``ecg.schema.VIEW_DISTANCE``): (view, weight) pairs, one view or a blend; empty:
    # the served vector, as before views.
    similar_by: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class EcgQuery:
    """A raw ECG as the caller has it: (n_leads, n_samples) in its own rate, units and lead order.

    ``signal`` may also be one lead-major flat array with ``n_leads`` set (the wire's ``flat_samples``).
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    units: tuple[str, ...] | str = "mV"
    n_leads: int | None = None


@dataclass(frozen=True)
class EcgFile:
    """An ECG file's bytes as a hospital system exports it; ``format_hint`` one of FILE_FORMATS or None."""

    content: bytes = field(repr=False)
    format_hint: str | None = None


@dataclass(frozen=True)
class UpsertItem:
    """One ECG to add: a file, or a raw ECG with the sender's non-personal id and its patient id
    (``patient_key``: pseudonymised by the service with the site secret, never stored as sent)."""

    file: EcgFile | None = None
    ecg: EcgQuery | None = None
    native_id: str = ""
    patient_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class Query:
    """One query of a batch: exactly one of record_id, ecg, vector."""

    options: SearchOptions = field(default_factory=SearchOptions)
    record_id: str | None = None
    ecg: EcgQuery | None = None
    vector: np.ndarray | None = None
    include_same_patient: bool = False


# --- results --------------------------------------------------------------------------------------


class DiagnosisConcentration(BaseModel):
    """How one diagnosis concentrates among the neighbours compared with the whole collection."""

    code: str
    description: str
    count: int
    fraction: float
    base_rate: float
    enrichment: float
    in_query: bool = False
    # what ``search.summary.evidence`` decides, carried so that API clients read the one rule
    enrichment_low: float | None = None
    enrichment_high: float | None = None
    highlighted: bool = False


class NeighbourhoodSummary(BaseModel):
    """Per diagnosis among the k neighbours: the evidence a clinician reads off a search.

    ``exclusions`` names the neighbours the search left out ("query_record", "same_patient",
    "duplicate_copy"): the rules the retrieval evaluation applies (it searches one copy of each ECG
    and never the query's own patient).
    """

    n_neighbours: int
    collection_count: int
    diagnoses: list[DiagnosisConcentration]
    exclusions: list[str] = []


class SearchResult(BaseModel):
    """Hits best first, and the neighbourhood summary when asked for."""

    hits: list[Hit]
    summary: NeighbourhoodSummary | None = None
    # Searches by ECG or file: the stored record that is the query ECG itself (its original when it is
    # also stored as copies), found by content (``search.engine.copies``); None when it is not stored.
    query_record_id: str | None = None


PushStatus = Literal["stored", "skipped", "rejected"]


@dataclass(frozen=True)
class Pushed:
    """What became of one pushed item; ``reason`` says why it was rejected (a field and a rule)."""

    record_id: str
    status: PushStatus
    reason: str = ""


class SnapshotInfo(BaseModel):
    """One snapshot: where it is, what it holds."""

    name: str
    location: str  # the archive's path (embedded) or the snapshot's name on the server
    collection: str
    backend: str
    created: datetime | None = None
    size_bytes: int | None = None
    count: int | None = None
    model_version: str | None = None
    signals: int | None = None  # archived signals carried (embedded snapshots)
    note: str | None = None  # what a restore needs beside the snapshot (the site secret)
