"""The one schema for stored points and queries: payloads, filters and hits.

These pydantic models cross every module line (ingest -> store -> service -> gRPC); conversions to
Qdrant live in ``filters.py``/``store.py`` and to protobuf in ``server.py``, one function each.

Privacy: a payload carries pseudonymous ids and clinical codes only. There is deliberately no field
for names or free text, and ``extra="forbid"`` keeps anything else out.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Sex = Literal["M", "F"]
MAX_K = 1000
IndexKind = Literal["keyword", "integer", "float", "bool", "tenant"]


@dataclass(frozen=True)
class Measure:
    """A machine measurement: what a clinician calls it, its unit, its value in the proto's Measurement
    enum (never reused)."""

    label: str
    unit: str
    wire_number: int


@dataclass(frozen=True)
class PayloadField:
    """One field of EcgPayload as every layer treats it: the store indexes it (``index``; the filters
    read only indexed fields), the wire carries it as message Payload's field ``number`` of type
    ``proto`` (search/wire.py converts by that type), and a measurement (``measure``) is also a range
    filter, an enum value and a labelled value in the viewer."""

    name: str  # the EcgPayload field, and the key in the stored payload
    number: int  # field number in the proto's message Payload (never reused)
    proto: str  # its proto type there: 'string', 'optional double', 'repeated string', 'Sex', ...
    index: IndexKind | None = None
    measure: Measure | None = None
    note: str = ""  # the proto's comment on it


def _measurement(name: str, number: int, label: str, unit: str, wire_number: int) -> PayloadField:
    """Stored as a number where the file carries it, indexed as float, filtered as a range."""
    return PayloadField(name, number, "optional double", "float", Measure(label, unit, wire_number))


# The one declaration of the stored payload's fields, in proto field order. EcgPayload (below) types
# them; the store's payload indexes, the wire conversion, the proto's message Payload and Measurement
# enum (written by proto/generate.py), the measurement filters and the viewer's measurements derive
# from this table, and tests/ecg/test_payload_fields.py checks EcgPayload and pb.Payload against it.
# Adding a field: a row here, its EcgPayload field (and a Measurements field for a machine
# measurement), the reader or ingest step that fills it, a test.
PAYLOAD_FIELDS: tuple[PayloadField, ...] = (
    PayloadField("record_id", 1, "string"),
    PayloadField("dataset", 2, "string", "keyword"),
    PayloadField("patient_id", 3, "optional string", "keyword"),
    PayloadField("diagnoses", 4, "repeated string", "keyword"),
    PayloadField("source_codes", 5, "repeated string"),
    PayloadField("scp_likelihoods", 6, "map<string, float>"),
    PayloadField("superclasses", 7, "repeated string"),
    PayloadField("age", 8, "optional int32", "integer"),
    PayloadField("age_over_89", 9, "bool"),
    PayloadField("sex", 10, "Sex", "keyword"),
    PayloadField("sampling_rate_hz", 11, "double"),
    PayloadField("duration_s", 12, "optional double"),
    PayloadField(
        "recorded_at",
        13,
        "google.protobuf.Timestamp",
        note="Wall-clock time of the recording; sources carry no time zone, so it is sent as if it were UTC.",
    ),
    PayloadField(
        "source_path",
        14,
        "string",
        note="inside its source folder, as the dataset names it; empty when not stored",
    ),
    PayloadField(
        "content_hash",
        15,
        "optional string",
        note="SHA-256 of the ECG as stored (rate, leads, units, samples)",
    ),
    # Indexed: every search the service runs drops copies (duplicate_of empty); without the index the
    # engine guesses that filter keeps half the points, and the plan is a post-filter, not HNSW.
    PayloadField(
        "duplicate_of",
        16,
        "optional string",
        "keyword",
        note="record id of the ECG stored before this one that it copies (the same recording by content)",
    ),
    PayloadField(
        "source_format", 17, "optional string", note="file format read, e.g. 'muse-xml'; unset for WFDB"
    ),
    PayloadField(
        "acquired_month", 18, "optional string", note="'YYYY-MM': hospital files keep no exact time"
    ),
    PayloadField("vendor", 19, "optional string"),
    PayloadField("device_model", 20, "optional string"),
    _measurement("ventricular_rate_bpm", 21, "Rate", "bpm", 1),
    _measurement("pr_ms", 22, "PR", "ms", 2),
    _measurement("qrs_ms", 23, "QRS", "ms", 3),
    _measurement("qt_ms", 24, "QT", "ms", 4),
    _measurement("qtc_ms", 25, "QTc", "ms", 5),
    _measurement("p_axis", 26, "P axis", "°", 6),
    _measurement("r_axis", 27, "R axis", "°", 7),
    _measurement("t_axis", 28, "T axis", "°", 8),
    PayloadField(
        "archived", 29, "bool", note="the server keeps the signal (pushed ECGs): GetEcg reads it from there"
    ),
    PayloadField(
        "site",
        30,
        "optional string",
        "tenant",  # keyword, stored grouped by site (Qdrant's tenant index)
        note="The site (hospital, department) the ECG belongs to. Unset only from servers older than "
        "this field: read it as 'local', the default site.",
    ),
    PayloadField(
        "gain_suspect",
        31,
        "optional bool",
        "bool",  # counted by the store's indexing status: these points hold no voltage vector
        note="true: the amplitude is implausible for the header's gain (5x, 1000x errors); no voltage view",
    ),
)
PAYLOAD_BY_NAME: dict[str, PayloadField] = {f.name: f for f in PAYLOAD_FIELDS}
# EcgPayload fields the store keeps beside the declared ones, never indexed, sent, dumped or logged
# (excluded from model_dump): the content fingerprint that copy detection reads with each hit.
STORED_ONLY: frozenset[str] = frozenset({"fingerprint"})
# The acquiring machine's global measurements, stored as numbers beside each ECG that carries them
# (ms, degrees, beats per minute) and filterable as ranges; the names are the payload's field names,
# in the order a printed ECG report lists them.
MEASUREMENTS: tuple[str, ...] = tuple(f.name for f in PAYLOAD_FIELDS if f.measure is not None)
if TYPE_CHECKING:
    Measurement = str
else:
    Measurement = Literal[MEASUREMENTS]  # validated as the Literal of those names


@dataclass(frozen=True)
class Measurements:
    """The acquiring machine's global measurements as a reader finds them (ms, degrees, beats per
    minute): one field per MEASUREMENTS name, in that order (a test checks)."""

    ventricular_rate_bpm: float | None = None
    pr_ms: float | None = None
    qrs_ms: float | None = None
    qt_ms: float | None = None
    qtc_ms: float | None = None
    p_axis: float | None = None
    r_axis: float | None = None
    t_axis: float | None = None


MEASUREMENT_LIMIT = 10_000.0  # |value| of any measurement or range bound; real ones stay far inside
POINT_NAMESPACE = uuid.UUID("6f1c1f2e-9a52-4c2b-8d53-3c1d0e4a7b10")

# Record ids, dataset and site names: the one safe character set, checked where ids are made (ingest's
# sources, pushes). A record id is '<dataset>:<native id>', or '<site>/<dataset>:<native id>' for an
# ECG pushed into a site's namespace; no part can carry markup, quotes, blanks or control characters,
# so every consumer (viewer, logs, CSV reports) may show it as is. Stored payloads are not re-checked
# when read: collections made before the rule stay readable.
MAX_SITE_CHARS = 64
MAX_DATASET_CHARS = 64
MAX_NATIVE_ID_CHARS = 128
SITE_SEPARATOR = "/"
MAX_RECORD_ID_CHARS = MAX_SITE_CHARS + 1 + MAX_DATASET_CHARS + 1 + MAX_NATIVE_ID_CHARS
SITE_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_SITE_CHARS - 1}}}"
DATASET_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_DATASET_CHARS - 1}}}"
NATIVE_ID_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_NATIVE_ID_CHARS - 1}}}"
RECORD_ID_PATTERN = f"(?:{SITE_PATTERN}{SITE_SEPARATOR})?{DATASET_PATTERN}:{NATIVE_ID_PATTERN}"
_DATASET_RULE = f"1-{MAX_DATASET_CHARS} letters, digits, '.', '_' or '-', starting with a letter or digit"
_NATIVE_RULE = (
    f"1-{MAX_NATIVE_ID_CHARS} letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
)
_RECORD_RULE = (
    f"'<dataset>:<id>': a dataset of 1-{MAX_DATASET_CHARS} letters, digits, '.', '_' or '-', then ':' "
    f"and an id of 1-{MAX_NATIVE_ID_CHARS} letters, digits, '.', '_', ':' or '-', each starting with a "
    f"letter or digit (a pushed ECG's: '<site>{SITE_SEPARATOR}' before it)"
)
_ID_RULES = {  # kind: (pattern, characters allowed anywhere, most characters, rule)
    "dataset": (
        re.compile(DATASET_PATTERN),
        re.compile(r"[A-Za-z0-9._-]*"),
        MAX_DATASET_CHARS,
        _DATASET_RULE,
    ),
    "native id": (
        re.compile(NATIVE_ID_PATTERN),
        re.compile(r"[A-Za-z0-9._:-]*"),
        MAX_NATIVE_ID_CHARS,
        _NATIVE_RULE,
    ),
    "record id": (
        re.compile(RECORD_ID_PATTERN),
        re.compile(rf"[A-Za-z0-9._:{SITE_SEPARATOR}-]*"),
        MAX_RECORD_ID_CHARS,
        _RECORD_RULE,
    ),
}


class UnsafeId(ValueError):
    """A record id or dataset name outside the safe set; says which field and the rule, never the value."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field, self.rule = field, rule


def _check_id(value: str, kind: str, field: str) -> str:
    pattern, charset, most, rule = _ID_RULES[kind]
    if pattern.fullmatch(value):
        return value
    if len(value) > most:
        problem = f"{len(value)} characters, at most {most}"
    elif (good := charset.match(value)) is not None and good.end() < len(value):
        problem = f"character {good.end() + 1} is not allowed"
    else:
        problem = "not of the allowed form"
    raise UnsafeId(field, f"{problem}; expected {rule}")


def check_dataset_name(value: str, field: str = "dataset") -> str:
    """A dataset name in the safe set (``DATASET_PATTERN``), else UnsafeId naming ``field``."""
    return _check_id(value, "dataset", field)


def check_native_id(value: str, field: str = "native_id") -> str:
    """A sender's or a source's own id of an ECG (``NATIVE_ID_PATTERN``), else UnsafeId naming ``field``."""
    return _check_id(value, "native id", field)


def check_record_id(value: str, field: str = "record_id") -> str:
    """A record id '<dataset>:<native id>' (``RECORD_ID_PATTERN``), else UnsafeId naming ``field``."""
    return _check_id(value, "record id", field)


class InvalidQuery(ValueError):
    """A query or filter that cannot be answered as asked (maps to INVALID_ARGUMENT)."""


# The named views of an ECG (ecg/views.py computes them) and the distance each is searched by: a query
# names one view, or blends several with weights (each view's top VIEW_PREFETCH, fused by Qdrant's
# weighted reciprocal rank with constant VIEW_RRF_K).
VIEW_DISTANCE: dict[str, Literal["cosine", "euclid"]] = {
    "waveform": "cosine",
    "rhythm": "euclid",
    "voltage": "euclid",
}
VIEW_PREFETCH = 100
VIEW_RRF_K = 2
LEARNED_VIEW = "waveform"  # the learned part of the served vector: when that is all of it, it is the vector
GAIN_VIEW = "voltage"  # the view an ECG flagged gain_suspect is stored without (its voltage is unknown)
# The default blend, named in similar_by like a view and alone: the waveform view's top VIEW_PREFETCH
# reranked with the rhythm view (for a query whose rhythm is irregular) and the voltage view, by the
# weights the views' evaluation chose (``ecg.views.default_blend``; docs/results.md).
DEFAULT_BLEND = "blend"
SIMILAR_BY = (*VIEW_DISTANCE, DEFAULT_BLEND)


def check_view(name: str) -> str:
    """A view name, or InvalidQuery naming the views."""
    if name not in VIEW_DISTANCE:
        raise InvalidQuery(f"unknown view {name!r}; views are {', '.join(VIEW_DISTANCE)}")
    return name


def check_view_or_blend(name: str) -> str:
    """A view name or DEFAULT_BLEND, or InvalidQuery naming them."""
    if name not in SIMILAR_BY:
        raise InvalidQuery(f"unknown view {name!r}; views are {', '.join(VIEW_DISTANCE)}, or {DEFAULT_BLEND}")
    return name


def check_blend_alone(names: Sequence[str]) -> None:
    """DEFAULT_BLEND is a blend of its own: InvalidQuery when it is named beside a view."""
    if DEFAULT_BLEND in names and len(names) > 1:
        raise InvalidQuery(f"similar_by {DEFAULT_BLEND!r} is a blend of its own: name it alone")


def parse_similar_by(text: str) -> tuple[tuple[str, float], ...]:
    """'rhythm' -> one view; 'waveform=1,rhythm=0.5' -> a blend: (view, weight) pairs (InvalidQuery)."""
    out: list[tuple[str, float]] = []
    for part in (p.strip() for p in text.split(",")):
        name, _, weight = part.partition("=")
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise InvalidQuery(f"similar_by {part[:40]!r}: weight must be a number") from None
        if not value > 0 or value != value or value == float("inf"):
            raise InvalidQuery(f"similar_by {part[:40]!r}: weight must be a finite number above 0")
        out.append((check_view_or_blend(name.strip().lower()), value))
    if len({v for v, _ in out}) != len(out):
        raise InvalidQuery(f"similar_by {text[:60]!r}: a view is named twice")
    check_blend_alone([v for v, _ in out])
    return tuple(out)


class UnknownRecord(LookupError):
    """A record id that is not in the collection (maps to NOT_FOUND)."""

    def __init__(self, record_id: str) -> None:
        super().__init__(f"unknown record id {record_id!r}")
        self.record_id = record_id


class StoreUnavailable(RuntimeError):
    """The vector store cannot be reached or opened (maps to UNAVAILABLE)."""


def point_id(record_id: str) -> str:
    """Deterministic Qdrant point id (UUIDv5) of a record id: the same record always lands on one point."""
    return str(uuid.uuid5(POINT_NAMESPACE, record_id))


class EcgPayload(BaseModel):
    """What is stored beside each embedding.

    ``diagnoses`` is the normalised code list (SNOMED CT concept ids; a PTB-XL SCP statement with no
    SNOMED counterpart stays as ``SCP:<code>``), ``source_codes`` keeps the originals as
    ``SCP:<code>`` / ``SNOMED:<id>``.
    """

    model_config = ConfigDict(extra="forbid")

    record_id: str = Field(description="'<dataset>:<native id>', e.g. 'ptbxl:17' or 'georgia:E00001'")
    dataset: str
    site: str = Field(
        default="local",
        pattern=f"^{SITE_PATTERN}$",
        description="the site (hospital, department) the ECG belongs to, set at ingest (--site); a "
        "caller restricted to some sites never sees another site's ECGs",
    )
    patient_id: str | None = Field(
        default=None,
        description="keyed pseudonym (HMAC of the site secret) of the source's patient id, or of the "
        "record id when the source names no patient: every ECG ingested has one, so same-patient "
        "rules apply to all; never the source's own patient id",
    )
    diagnoses: list[str] = Field(default_factory=list)
    source_codes: list[str] = Field(default_factory=list)
    scp_likelihoods: dict[str, float] = Field(default_factory=dict)
    superclasses: list[str] = Field(default_factory=list)
    age: int | None = Field(default=None, ge=0, le=130)
    age_over_89: bool = False
    sex: Sex | None = None
    sampling_rate_hz: float
    duration_s: float | None = None
    recorded_at: datetime | None = None
    source_path: str | None = Field(
        default=None,
        description="the file inside its registered source folder, as the dataset names it (e.g. "
        "'records100/00000/00001_lr'); absent where a path could carry personal data",
    )
    content_hash: str | None = Field(
        default=None,
        description="SHA-256 of the ECG as stored (rate, leads, units, float32 samples): the same id "
        "met again with another hash is a collision, never a silent overwrite",
    )
    duplicate_of: str | None = Field(
        default=None,
        description="record id of the ECG, stored before this one, that this one copies (the same "
        "recording by content: ``ecg.fingerprint``, any dataset); results skip such copies",
    )
    source_format: str | None = Field(
        default=None, description="the file format read ('muse-xml', 'dicom', ...); None for WFDB"
    )
    acquired_month: str | None = Field(
        default=None,
        pattern=r"^\d{4}-\d{2}$",
        description="acquisition year and month only ('2021-05'), for files whose exact time is personal",
    )
    vendor: str | None = Field(default=None, max_length=64, description="device maker (never a serial)")
    device_model: str | None = Field(default=None, max_length=64, description="device model (never a serial)")
    ventricular_rate_bpm: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT)
    pr_ms: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT)
    qrs_ms: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT)
    qt_ms: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT)
    qtc_ms: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT)
    p_axis: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT)
    r_axis: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT)
    t_axis: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT)
    # The ECG's content fingerprint (``ecg.fingerprint``, base64 int8, ~4 KB): stored with the point so
    # copy detection needs no re-read. Not indexed, left out of model_dump (so of every reply, JSON
    # and log) and never on the wire; the store writes it explicitly (``store._payload_dict``).
    fingerprint: str | None = Field(default=None, exclude=True, repr=False, max_length=8192)
    archived: bool = Field(
        default=False,
        description="the signal is kept content-addressed beside the store (pushed ECGs), so GetEcg "
        "reads it from there",
    )
    gain_suspect: bool | None = Field(
        default=None,
        description="True: the ECG's amplitude is implausible for its header's gain (``ecg.views``), so "
        "it is stored without a voltage vector",
    )


class MeasurementRange(BaseModel):
    """``min <= measurement <= max`` (either bound may be open); an ECG without the measurement fails."""

    model_config = ConfigDict(extra="forbid")

    measurement: Measurement
    min: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT, allow_inf_nan=False)
    max: float | None = Field(default=None, ge=-MEASUREMENT_LIMIT, le=MEASUREMENT_LIMIT, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounded(self) -> MeasurementRange:
        if self.min is None and self.max is None:
            raise ValueError(f"{self.measurement}: give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"{self.measurement}: min {self.min:g} > max {self.max:g}")
        return self


class SearchFilter(BaseModel):
    """Payload conditions of a query; all given conditions must hold."""

    model_config = ConfigDict(extra="forbid")

    diagnoses_any: list[str] = Field(default_factory=list)
    diagnoses_all: list[str] = Field(default_factory=list)
    diagnoses_none: list[str] = Field(default_factory=list)
    age_min: int | None = Field(default=None, ge=0, le=130)
    age_max: int | None = Field(default=None, ge=0, le=130)
    sex: Sex | None = None
    datasets: list[str] = Field(default_factory=list)
    exclude_record_ids: list[str] = Field(default_factory=list)
    exclude_patient_ids: list[str] = Field(default_factory=list)
    # Set by the service unless a search includes duplicates: hits recorded as copies (duplicate_of) drop out.
    exclude_duplicates: bool = False
    sites: list[str] = Field(
        default_factory=list, description="keep ECGs of these sites; set by the server for restricted callers"
    )
    measurements: list[MeasurementRange] = Field(default_factory=list)

    @field_validator("diagnoses_any", "diagnoses_all", "diagnoses_none", "datasets")
    @classmethod
    def _no_blank_codes(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip() for v in values]
        if any(not v for v in cleaned):
            raise ValueError("empty code or name in list")
        return cleaned

    @model_validator(mode="after")
    def _consistent(self) -> SearchFilter:
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ValueError(f"age_min {self.age_min} > age_max {self.age_max}")
        clash = (set(self.diagnoses_any) | set(self.diagnoses_all)) & set(self.diagnoses_none)
        if clash and (set(self.diagnoses_all) & set(self.diagnoses_none) or set(self.diagnoses_any) <= clash):
            raise ValueError(f"codes both required and excluded: {sorted(clash)}")
        named = [r.measurement for r in self.measurements]
        if len(set(named)) != len(named):
            raise ValueError("each measurement may be given once; combine its bounds in one range")
        return self

    def is_empty(self) -> bool:
        """No condition at all: the default filter (compared with one kept for it, not one built per call:
        every search asks, and building a filter runs its validators)."""
        return self == _NO_FILTER


_NO_FILTER = SearchFilter()  # never handed out: only compared with


class Hit(BaseModel):
    """One neighbour: its record id, cosine similarity and payload."""

    record_id: str
    score: float
    payload: EcgPayload


class CollectionInfo(BaseModel):
    """What a collection holds and which model made its vectors."""

    name: str
    count: int
    dim: int
    model_version: str
    backend: str
    indexed: bool = Field(description="HNSW built over every point (embedded store) / indexing finished")
    diagnosis_counts: dict[str, int] = Field(default_factory=dict)
