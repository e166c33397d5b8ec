"""HL7 aECG (FDA annotated ECG, PORT_MT020001) read here over the defusedxml tree.

The rhythm series' first sequence set holds one GLIST time sequence (its ``increment`` gives the
sampling interval) and one SLIST_PQ per lead, ``value = origin + scale * digit``. No library: the
format is plain XML and ~100 lines cover it (tests compare it with ecgdatakit's aECG parser sample for
sample). The document's own id (``AnnotatedECG/id/@root``), a non-personal identifier, is the
``native_id``; header fields come from ``aecg_header``. aECG interpretation statements are free text,
so no statement codes are taken.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

import numpy as np

from ecgsearch.ecg.readers.aecg_header import header
from ecgsearch.ecg.readers.types import (
    MAX_SECONDS,
    ReadEcg,
    ReaderError,
    check_channels,
    check_duration,
    make_read_ecg,
    real,
)
from ecgsearch.ecg.readers.units import rescale, sampling_rate, to_mv, voltage_unit
from ecgsearch.ecg.readers.xmlsafe import parse_xml

_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6}


def read(data: bytes) -> ReadEcg:
    root = parse_xml(data)
    if root.tag != "AnnotatedECG":
        raise ReaderError("xml", "root element is not AnnotatedECG")
    id_el = root.find("id")
    native_id = ((id_el.get("root") or "").strip() or None) if id_el is not None else None
    rhythm = rhythm_series(root)
    x, names, rate = _signal(rhythm)
    return make_read_ecg(x, names, rate, "hl7-aecg", header(root, rhythm), native_id=native_id)


def rhythm_series(root: Element) -> Element:
    """The first series that is not a representative beat."""
    for series in root.findall("component/series"):
        if _code(series).upper() != "REPRESENTATIVE_BEAT":
            return series
    raise ReaderError("series", "no rhythm series")


def _signal(series: Element) -> tuple[np.ndarray, list[str], float]:
    sequence_set = series.find("component/sequenceSet")
    if sequence_set is None:
        raise ReaderError("sequenceSet", "the rhythm series has no sequence set")
    rate: float | None = None
    leads: list[tuple[str, Element]] = []
    for seq in sequence_set.findall("component/sequence"):
        code, value = _code(seq), seq.find("value")
        if code.upper().startswith("TIME_") and rate is None:
            rate = _rate(value)
        elif "_ECG_LEAD_" in code.upper() and value is not None:
            suffix = code[code.upper().index("_ECG_LEAD_") + len("_ECG_LEAD_") :]
            leads.append(("-aVR" if suffix.upper() == "AVRNEG" else suffix, value))
            check_channels(len(leads))
    if not leads:
        raise ReaderError("sequence", "no ECG lead in the rhythm series")
    if rate is None:
        raise ReaderError("increment", "no time sequence with a sampling interval")
    rows = [_lead(value, rate) for _, value in leads]
    if len({len(r) for r in rows}) != 1:
        raise ReaderError("digits", "leads differ in length")
    return np.stack(rows), [name for name, _ in leads], rate


def _rate(value: Element | None) -> float:
    increment = value.find("increment") if value is not None else None
    step = real(increment.get("value")) if increment is not None else None
    unit = (increment.get("unit") or "").strip() if increment is not None else ""
    if step is None or step <= 0 or unit not in _SECONDS:
        raise ReaderError("increment", "missing, not positive, or not in s/ms/us")
    return sampling_rate(1.0 / (step * _SECONDS[unit]))


def _lead(value: Element, rate: float) -> np.ndarray:
    """One SLIST_PQ in mV."""
    raw = value.findtext("digits") or ""
    if len(raw) > 32 * MAX_SECONDS * rate + 4096:  # refused before splitting into millions of strings
        raise ReaderError("digits", "lead data longer than the duration limit")
    digits = raw.split()
    if not digits:
        raise ReaderError("digits", "empty lead")
    check_duration(len(digits), rate)
    try:
        counts = np.array(digits, dtype=np.float64)
    except ValueError:
        raise ReaderError("digits", "a sample is not a number") from None
    scale_el, origin_el = value.find("scale"), value.find("origin")
    scale = real(scale_el.get("value")) if scale_el is not None else None
    unit = voltage_unit(scale_el.get("unit")) if scale_el is not None else None
    if scale is None or unit is None:
        raise ReaderError("scale", "missing, or not in a voltage unit")
    origin = (real(origin_el.get("value")) if origin_el is not None else None) or 0.0
    origin_unit = voltage_unit(origin_el.get("unit")) if origin_el is not None else None
    if origin_unit is not None and origin_unit != unit:
        origin = rescale(origin, origin_unit, unit)
    return to_mv(counts, scale, origin, unit, "scale")


def _code(el: Element) -> str:
    code = el.find("code")
    return (code.get("code") or "").strip() if code is not None else ""
