"""Header fields of an HL7 aECG: subject sex and age, acquisition month, device, global measurements.

Age is the reported age (LOINC 21612-7 related observation) when there is one, else derived from the
birth time at the acquisition date. Global measurements are annotations outside any beat
(``MDC_ECG_BEAT``) and not restricted to one lead, from the rhythm series then the representative-beat
series; a person's annotation set wins over the device's. The trial subject id is kept only as
patient_key; names, sites and free-text findings are never read.
"""

from __future__ import annotations

import math
import re
from datetime import date
from xml.etree.ElementTree import Element

from ecgsearch.ecg.readers.types import (
    EcgHeader,
    Measurements,
    age_from_dates,
    cap_age,
    number,
    real,
    sex_code,
    year_month,
)

_SUBJECT = "componentOf/timepointEvent/componentOf/subjectAssignment/subject/trialSubject"
_PLACEHOLDERS = {"", "?", "UNK", "NA", "N/A"}
_AGE_YEARS = {"a": 1.0, "yr": 1.0, "mo": 1 / 12, "wk": 7 / 365.25, "d": 1 / 365.25, "h": 1 / 8766}
_TS = re.compile(r"^(\d{4})(\d{2})(\d{2})")

# MDC code -> (Measurements field, quantity); the _GL variants are the same global values.
_CODES = {
    "MDC_ECG_HEART_RATE": ("ventricular_rate_bpm", "rate"),
    "MDC_ECG_TIME_PD_PR": ("pr_ms", "time"),
    "MDC_ECG_TIME_PD_QRS": ("qrs_ms", "time"),
    "MDC_ECG_TIME_PD_QT": ("qt_ms", "time"),
    "MDC_ECG_TIME_PD_QTcB": ("qtc_ms", "time"),
    "MDC_ECG_TIME_PD_QTcF": ("qtcf", "time"),
    "MDC_ECG_TIME_PD_QTc": ("qtc_any", "time"),
    "MDC_ECG_ANGLE_P_FRONT": ("p_axis", "angle"),
    "MDC_ECG_ANGLE_QRS_FRONT": ("r_axis", "angle"),
    "MDC_ECG_ANGLE_T_FRONT": ("t_axis", "angle"),
} | {
    f"{code}_GL": target
    for code, target in {
        "MDC_ECG_TIME_PD_PR": ("pr_ms", "time"),
        "MDC_ECG_TIME_PD_QRS": ("qrs_ms", "time"),
        "MDC_ECG_TIME_PD_QT": ("qt_ms", "time"),
        "MDC_ECG_ANGLE_P_FRONT": ("p_axis", "angle"),
        "MDC_ECG_ANGLE_QRS_FRONT": ("r_axis", "angle"),
        "MDC_ECG_ANGLE_T_FRONT": ("t_axis", "angle"),
    }.items()
}
_UNITS = {
    "time": {"ms": 1.0, "s": 1000.0, "us": 0.001, "\u00b5s": 0.001, "min": 60000.0},
    "rate": {"bpm": 1.0, "/min": 1.0, "1/min": 1.0, "{beats}/min": 1.0, "{beat}/min": 1.0, "Hz": 60.0},
    "angle": {"deg": 1.0, "rad": 180.0 / math.pi},
}


def header(root: Element, rhythm: Element) -> EcgHeader:
    acquired = _acquired(root, rhythm)
    subject = root.find(_SUBJECT)
    person = subject.find("subjectDemographicPerson") if subject is not None else None
    subject_id = subject.find("id") if subject is not None else None
    key = (subject_id.get("extension") or "").strip() if subject_id is not None else ""
    gender = person.find("administrativeGenderCode") if person is not None else None
    birth = person.find("birthTime") if person is not None else None
    age = _reported_age(root)
    if age is None:
        age = age_from_dates(_ts(birth.get("value") if birth is not None else None), acquired)
    device = rhythm.find("author/seriesAuthor/manufacturedSeriesDevice/manufacturerModelName")
    vendor = rhythm.find("author/seriesAuthor/manufacturerOrganization/name")
    return EcgHeader(
        age_years=age,
        sex=sex_code(gender.get("code") if gender is not None else None),
        acquired_month=year_month(acquired),
        vendor=_text(vendor),
        device_model=_text(device),
        measurements=_measurements(root, rhythm),
        statement_codes=(),
        patient_key=None if key.upper() in _PLACEHOLDERS else key,
    )


def _acquired(root: Element, rhythm: Element) -> date | None:
    """The document's effective time (low or center), else the rhythm series' own."""
    for node in (root.find("effectiveTime"), rhythm.find("effectiveTime")):
        if node is None:
            continue
        for edge in ("low", "center"):
            el = node.find(edge)
            found = _ts(el.get("value") if el is not None else None)
            if found is not None:
                return found
    return None


def _reported_age(root: Element) -> int | None:
    for obs in root.findall("controlVariable/relatedObservation"):
        code, value = obs.find("code"), obs.find("value")
        if code is None or value is None or code.get("code") != "21612-7":
            continue
        age, factor = real(value.get("value")), _AGE_YEARS.get(value.get("unit") or "a")
        if age is not None and factor:
            return cap_age(int(age * factor))
    return None


def _measurements(root: Element, rhythm: Element) -> Measurements:
    machine: dict[str, float] = {}
    person: dict[str, float] = {}
    for series in (rhythm, _beat_series(root)):
        if series is None:
            continue
        for aset in series.findall("subjectOf/annotationSet"):
            by_person = aset.find("author/assignedEntity/assignedAuthorType/assignedPerson") is not None
            for ann in aset.findall("component/annotation"):
                _collect(ann, person if by_person else machine)
    found = machine | person
    qtc = next((found[k] for k in ("qtc_ms", "qtcf", "qtc_any") if k in found), None)
    return Measurements(
        ventricular_rate_bpm=found.get("ventricular_rate_bpm"),
        pr_ms=found.get("pr_ms"),
        qrs_ms=found.get("qrs_ms"),
        qt_ms=found.get("qt_ms"),
        qtc_ms=qtc,
        p_axis=found.get("p_axis"),
        r_axis=found.get("r_axis"),
        t_axis=found.get("t_axis"),
    )


def _beat_series(root: Element) -> Element | None:
    """The representative-beat series: a top-level series so coded, or a derived series."""
    for series in root.findall("component/series"):
        if _code(series).upper() == "REPRESENTATIVE_BEAT":
            return series
        for derived in series.findall("derivation/derivedSeries"):
            if _code(derived).upper() in {"REPRESENTATIVE_BEAT", ""}:
                return derived
    return None


def _collect(ann: Element, into: dict[str, float]) -> None:
    """First value per field, depth first; beats and lead-restricted annotations are skipped whole."""
    code = _code(ann)
    if code.upper() == "MDC_ECG_BEAT" or _lead_restricted(ann):
        return
    value = ann.find("value")
    if code in _CODES and value is not None:
        field, quantity = _CODES[code]
        x, unit = real(value.get("value")), (value.get("unit") or "").strip()
        factor = _UNITS[quantity].get(unit) if unit else 1.0
        if x is not None and factor is not None and number(x * factor) is not None:
            into.setdefault(field, x * factor)
    for sub in ann.findall("component/annotation"):
        _collect(sub, into)


def _lead_restricted(ann: Element) -> bool:
    for boundary in ann.findall("support/supportingROI/component/boundary"):
        if "_ECG_LEAD_" in _code(boundary).upper():
            return True
    return False


def _code(el: Element) -> str:
    code = el.find("code")
    return (code.get("code") or "").strip() if code is not None else ""


def _text(el: Element | None) -> str | None:
    s = " ".join("".join(el.itertext()).split()) if el is not None else ""
    return s or None


def _ts(value: str | None) -> date | None:
    """An HL7 TS (YYYYMMDD[HHMMSS...]) to its date; None below day precision or when invalid."""
    m = _TS.match((value or "").strip())
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
