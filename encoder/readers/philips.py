"""Philips Sierra/PhilipsECG XML 1.03, 1.04, 1.04.01 (XLI-compressed leads, often UTF-16).

Samples through ecgdatakit's XLI decoder (tests check it equals sierraecg, the Philips reference
decoder, sample for sample); header fields through ecgdatakit, except the vendor statement codes
(``statementcode`` text and ``unparsedstatement/@code`` of statements not marked deleted), which it
does not expose and which are read here from the defusedxml tree. Statement text is never taken.
"""

from __future__ import annotations

import dataclasses
from xml.etree.ElementTree import Element

from ecgsearch.encoder.readers import _datakit
from ecgsearch.encoder.readers.types import (
    ReadEcg,
    ReaderError,
    check_channels,
    check_duration,
    count,
    make_read_ecg,
    number,
    statement_codes,
)
from ecgsearch.encoder.readers.xmlsafe import parse_xml, text


def read(data: bytes) -> ReadEcg:
    root = parse_xml(data)
    if root.tag != "restingecgdata":
        raise ReaderError("xml", "root element is not restingecgdata")
    _check_bounds(root)
    record = _datakit.parse(data, "sierra_xml:SierraXMLParser", "philips-xml", ".xml")
    x, names, rate = _datakit.signal(record)
    header = _datakit.header(record, _codes(root))
    if header.measurements.qtc_ms is None:  # 1.03 keeps QTc as meanqtc, which ecgdatakit skips
        qtc = _first_number(root, ("meanqtc", "qtcb", "qtcf"))
        header = dataclasses.replace(
            header, measurements=dataclasses.replace(header.measurements, qtc_ms=qtc)
        )
    return make_read_ecg(x, names, rate, "philips-xml", header)


def _check_bounds(root: Element) -> None:
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
    for section in ("interpretations", "internalmeasurements"):
        block = root.find(f".//{section}")
        if block is None:
            continue
        for tag in tags:
            el = block.find(f".//{tag}")
            if el is not None and number(el.text) is not None:
                return number(el.text)
    return None
