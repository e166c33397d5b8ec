"""GE MUSE RestingECG XML: base64 little-endian int16 rhythm leads times LeadAmplitudeUnitsPerBit.

Written by hand (stdlib base64 + defusedxml): the format is small and no library reads it better;
tests compare it with ecgdatakit's MUSE parser sample for sample. MUSE stores 8 leads (I, II,
V1-V6); III, aVR, aVL and aVF are derived later (``complete_leads``). Diagnosis statements are free
text in MUSE XML, so no statement codes are taken from it.
"""

from __future__ import annotations

import base64
import binascii
from datetime import date, datetime
from xml.etree.ElementTree import Element

import numpy as np

from ecgsearch.ecg.readers.types import (
    MAX_SECONDS,
    EcgHeader,
    Measurements,
    ReadEcg,
    ReaderError,
    age_from_dates,
    cap_age,
    check_channels,
    check_duration,
    count,
    make_read_ecg,
    number,
    real,
    sex_code,
    year_month,
)
from ecgsearch.ecg.readers.xmlsafe import parse_xml, text

_UNITS_TO_MV = {"MICROVOLTS": 1e-3, "MILLIVOLTS": 1.0, "UV": 1e-3, "MV": 1.0}


def read(data: bytes) -> ReadEcg:
    root = parse_xml(data)
    if root.tag != "RestingECG":
        raise ReaderError("xml", "root element is not RestingECG")
    wave = _rhythm_waveform(root)
    rate = _rate(wave)
    leads = wave.findall("LeadData")
    check_channels(len(leads))
    names, rows = [], []
    for lead in leads:
        names.append(text(lead, "LeadID") or "")
        rows.append(_lead_samples(lead, rate))
    n = min(len(r) for r in rows)
    if n == 0 or any(len(r) != n for r in rows):
        raise ReaderError("LeadData", "leads differ in length")
    return make_read_ecg(np.stack(rows), names, rate, "muse-xml", _header(root))


def _rhythm_waveform(root: Element) -> Element:
    for wave in root.findall("Waveform"):
        if (text(wave, "WaveformType") or "").lower() == "rhythm":
            return wave
    raise ReaderError("Waveform", "no rhythm waveform")


def _rate(wave: Element) -> float:
    base = real(text(wave, "SampleBase"))
    exponent = real(text(wave, "SampleExponent")) or 0.0
    if base is None or not -3 <= exponent <= 3:
        raise ReaderError("SampleBase", "missing or invalid sampling rate")
    return base * 10.0**exponent


def _lead_samples(lead: Element, rate: float) -> np.ndarray:
    declared = count(text(lead, "LeadSampleCountTotal"))
    check_duration(declared or 0, rate)
    raw = text(lead, "WaveFormData")
    if raw is None:
        raise ReaderError("WaveFormData", "empty lead")
    if len(raw) > MAX_SECONDS * rate * 2 * 4 / 3 + 4096:
        raise ReaderError("WaveFormData", "lead data longer than the duration limit")
    try:
        buf = base64.b64decode("".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ReaderError("WaveFormData", "not valid base64") from None
    if len(buf) % 2:
        raise ReaderError("WaveFormData", "odd number of bytes for 16-bit samples")
    samples = np.frombuffer(buf, dtype="<i2").astype(np.float64)
    if declared is not None and len(samples) != declared:
        raise ReaderError("LeadSampleCountTotal", f"{len(samples)} samples decoded, header says {declared}")
    per_bit = real(text(lead, "LeadAmplitudeUnitsPerBit"))
    unit = (text(lead, "LeadAmplitudeUnits") or "MICROVOLTS").upper()
    if per_bit is None or per_bit <= 0 or unit not in _UNITS_TO_MV:
        raise ReaderError("LeadAmplitudeUnitsPerBit", "missing or unknown amplitude scale")
    return samples * per_bit * _UNITS_TO_MV[unit]


def _header(root: Element) -> EcgHeader:
    acquired = _muse_date(text(root, "TestDemographics/AcquisitionDate"))
    age = number(text(root, "PatientDemographics/PatientAge"))
    units = (text(root, "PatientDemographics/AgeUnits") or "YEARS").upper()
    age_years = cap_age(age) if age is not None and units == "YEARS" else None
    if age_years is None:
        birth = _muse_date(text(root, "PatientDemographics/DateofBirth"))
        age_years = age_from_dates(birth, acquired)
    m = "RestingECGMeasurements/"
    return EcgHeader(
        age_years=age_years,
        sex=sex_code(text(root, "PatientDemographics/Gender")),
        acquired_month=year_month(acquired),
        vendor="GE Healthcare" if root.find("TestDemographics") is not None else None,
        device_model=text(root, "TestDemographics/AcquisitionDevice"),
        measurements=Measurements(
            ventricular_rate_bpm=number(text(root, m + "VentricularRate")),
            pr_ms=number(text(root, m + "PRInterval")),
            qrs_ms=number(text(root, m + "QRSDuration")),
            qt_ms=number(text(root, m + "QTInterval")),
            qtc_ms=number(text(root, m + "QTCorrected")),
            p_axis=number(text(root, m + "PAxis")),
            r_axis=number(text(root, m + "RAxis")),
            t_axis=number(text(root, m + "TAxis")),
        ),
        statement_codes=(),
        patient_key=text(root, "PatientDemographics/PatientID"),
    )


def _muse_date(value: str | None) -> date | None:
    """MUSE writes dates as MM-DD-YYYY."""
    if not value:
        return None
    for fmt in ("%m-%d-%Y", "%m/%d/%Y", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    return None
