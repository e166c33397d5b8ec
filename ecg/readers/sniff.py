"""Tell the format from the bytes, by each format's content test in ``ecg.formats``."""

from __future__ import annotations

import re

from ecgsearch.ecg.formats import FORMATS, SNIFF_BYTES
from ecgsearch.ecg.readers.types import ReaderError

_XML_ROOTS = {f.xml_root: f.name for f in FORMATS if f.xml_root is not None}
_ROOT = re.compile(r"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)[\s/>]")
_NONE_OF = ", ".join(f.display for f in FORMATS[:-1]) + f" or {FORMATS[-1].display}"


def sniff(data: bytes) -> str:
    """The name of the format (ecg.formats) whose content test ``data`` passes: magic numbers first,
    then an XML root element, then the other tests; else ReaderError('format')."""
    for fmt in FORMATS:
        if fmt.magic is not None and fmt.magic.matches(data):
            return fmt.name
    head = _xml_head(data[:SNIFF_BYTES])
    if head is not None:
        for m in _ROOT.finditer(_strip_prolog(head)):
            name = _XML_ROOTS.get(m.group(2).lower())
            if name:
                return name
            raise ReaderError("format", f"XML root element <{m.group(2)[:40]}> is not an ECG format we read")
    for fmt in FORMATS:
        if fmt.detect is not None and fmt.detect(data[:SNIFF_BYTES]):
            return fmt.name
    raise ReaderError("format", f"content is not {_NONE_OF}")


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
