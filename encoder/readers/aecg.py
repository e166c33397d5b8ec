"""HL7 aECG (FDA annotated ECG): rhythm series through ecgdatakit, after a defusedxml parse.

The defusedxml parse refuses entity tricks before any library sees the bytes, and gives the
document's own id (``AnnotatedECG/id/@root``), a non-personal identifier, as ``native_id``.
aECG interpretation statements are free text, so no statement codes are taken.
"""

from __future__ import annotations

import dataclasses
from xml.etree.ElementTree import Element

from ecgsearch.encoder.readers import _datakit
from ecgsearch.encoder.readers.types import ReadEcg, ReaderError, make_read_ecg, number
from ecgsearch.encoder.readers.xmlsafe import parse_xml


def read(data: bytes) -> ReadEcg:
    root = parse_xml(data)
    if root.tag != "AnnotatedECG":
        raise ReaderError("xml", "root element is not AnnotatedECG")
    id_el = root.find("id")
    native_id = None
    if id_el is not None:
        native_id = (id_el.get("root") or "").strip() or None
    record = _datakit.parse(data, "hl7_aecg:HL7aECGParser", "hl7-aecg", ".xml")
    x, names, rate = _datakit.signal(record)
    header = _datakit.header(record)
    if header.measurements.qtc_ms is None:  # ecgdatakit skips MDC_ECG_TIME_PD_QTc
        qtc = _first_annotation(root, "MDC_ECG_TIME_PD_QTc")
        measurements = dataclasses.replace(header.measurements, qtc_ms=qtc)
        header = dataclasses.replace(header, measurements=measurements)
    return make_read_ecg(x, names, rate, "hl7-aecg", header, native_id=native_id)


def _first_annotation(root: Element, code: str) -> float | None:
    """Value of the first annotation with this MDC code: the global one, which aECG lists first."""
    for ann in root.iter("annotation"):
        code_el = ann.find("code")
        value = ann.find("value")
        found = code_el is not None and code_el.get("code") == code and value is not None
        if found and (value.get("unit") or "ms") == "ms":
            return number(value.get("value"))
    return None
