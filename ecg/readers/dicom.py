"""DICOM 12-lead / General ECG Waveform Storage through pydicom.

Reads the rhythm multiplex group (label 'RHYTHM', else the longest group that is not a median
beat), scales each channel by its sensitivity, correction factor and baseline into the unit its
Channel Sensitivity Units code names (uV or mV), and never treats the Waveform Padding Value as a
gap: ECG Toolkit writes padding = 0, so masking it would turn real zero samples into holes.
Measurements come from the Waveform Annotation Sequence (SCP-ECG and MDC codes, matched by meaning).
pydicom's value validation is switched off for reading, so that a malformed personal field is
never echoed into a warning or a log.
"""

from __future__ import annotations

import io
import warnings
from datetime import date, datetime

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.waveforms.numpy_handler import multiplex_array

from ecgsearch.ecg.readers.types import (
    EcgHeader,
    Measurements,
    ReadEcg,
    ReaderError,
    age_from_dates,
    cap_age,
    check_channels,
    check_duration,
    make_read_ecg,
    number,
    real,
    sex_code,
    year_month,
)

pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_UNIT_TO_MV = {"uv": 1e-3, "mv": 1.0, "v": 1e3}
# measurement -> annotation code meanings (lower case, SCP-ECG and MDC spellings)
_MEANINGS = {
    "ventricular_rate_bpm": ("ventricular heart rate", "heart rate", "ventricular rate"),
    "pr_ms": ("pr interval", "pr interval global"),
    "qrs_ms": ("qrs duration", "qrs duration global"),
    "qt_ms": ("qt interval", "qt interval global"),
    "qtc_ms": ("qtc interval", "qtc interval global"),
    "p_axis": ("p axis",),
    "r_axis": ("qrs axis", "r axis"),
    "t_axis": ("t axis",),
}


def read(data: bytes) -> ReadEcg:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read(pydicom.dcmread(io.BytesIO(data)))
    except ReaderError:
        raise
    except Exception as exc:  # pydicom raises many types for truncated or corrupt files
        raise ReaderError("dicom", f"cannot parse ({type(exc).__name__})") from None


def _read(ds: Dataset) -> ReadEcg:
    waves = list(ds.get("WaveformSequence") or [])
    if not waves:
        raise ReaderError("WaveformSequence", "no waveform in this DICOM object")
    index = _rhythm_group(waves)
    group = waves[index]
    rate = real(group.get("SamplingFrequency"))
    if rate is None or rate <= 0:
        raise ReaderError("SamplingFrequency", "missing or invalid")
    check_channels(int(group.get("NumberOfWaveformChannels") or 0))
    check_duration(int(group.get("NumberOfWaveformSamples") or 0), rate)
    try:
        x = multiplex_array(ds, index, as_raw=True).astype(np.float64).T
    except Exception as exc:
        raise ReaderError("WaveformData", f"cannot decode ({type(exc).__name__})") from None
    channels = list(group.get("ChannelDefinitionSequence") or [])
    if len(channels) != x.shape[0]:
        raise ReaderError("ChannelDefinitionSequence", f"{len(channels)} definitions, {x.shape[0]} channels")
    for j, ch in enumerate(channels):
        gain = _float(ch, "ChannelSensitivity", 1.0) * _float(ch, "ChannelSensitivityCorrectionFactor", 1.0)
        x[j] = (x[j] * gain + _float(ch, "ChannelBaseline", 0.0)) * _to_mv(ch)
    names = [_channel_name(ch) for ch in channels]
    uid = str(ds.get("SOPInstanceUID") or "").strip() or None
    return make_read_ecg(x, names, rate, "dicom", _header(ds), native_id=uid)


def _rhythm_group(waves: list[Dataset]) -> int:
    labels = [str(w.get("MultiplexGroupLabel") or "").strip().lower() for w in waves]
    if "rhythm" in labels:
        return labels.index("rhythm")
    candidates = [i for i, label in enumerate(labels) if "median" not in label]
    if not candidates:
        raise ReaderError("WaveformSequence", "only median-beat groups, no rhythm")
    return max(candidates, key=lambda i: int(waves[i].get("NumberOfWaveformSamples") or 0))


def _float(ds: Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    x = real(value) if value is not None and value != "" else default
    if x is None:
        raise ReaderError(keyword, "not a number")
    return x


def _to_mv(ch: Dataset) -> float:
    units = ch.get("ChannelSensitivityUnitsSequence")
    code = str(units[0].get("CodeValue") or "") if units else ""
    factor = _UNIT_TO_MV.get(code.strip().lower().replace("µ", "u"))
    if factor is None:
        raise ReaderError("ChannelSensitivityUnitsSequence", f"unit {code[:16]!r} is not a voltage")
    return factor


def _channel_name(ch: Dataset) -> str:
    source = ch.get("ChannelSourceSequence")
    if source and source[0].get("CodeMeaning"):
        return str(source[0].CodeMeaning)
    return str(ch.get("ChannelLabel") or "")


def _header(ds: Dataset) -> EcgHeader:
    acquired = _date(str(ds.get("AcquisitionDateTime") or "")[:8]) or _date(
        str(ds.get("ContentDate") or ds.get("StudyDate") or "")
    )
    age = _dicom_age(str(ds.get("PatientAge") or ""))
    if age is None:
        age = age_from_dates(_date(str(ds.get("PatientBirthDate") or "")), acquired)
    vendor = str(ds.get("Manufacturer") or "").strip()
    return EcgHeader(
        age_years=age,
        sex=sex_code(ds.get("PatientSex")),
        acquired_month=year_month(acquired),
        vendor=vendor if vendor and vendor.lower() != "unknown" else None,
        device_model=str(ds.get("ManufacturerModelName") or "").strip() or None,
        measurements=_measurements(ds),
        statement_codes=(),
        patient_key=str(ds.get("PatientID") or "").strip() or None,
    )


def _measurements(ds: Dataset) -> Measurements:
    found: dict[str, float] = {}
    rr: dict[str, float] = {}
    for ann in ds.get("WaveformAnnotationSequence") or []:
        concept = ann.get("ConceptNameCodeSequence")
        value = number(ann.get("NumericValue")) if "NumericValue" in ann else None
        if not concept or value is None:
            continue
        meaning = str(concept[0].get("CodeMeaning") or "").strip().lower()
        if meaning == "rr interval":
            rr.setdefault("rr", value)
        for name, meanings in _MEANINGS.items():
            if meaning in meanings and name not in found:
                found[name] = value
    if "ventricular_rate_bpm" not in found and rr.get("rr") and rr["rr"] > 0:
        found["ventricular_rate_bpm"] = round(60_000.0 / rr["rr"])
    return Measurements(**found)


def _dicom_age(value: str) -> int | None:
    """DICOM AS: nnnD, nnnW, nnnM or nnnY."""
    value = value.strip().upper()
    if len(value) != 4 or not value[:3].isdigit():
        return None
    n = int(value[:3])
    per_year = {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}.get(value[3])
    return cap_age(n / per_year) if per_year else None


def _date(value: str) -> date | None:
    try:
        return datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None
