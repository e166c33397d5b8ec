import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Sex(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEX_UNSPECIFIED: _ClassVar[Sex]
    SEX_MALE: _ClassVar[Sex]
    SEX_FEMALE: _ClassVar[Sex]

class Units(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNITS_UNSPECIFIED: _ClassVar[Units]
    UNITS_MILLIVOLT: _ClassVar[Units]
    UNITS_MICROVOLT: _ClassVar[Units]
    UNITS_VOLT: _ClassVar[Units]

class Exclusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXCLUSION_UNSPECIFIED: _ClassVar[Exclusion]
    EXCLUSION_QUERY_RECORD: _ClassVar[Exclusion]
    EXCLUSION_SAME_PATIENT: _ClassVar[Exclusion]
    EXCLUSION_DUPLICATE_COPY: _ClassVar[Exclusion]

class Measurement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEASUREMENT_UNSPECIFIED: _ClassVar[Measurement]
    MEASUREMENT_VENTRICULAR_RATE_BPM: _ClassVar[Measurement]
    MEASUREMENT_PR_MS: _ClassVar[Measurement]
    MEASUREMENT_QRS_MS: _ClassVar[Measurement]
    MEASUREMENT_QT_MS: _ClassVar[Measurement]
    MEASUREMENT_QTC_MS: _ClassVar[Measurement]
    MEASUREMENT_P_AXIS: _ClassVar[Measurement]
    MEASUREMENT_R_AXIS: _ClassVar[Measurement]
    MEASUREMENT_T_AXIS: _ClassVar[Measurement]

class View(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIEW_UNSPECIFIED: _ClassVar[View]
    VIEW_WAVEFORM: _ClassVar[View]
    VIEW_RHYTHM: _ClassVar[View]
    VIEW_VOLTAGE: _ClassVar[View]
    VIEW_BLEND: _ClassVar[View]

class EcgFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ECG_FORMAT_UNSPECIFIED: _ClassVar[EcgFormat]
    ECG_FORMAT_MUSE_XML: _ClassVar[EcgFormat]
    ECG_FORMAT_PHILIPS_XML: _ClassVar[EcgFormat]
    ECG_FORMAT_HL7_AECG: _ClassVar[EcgFormat]
    ECG_FORMAT_DICOM: _ClassVar[EcgFormat]
    ECG_FORMAT_SCP_ECG: _ClassVar[EcgFormat]
    ECG_FORMAT_EDF: _ClassVar[EcgFormat]

class UpsertStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPSERT_STATUS_UNSPECIFIED: _ClassVar[UpsertStatus]
    UPSERT_STATUS_STORED: _ClassVar[UpsertStatus]
    UPSERT_STATUS_SKIPPED: _ClassVar[UpsertStatus]
    UPSERT_STATUS_REJECTED: _ClassVar[UpsertStatus]
SEX_UNSPECIFIED: Sex
SEX_MALE: Sex
SEX_FEMALE: Sex
UNITS_UNSPECIFIED: Units
UNITS_MILLIVOLT: Units
UNITS_MICROVOLT: Units
UNITS_VOLT: Units
EXCLUSION_UNSPECIFIED: Exclusion
EXCLUSION_QUERY_RECORD: Exclusion
EXCLUSION_SAME_PATIENT: Exclusion
EXCLUSION_DUPLICATE_COPY: Exclusion
MEASUREMENT_UNSPECIFIED: Measurement
MEASUREMENT_VENTRICULAR_RATE_BPM: Measurement
MEASUREMENT_PR_MS: Measurement
MEASUREMENT_QRS_MS: Measurement
MEASUREMENT_QT_MS: Measurement
MEASUREMENT_QTC_MS: Measurement
MEASUREMENT_P_AXIS: Measurement
MEASUREMENT_R_AXIS: Measurement
MEASUREMENT_T_AXIS: Measurement
VIEW_UNSPECIFIED: View
VIEW_WAVEFORM: View
VIEW_RHYTHM: View
VIEW_VOLTAGE: View
VIEW_BLEND: View
ECG_FORMAT_UNSPECIFIED: EcgFormat
ECG_FORMAT_MUSE_XML: EcgFormat
ECG_FORMAT_PHILIPS_XML: EcgFormat
ECG_FORMAT_HL7_AECG: EcgFormat
ECG_FORMAT_DICOM: EcgFormat
ECG_FORMAT_SCP_ECG: EcgFormat
ECG_FORMAT_EDF: EcgFormat
UPSERT_STATUS_UNSPECIFIED: UpsertStatus
UPSERT_STATUS_STORED: UpsertStatus
UPSERT_STATUS_SKIPPED: UpsertStatus
UPSERT_STATUS_REJECTED: UpsertStatus

class MeasurementRange(_message.Message):
    __slots__ = ("measurement", "min", "max")
    MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    measurement: Measurement
    min: float
    max: float
    def __init__(self, measurement: _Optional[_Union[Measurement, str]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("diagnoses_any", "diagnoses_all", "diagnoses_none", "age_min", "age_max", "sex", "datasets", "exclude_record_ids", "exclude_patient_ids", "measurements")
    DIAGNOSES_ANY_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSES_ALL_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSES_NONE_FIELD_NUMBER: _ClassVar[int]
    AGE_MIN_FIELD_NUMBER: _ClassVar[int]
    AGE_MAX_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PATIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    diagnoses_any: _containers.RepeatedScalarFieldContainer[str]
    diagnoses_all: _containers.RepeatedScalarFieldContainer[str]
    diagnoses_none: _containers.RepeatedScalarFieldContainer[str]
    age_min: int
    age_max: int
    sex: Sex
    datasets: _containers.RepeatedScalarFieldContainer[str]
    exclude_record_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_patient_ids: _containers.RepeatedScalarFieldContainer[str]
    measurements: _containers.RepeatedCompositeFieldContainer[MeasurementRange]
    def __init__(self, diagnoses_any: _Optional[_Iterable[str]] = ..., diagnoses_all: _Optional[_Iterable[str]] = ..., diagnoses_none: _Optional[_Iterable[str]] = ..., age_min: _Optional[int] = ..., age_max: _Optional[int] = ..., sex: _Optional[_Union[Sex, str]] = ..., datasets: _Optional[_Iterable[str]] = ..., exclude_record_ids: _Optional[_Iterable[str]] = ..., exclude_patient_ids: _Optional[_Iterable[str]] = ..., measurements: _Optional[_Iterable[_Union[MeasurementRange, _Mapping]]] = ...) -> None: ...

class SearchOptions(_message.Message):
    __slots__ = ("filter", "k", "score_threshold", "exact", "with_summary", "include_duplicates", "include_query_record", "similar_by")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    WITH_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_QUERY_RECORD_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_BY_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    k: int
    score_threshold: float
    exact: bool
    with_summary: bool
    include_duplicates: bool
    include_query_record: bool
    similar_by: _containers.RepeatedCompositeFieldContainer[ViewWeight]
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., k: _Optional[int] = ..., score_threshold: _Optional[float] = ..., exact: _Optional[bool] = ..., with_summary: _Optional[bool] = ..., include_duplicates: _Optional[bool] = ..., include_query_record: _Optional[bool] = ..., similar_by: _Optional[_Iterable[_Union[ViewWeight, _Mapping]]] = ...) -> None: ...

class ViewWeight(_message.Message):
    __slots__ = ("view", "weight")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    view: View
    weight: float
    def __init__(self, view: _Optional[_Union[View, str]] = ..., weight: _Optional[float] = ...) -> None: ...

class LeadSamples(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Ecg(_message.Message):
    __slots__ = ("lead_names", "sampling_rate_hz", "units", "leads", "flat_samples", "n_leads")
    LEAD_NAMES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    LEADS_FIELD_NUMBER: _ClassVar[int]
    FLAT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    N_LEADS_FIELD_NUMBER: _ClassVar[int]
    lead_names: _containers.RepeatedScalarFieldContainer[str]
    sampling_rate_hz: float
    units: _containers.RepeatedScalarFieldContainer[Units]
    leads: _containers.RepeatedCompositeFieldContainer[LeadSamples]
    flat_samples: _containers.RepeatedScalarFieldContainer[float]
    n_leads: int
    def __init__(self, lead_names: _Optional[_Iterable[str]] = ..., sampling_rate_hz: _Optional[float] = ..., units: _Optional[_Iterable[_Union[Units, str]]] = ..., leads: _Optional[_Iterable[_Union[LeadSamples, _Mapping]]] = ..., flat_samples: _Optional[_Iterable[float]] = ..., n_leads: _Optional[int] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class SearchByRecordRequest(_message.Message):
    __slots__ = ("record_id", "options", "include_same_patient")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SAME_PATIENT_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    options: SearchOptions
    include_same_patient: bool
    def __init__(self, record_id: _Optional[str] = ..., options: _Optional[_Union[SearchOptions, _Mapping]] = ..., include_same_patient: _Optional[bool] = ...) -> None: ...

class SearchByEcgRequest(_message.Message):
    __slots__ = ("ecg", "options")
    ECG_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ecg: Ecg
    options: SearchOptions
    def __init__(self, ecg: _Optional[_Union[Ecg, _Mapping]] = ..., options: _Optional[_Union[SearchOptions, _Mapping]] = ...) -> None: ...

class EcgFile(_message.Message):
    __slots__ = ("content", "format_hint")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_HINT_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    format_hint: EcgFormat
    def __init__(self, content: _Optional[bytes] = ..., format_hint: _Optional[_Union[EcgFormat, str]] = ...) -> None: ...

class SearchByFileRequest(_message.Message):
    __slots__ = ("file", "options")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    file: EcgFile
    options: SearchOptions
    def __init__(self, file: _Optional[_Union[EcgFile, _Mapping]] = ..., options: _Optional[_Union[SearchOptions, _Mapping]] = ...) -> None: ...

class SearchByFileResponse(_message.Message):
    __slots__ = ("hits", "summary", "query_record_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    QUERY_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    summary: NeighbourhoodSummary
    query_record_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., summary: _Optional[_Union[NeighbourhoodSummary, _Mapping]] = ..., query_record_id: _Optional[str] = ...) -> None: ...

class UpsertItem(_message.Message):
    __slots__ = ("file", "ecg", "native_id", "patient_key")
    FILE_FIELD_NUMBER: _ClassVar[int]
    ECG_FIELD_NUMBER: _ClassVar[int]
    NATIVE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    file: EcgFile
    ecg: Ecg
    native_id: str
    patient_key: str
    def __init__(self, file: _Optional[_Union[EcgFile, _Mapping]] = ..., ecg: _Optional[_Union[Ecg, _Mapping]] = ..., native_id: _Optional[str] = ..., patient_key: _Optional[str] = ...) -> None: ...

class UpsertEcgsRequest(_message.Message):
    __slots__ = ("items", "dataset")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[UpsertItem]
    dataset: str
    def __init__(self, items: _Optional[_Iterable[_Union[UpsertItem, _Mapping]]] = ..., dataset: _Optional[str] = ...) -> None: ...

class UpsertResult(_message.Message):
    __slots__ = ("record_id", "status", "reason")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    status: UpsertStatus
    reason: str
    def __init__(self, record_id: _Optional[str] = ..., status: _Optional[_Union[UpsertStatus, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class UpsertEcgsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpsertResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpsertResult, _Mapping]]] = ...) -> None: ...

class SearchByVectorRequest(_message.Message):
    __slots__ = ("vector", "options")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    options: SearchOptions
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., options: _Optional[_Union[SearchOptions, _Mapping]] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("record_id", "dataset", "patient_id", "diagnoses", "source_codes", "scp_likelihoods", "superclasses", "age", "age_over_89", "sex", "sampling_rate_hz", "duration_s", "recorded_at", "source_path", "content_hash", "duplicate_of", "source_format", "acquired_month", "vendor", "device_model", "ventricular_rate_bpm", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms", "p_axis", "r_axis", "t_axis", "archived", "site", "gain_suspect")
    class ScpLikelihoodsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CODES_FIELD_NUMBER: _ClassVar[int]
    SCP_LIKELIHOODS_FIELD_NUMBER: _ClassVar[int]
    SUPERCLASSES_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    AGE_OVER_89_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_MONTH_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODEL_FIELD_NUMBER: _ClassVar[int]
    VENTRICULAR_RATE_BPM_FIELD_NUMBER: _ClassVar[int]
    PR_MS_FIELD_NUMBER: _ClassVar[int]
    QRS_MS_FIELD_NUMBER: _ClassVar[int]
    QT_MS_FIELD_NUMBER: _ClassVar[int]
    QTC_MS_FIELD_NUMBER: _ClassVar[int]
    P_AXIS_FIELD_NUMBER: _ClassVar[int]
    R_AXIS_FIELD_NUMBER: _ClassVar[int]
    T_AXIS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    GAIN_SUSPECT_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    dataset: str
    patient_id: str
    diagnoses: _containers.RepeatedScalarFieldContainer[str]
    source_codes: _containers.RepeatedScalarFieldContainer[str]
    scp_likelihoods: _containers.ScalarMap[str, float]
    superclasses: _containers.RepeatedScalarFieldContainer[str]
    age: int
    age_over_89: bool
    sex: Sex
    sampling_rate_hz: float
    duration_s: float
    recorded_at: _timestamp_pb2.Timestamp
    source_path: str
    content_hash: str
    duplicate_of: str
    source_format: str
    acquired_month: str
    vendor: str
    device_model: str
    ventricular_rate_bpm: float
    pr_ms: float
    qrs_ms: float
    qt_ms: float
    qtc_ms: float
    p_axis: float
    r_axis: float
    t_axis: float
    archived: bool
    site: str
    gain_suspect: bool
    def __init__(self, record_id: _Optional[str] = ..., dataset: _Optional[str] = ..., patient_id: _Optional[str] = ..., diagnoses: _Optional[_Iterable[str]] = ..., source_codes: _Optional[_Iterable[str]] = ..., scp_likelihoods: _Optional[_Mapping[str, float]] = ..., superclasses: _Optional[_Iterable[str]] = ..., age: _Optional[int] = ..., age_over_89: _Optional[bool] = ..., sex: _Optional[_Union[Sex, str]] = ..., sampling_rate_hz: _Optional[float] = ..., duration_s: _Optional[float] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_path: _Optional[str] = ..., content_hash: _Optional[str] = ..., duplicate_of: _Optional[str] = ..., source_format: _Optional[str] = ..., acquired_month: _Optional[str] = ..., vendor: _Optional[str] = ..., device_model: _Optional[str] = ..., ventricular_rate_bpm: _Optional[float] = ..., pr_ms: _Optional[float] = ..., qrs_ms: _Optional[float] = ..., qt_ms: _Optional[float] = ..., qtc_ms: _Optional[float] = ..., p_axis: _Optional[float] = ..., r_axis: _Optional[float] = ..., t_axis: _Optional[float] = ..., archived: _Optional[bool] = ..., site: _Optional[str] = ..., gain_suspect: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("record_id", "score", "payload")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    score: float
    payload: Payload
    def __init__(self, record_id: _Optional[str] = ..., score: _Optional[float] = ..., payload: _Optional[_Union[Payload, _Mapping]] = ...) -> None: ...

class DiagnosisConcentration(_message.Message):
    __slots__ = ("code", "description", "count", "fraction", "base_rate", "enrichment", "in_query", "enrichment_low", "enrichment_high", "highlighted")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    BASE_RATE_FIELD_NUMBER: _ClassVar[int]
    ENRICHMENT_FIELD_NUMBER: _ClassVar[int]
    IN_QUERY_FIELD_NUMBER: _ClassVar[int]
    ENRICHMENT_LOW_FIELD_NUMBER: _ClassVar[int]
    ENRICHMENT_HIGH_FIELD_NUMBER: _ClassVar[int]
    HIGHLIGHTED_FIELD_NUMBER: _ClassVar[int]
    code: str
    description: str
    count: int
    fraction: float
    base_rate: float
    enrichment: float
    in_query: bool
    enrichment_low: float
    enrichment_high: float
    highlighted: bool
    def __init__(self, code: _Optional[str] = ..., description: _Optional[str] = ..., count: _Optional[int] = ..., fraction: _Optional[float] = ..., base_rate: _Optional[float] = ..., enrichment: _Optional[float] = ..., in_query: _Optional[bool] = ..., enrichment_low: _Optional[float] = ..., enrichment_high: _Optional[float] = ..., highlighted: _Optional[bool] = ...) -> None: ...

class NeighbourhoodSummary(_message.Message):
    __slots__ = ("n_neighbours", "collection_count", "diagnoses", "exclusions")
    N_NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSES_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIONS_FIELD_NUMBER: _ClassVar[int]
    n_neighbours: int
    collection_count: int
    diagnoses: _containers.RepeatedCompositeFieldContainer[DiagnosisConcentration]
    exclusions: _containers.RepeatedScalarFieldContainer[Exclusion]
    def __init__(self, n_neighbours: _Optional[int] = ..., collection_count: _Optional[int] = ..., diagnoses: _Optional[_Iterable[_Union[DiagnosisConcentration, _Mapping]]] = ..., exclusions: _Optional[_Iterable[_Union[Exclusion, str]]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("hits", "summary", "query_record_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    QUERY_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    summary: NeighbourhoodSummary
    query_record_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., summary: _Optional[_Union[NeighbourhoodSummary, _Mapping]] = ..., query_record_id: _Optional[str] = ...) -> None: ...

class SearchByRecordResponse(_message.Message):
    __slots__ = ("hits", "summary", "query_record_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    QUERY_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    summary: NeighbourhoodSummary
    query_record_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., summary: _Optional[_Union[NeighbourhoodSummary, _Mapping]] = ..., query_record_id: _Optional[str] = ...) -> None: ...

class SearchByEcgResponse(_message.Message):
    __slots__ = ("hits", "summary", "query_record_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    QUERY_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    summary: NeighbourhoodSummary
    query_record_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., summary: _Optional[_Union[NeighbourhoodSummary, _Mapping]] = ..., query_record_id: _Optional[str] = ...) -> None: ...

class SearchByVectorResponse(_message.Message):
    __slots__ = ("hits", "summary", "query_record_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    QUERY_RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    summary: NeighbourhoodSummary
    query_record_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., summary: _Optional[_Union[NeighbourhoodSummary, _Mapping]] = ..., query_record_id: _Optional[str] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("record_id", "ecg", "vector", "options", "include_same_patient")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    ECG_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SAME_PATIENT_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    ecg: Ecg
    vector: Vector
    options: SearchOptions
    include_same_patient: bool
    def __init__(self, record_id: _Optional[str] = ..., ecg: _Optional[_Union[Ecg, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., options: _Optional[_Union[SearchOptions, _Mapping]] = ..., include_same_patient: _Optional[bool] = ...) -> None: ...

class BatchSearchRequest(_message.Message):
    __slots__ = ("queries",)
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[Query]
    def __init__(self, queries: _Optional[_Iterable[_Union[Query, _Mapping]]] = ...) -> None: ...

class BatchSearchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("record_id", "with_vector")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTOR_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    with_vector: bool
    def __init__(self, record_id: _Optional[str] = ..., with_vector: _Optional[bool] = ...) -> None: ...

class GetRecordResponse(_message.Message):
    __slots__ = ("payload", "vector")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    payload: Payload
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, payload: _Optional[_Union[Payload, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class GetEcgRequest(_message.Message):
    __slots__ = ("record_id", "as_recorded")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    AS_RECORDED_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    as_recorded: bool
    def __init__(self, record_id: _Optional[str] = ..., as_recorded: _Optional[bool] = ...) -> None: ...

class GetEcgResponse(_message.Message):
    __slots__ = ("record_id", "lead_names", "sampling_rate_hz", "n_samples", "samples", "as_recorded", "recorded_rate_hz")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_NAMES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    AS_RECORDED_FIELD_NUMBER: _ClassVar[int]
    RECORDED_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    lead_names: _containers.RepeatedScalarFieldContainer[str]
    sampling_rate_hz: int
    n_samples: int
    samples: _containers.RepeatedScalarFieldContainer[float]
    as_recorded: bool
    recorded_rate_hz: float
    def __init__(self, record_id: _Optional[str] = ..., lead_names: _Optional[_Iterable[str]] = ..., sampling_rate_hz: _Optional[int] = ..., n_samples: _Optional[int] = ..., samples: _Optional[_Iterable[float]] = ..., as_recorded: _Optional[bool] = ..., recorded_rate_hz: _Optional[float] = ...) -> None: ...

class CollectionInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelCard(_message.Message):
    __slots__ = ("name", "version", "sampling_rate_hz", "input_samples", "lead_order", "embedding_dim", "normalisation", "initialisation", "json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    INPUT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LEAD_ORDER_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    NORMALISATION_FIELD_NUMBER: _ClassVar[int]
    INITIALISATION_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    sampling_rate_hz: int
    input_samples: int
    lead_order: _containers.RepeatedScalarFieldContainer[str]
    embedding_dim: int
    normalisation: str
    initialisation: str
    json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., sampling_rate_hz: _Optional[int] = ..., input_samples: _Optional[int] = ..., lead_order: _Optional[_Iterable[str]] = ..., embedding_dim: _Optional[int] = ..., normalisation: _Optional[str] = ..., initialisation: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class CollectionInfoResponse(_message.Message):
    __slots__ = ("name", "count", "dim", "model_version", "backend", "indexed", "diagnosis_counts", "model", "statistics_updated_at")
    class DiagnosisCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSIS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    dim: int
    model_version: str
    backend: str
    indexed: bool
    diagnosis_counts: _containers.ScalarMap[str, int]
    model: ModelCard
    statistics_updated_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ..., dim: _Optional[int] = ..., model_version: _Optional[str] = ..., backend: _Optional[str] = ..., indexed: _Optional[bool] = ..., diagnosis_counts: _Optional[_Mapping[str, int]] = ..., model: _Optional[_Union[ModelCard, _Mapping]] = ..., statistics_updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ServerStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RpcStats(_message.Message):
    __slots__ = ("method", "count", "errors", "p50_ms", "p95_ms", "p99_ms")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    method: str
    count: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    def __init__(self, method: _Optional[str] = ..., count: _Optional[int] = ..., errors: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class SearchPlanStats(_message.Message):
    __slots__ = ("plan", "count", "filtered", "estimate", "total")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    plan: str
    count: int
    filtered: int
    estimate: int
    total: int
    def __init__(self, plan: _Optional[str] = ..., count: _Optional[int] = ..., filtered: _Optional[int] = ..., estimate: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class ServerStatsResponse(_message.Message):
    __slots__ = ("uptime_s", "rpcs", "started_at", "ecgs_prepared", "search_plans")
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    RPCS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ECGS_PREPARED_FIELD_NUMBER: _ClassVar[int]
    SEARCH_PLANS_FIELD_NUMBER: _ClassVar[int]
    uptime_s: float
    rpcs: _containers.RepeatedCompositeFieldContainer[RpcStats]
    started_at: _timestamp_pb2.Timestamp
    ecgs_prepared: int
    search_plans: _containers.RepeatedCompositeFieldContainer[SearchPlanStats]
    def __init__(self, uptime_s: _Optional[float] = ..., rpcs: _Optional[_Iterable[_Union[RpcStats, _Mapping]]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ecgs_prepared: _Optional[int] = ..., search_plans: _Optional[_Iterable[_Union[SearchPlanStats, _Mapping]]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("name", "location", "collection", "backend", "created", "size_bytes", "count", "model_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    location: str
    collection: str
    backend: str
    created: _timestamp_pb2.Timestamp
    size_bytes: int
    count: int
    model_version: str
    def __init__(self, name: _Optional[str] = ..., location: _Optional[str] = ..., collection: _Optional[str] = ..., backend: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., count: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateSnapshotResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSnapshotsResponse(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ...) -> None: ...
