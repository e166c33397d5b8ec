"""HL7 aECG (FDA annotated ECG): rhythm series through ecgdatakit, after a defusedxml parse.

The defusedxml parse refuses entity tricks before any library sees the bytes, and gives the
document's own id (``AnnotatedECG/id/@root``), a non-personal identifier, as ``native_id``.
aECG interpretation statements are free text, so no statement codes are taken.
"""

from __future__ import annotations

from ecgsearch.encoder.readers import _datakit
from ecgsearch.encoder.readers.types import ReadEcg, ReaderError, make_read_ecg
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
    return make_read_ecg(x, names, rate, "hl7-aecg", _datakit.header(record), native_id=native_id)
