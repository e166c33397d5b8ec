"""SCP-ECG (EN 1064): Huffman and difference decoding through ecgdatakit, the only maintained Python
decoder. Its global measurements (section 7) come as fiducial points; PR, QRS and QT are the
intervals between them (29999 marks an undefined point). Statements in sections 8/11 are free text
here, so no statement codes are taken."""

from __future__ import annotations

import ast
import dataclasses

from ecgsearch.encoder.readers import _datakit
from ecgsearch.encoder.readers.types import Measurements, ReadEcg, make_read_ecg, number

_UNDEFINED = 29999


def read(data: bytes) -> ReadEcg:
    record = _datakit.parse(data, "scp_ecg:SCPECGParser", "scp-ecg", ".scp")
    x, names, rate = _datakit.signal(record)
    header = _datakit.header(record)
    header = dataclasses.replace(header, measurements=_intervals(record.raw_metadata, header.measurements))
    return make_read_ecg(x, names, rate, "scp-ecg", header)


def _intervals(meta: dict, found: Measurements) -> Measurements:
    """Fill PR, QRS, QT and QTc from section 7's first (global) measurement block where missing."""
    try:
        blocks = ast.literal_eval(str(meta.get("measurement_blocks", "[]")))
        block = blocks[0] if blocks and isinstance(blocks[0], dict) else {}
    except (ValueError, SyntaxError):
        block = {}
    points = {k: block.get(k) for k in ("p_onset", "qrs_onset", "qrs_offset", "t_offset")}
    ok = {k: v for k, v in points.items() if isinstance(v, int) and 0 <= v < _UNDEFINED}

    def span(a: str, b: str) -> float | None:
        return float(ok[b] - ok[a]) if a in ok and b in ok and ok[b] > ok[a] else None

    return dataclasses.replace(
        found,
        pr_ms=found.pr_ms if found.pr_ms is not None else span("p_onset", "qrs_onset"),
        qrs_ms=found.qrs_ms if found.qrs_ms is not None else span("qrs_onset", "qrs_offset"),
        qt_ms=found.qt_ms if found.qt_ms is not None else span("qrs_onset", "t_offset"),
        qtc_ms=found.qtc_ms if found.qtc_ms is not None else number(meta.get("qtc_ms")),
    )
