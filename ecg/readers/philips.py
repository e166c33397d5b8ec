"""Philips Sierra/PhilipsECG XML 1.03, 1.04, 1.04.01, 1.04.02 (XLI-compressed leads, often UTF-16).

One defusedxml parse; samples through ``philips_waves`` (sierraecg's XLI decoder), header fields read
here from the same tree. Vendor statement codes are the ``statementcode`` text and
``unparsedstatement/@code`` of statements not marked deleted; statement text is never taken. The
patient id (``patientid``, else ``MRN``; '---' is Philips for blank) is kept only as patient_key.
"""

from __future__ import annotations

from datetime import date, datetime
from xml.etree.ElementTree import Element

from ecgsearch.ecg.readers import philips_waves
from ecgsearch.ecg.readers.types import (
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
    statement_codes,
    year_month,
)
from ecgsearch.ecg.readers.units import to_mv
from ecgsearch.ecg.readers.xmlsafe import parse_xml, text

_TYPES = {"SierraECG", "PhilipsECG"}
_VERSIONS = {"1.03", "1.04", "1.04.01", "1.04.02"}


def read(data: bytes) -> ReadEcg:
    root = parse_xml(data)
    if root.tag != "restingecgdata":
        raise ReaderError("xml", "root element is not restingecgdata")
    doc_type, version = text(root, "documentinfo/documenttype"), text(root, "documentinfo/documentversion")
    if doc_type not in _TYPES or version not in _VERSIONS:
        raise ReaderError("documentversion", "not a Sierra/PhilipsECG 1.03-1.04.02 document")
    waves = _check_bounds(root)
    counts, labels, rate = philips_waves.decode(root, waves)
    resolution = _resolution(root, waves)
    zero = real(waves.get("signaloffset") or text(root, "dataacquisition/signalcharacteristics/signaloffset"))
    signal = to_mv(counts, resolution, -round(zero or 0) * resolution, "uV", "resolution")
    return make_read_ecg(signal, labels, rate, "philips-xml", _header(root))


def _check_bounds(root: Element) -> Element:
    """Channel count and duration from the header, before the XLI decoder expands anything."""
    waves = root.find("waveforms/parsedwaveforms")
    if waves is None:
        waves = root.find(".//parsedwaveforms")
    if waves is None:
        raise ReaderError("parsedwaveforms", "no waveform in this file")
    channels = count(waves.get("numberofleads") or text(root, ".//numberchannelsvalid"))
    if channels is not None:
        check_channels(channels)
    duration_ms = count(waves.get("durationperchannel"))
    rate = count(text(root, ".//samplingrate"))
    if duration_ms is not None and rate:
        check_duration(duration_ms * rate // 1000, rate)
    return waves


def _resolution(root: Element, waves: Element) -> float:
    """uV per count: ``parsedwaveforms/@resolution``, else ``resolution`` (1.04) or
    ``signalresolution`` (1.03) of the signal characteristics."""
    signal = "dataacquisition/signalcharacteristics/"
    stated = (
        waves.get("resolution"),
        text(root, signal + "resolution"),
        text(root, signal + "signalresolution"),
    )
    for value in stated:
        x = real(value)
        if x is not None and x > 0:
            return x
    raise ReaderError("resolution", "no signal resolution: amplitudes not convertible to mV")


def _header(root: Element) -> EcgHeader:
    acquisition = root.find("dataacquisition")
    acquired = _date(acquisition.get("date") if acquisition is not None else None)
    patient = root.find("patient/generalpatientdata")
    age_years, sex, patient_key = None, None, None
    if patient is not None:
        years = real(_value(patient, "age/years"))
        age_years = cap_age(round(years)) if years is not None else None
        if age_years is None:
            born = _date(_value(patient, "age/dateofbirth") or _value(patient, "dateofbirth"))
            age_years = age_from_dates(born, acquired)
        sex = sex_code(_value(patient, "sex"))
        patient_key = _value(patient, "patientid") or _value(patient, "MRN")
    vendor, model = _device(acquisition)
    return EcgHeader(
        age_years=age_years,
        sex=sex,
        acquired_month=year_month(acquired),
        vendor=vendor,
        device_model=model,
        measurements=_measurements(root),
        statement_codes=_codes(root),
        patient_key=patient_key,
    )


def _device(acquisition: Element | None) -> tuple[str | None, str | None]:
    """``machine/@detaildescription`` is 'manufacturer:product number:software'; the model is the
    machine text, else the product number."""
    machine = acquisition.find("machine") if acquisition is not None else None
    if machine is None:
        return None, None
    parts = [p.strip() for p in (machine.get("detaildescription") or "").split(":")]
    model = _blank((machine.text or "").strip()) or (parts[1] if len(parts) >= 2 else "")
    return parts[0] or None, model or None


def _measurements(root: Element) -> Measurements:
    """1.04 keeps them in interpretation/globalmeasurements and internalmeasurements/
    crossleadmeasurements, 1.03 in interpretation/interpretationmeasurements and
    measurements/globalmeasurements (``mean*`` names); the first source holding a value wins."""
    interp = root.find("interpretations/interpretation")
    if interp is None:
        interp = root.find(".//interpretation")
    measured = root.find("internalmeasurements")
    if measured is None:
        measured = root.find("measurements")
    sources = [
        node
        for parent, name in (
            (interp, "globalmeasurements"),
            (interp, "interpretationmeasurements"),
            (measured, "crossleadmeasurements"),
            (measured, "globalmeasurements"),
        )
        if parent is not None and (node := parent.find(name)) is not None
    ]

    def pick(*tags: str) -> float | None:
        for node in sources:
            for tag in tags:
                value = number(text(node, tag))
                if value is not None:
                    return value
        return None

    qtc = pick("qtcb")
    qtc = qtc if qtc is not None else pick("qtcf")
    return Measurements(
        ventricular_rate_bpm=pick("heartrate", "meanventrate"),
        pr_ms=pick("print", "meanprint"),
        qrs_ms=pick("qrsdur", "meanqrsdur"),
        qt_ms=pick("qtint", "meanqtint"),
        qtc_ms=qtc if qtc is not None else _first_number(root, ("meanqtc", "qtcb", "qtcf")),
        p_axis=pick("pfrontaxis"),
        r_axis=pick("qrsfrontaxis"),
        t_axis=pick("tfrontaxis"),
    )


def _codes(root: Element) -> tuple[str, ...]:
    found: list[str] = []
    for interp in root.iter("interpretation"):
        for stmt in interp.iter():
            if stmt.tag not in {"statement", "codedstatement"} or stmt.get("deleted", "").lower() == "true":
                continue
            code = stmt.find("statementcode")
            if code is not None and code.text:
                found.append(code.text)
            unparsed = stmt.find("unparsedstatement")
            if unparsed is not None and unparsed.get("code"):
                found.append(unparsed.get("code") or "")
    return statement_codes(found)


def _first_number(root: Element, tags: tuple[str, ...]) -> float | None:
    """1.03 keeps QTc as ``meanqtc`` (formula not stated), anywhere below these sections."""
    for section in ("interpretations", "internalmeasurements"):
        block = root.find(f".//{section}")
        if block is None:
            continue
        for tag in tags:
            el = block.find(f".//{tag}")
            if el is not None and number(el.text) is not None:
                return number(el.text)
    return None


def _value(el: Element, path: str) -> str | None:
    return _blank(text(el, path) or "")


def _blank(s: str) -> str | None:
    """Philips writes '---' (or '-') for an empty field."""
    return None if not s.strip("- ") else s


def _date(value: str | None) -> date | None:
    for fmt in ("%Y-%m-%d", "%m/%d/%Y"):
        try:
            return datetime.strptime((value or "").strip(), fmt).date()
        except ValueError:
            continue
    return None
