"""Tell the format from the bytes: magic numbers for binary formats, the root element for XML."""

from __future__ import annotations

import re

from ecgsearch.ecg.readers.types import ReaderError

_XML_ROOTS = {"restingecg": "muse-xml", "restingecgdata": "philips-xml", "annotatedecg": "hl7-aecg"}
_ROOT = re.compile(r"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)[\s/>]")


def sniff(data: bytes) -> str:
    """One of FORMATS, or ReaderError('format') when the content is none of them."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if len(data) >= 22 and data[16:22] == b"SCPECG":
        return "scp-ecg"
    if len(data) >= 256 and data[:8] == b"0       ":
        return "edf"
    head = _xml_head(data[:8192])
    if head is not None:
        for m in _ROOT.finditer(_strip_prolog(head)):
            fmt = _XML_ROOTS.get(m.group(2).lower())
            if fmt:
                return fmt
            raise ReaderError("format", f"XML root element <{m.group(2)[:40]}> is not an ECG format we read")
    raise ReaderError("format", "content is not MUSE XML, Philips XML, HL7 aECG, DICOM, SCP-ECG or EDF")


def _xml_head(data: bytes) -> str | None:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="ignore")
    elif data[:2] == b"<\x00":
        text = data.decode("utf-16-le", errors="ignore")
    elif data[:2] == b"\x00<":
        text = data.decode("utf-16-be", errors="ignore")
    else:
        text = data.decode("latin-1")
    text = text.lstrip("\ufeff\ufffe \t\r\n")
    if text.startswith("ï»¿"):  # UTF-8 BOM read as latin-1
        text = text[3:]
    return text if text.startswith("<") else None


def _strip_prolog(text: str) -> str:
    """Drop the XML declaration, comments, processing instructions and a DOCTYPE before the root."""
    text = re.sub(r"<\?.*?\?>", " ", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    return re.sub(r"<!DOCTYPE[^\[>]*(\[.*?\])?\s*>", " ", text, flags=re.S | re.I)
