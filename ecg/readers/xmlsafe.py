"""Parse XML with defusedxml only: entity declarations (billion laughs, external entities) are refused.

A DOCTYPE line alone is allowed because GE MUSE writes one (``<!DOCTYPE RestingECG SYSTEM
"restecg.dtd">``); the DTD is never fetched.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as det
from defusedxml import DefusedXmlException

from ecgsearch.ecg.readers.types import ReaderError


def parse_xml(data: bytes) -> Element:
    """Bytes (UTF-8, ISO-8859-1 or UTF-16 with its BOM) -> root element, namespaces stripped."""
    try:
        root = det.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise ReaderError("xml", "entity declarations are not allowed") from None
    except (ParseError, ValueError, UnicodeError):
        raise ReaderError("xml", "not well-formed XML (truncated or wrong encoding)") from None
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.rsplit("}", 1)[1]
        if el.attrib and any("}" in k for k in el.attrib):
            el.attrib = {k.rsplit("}", 1)[-1]: v for k, v in el.attrib.items()}
    return root


def text(root: Element, path: str) -> str | None:
    """Stripped text at ``path`` (ElementTree path syntax), None when absent or blank."""
    el = root.find(path)
    if el is None or el.text is None:
        return None
    s = el.text.strip()
    return s or None
