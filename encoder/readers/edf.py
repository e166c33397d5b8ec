"""EDF/EDF+ through ecgdatakit (physical min/max scaling, mV). The EDF patient field can hold a name
and birth date: only sex, the derived age and the EDF+ patient code (as patient_key) are kept. The
header's record count and sizes are checked against the file length first, so a truncated file is
refused rather than read short."""

from __future__ import annotations

import dataclasses

from ecgsearch.encoder.readers import _datakit
from ecgsearch.encoder.readers.types import ReadEcg, ReaderError, check_channels, make_read_ecg


def read(data: bytes) -> ReadEcg:
    _check_size(data)
    record = _datakit.parse(data, "edf:EDFParser", "edf", ".edf")
    x, names, rate = _datakit.signal(record)
    header = _datakit.header(record)
    if data[192:196] != b"EDF+" or (header.patient_key or "X").upper() == "X":
        # plain EDF's patient field is free text, not an id; EDF+ writes X for an unknown code
        header = dataclasses.replace(header, patient_key=None)
    return make_read_ecg(x, names, rate, "edf", header)


def _check_size(data: bytes) -> None:
    try:
        header_bytes = int(data[184:192].decode("ascii").strip())
        n_records = int(data[236:244].decode("ascii").strip())
        n_signals = int(data[252:256].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ReaderError("edf", "header fields are not numbers") from None
    check_channels(n_signals if n_signals < 2 else n_signals - 1)  # an EDF+ annotation signal may be extra
    start = 256 + n_signals * 216
    if header_bytes != 256 * (n_signals + 1) or len(data) < header_bytes:
        raise ReaderError("edf", "header length does not match its number of signals")
    try:
        per_record = sum(
            int(data[start + 8 * i : start + 8 * i + 8].decode("ascii")) for i in range(n_signals)
        )
    except (UnicodeDecodeError, ValueError):
        raise ReaderError("edf", "samples per record are not numbers") from None
    body = len(data) - header_bytes
    record_bytes = 2 * per_record
    if record_bytes <= 0 or (n_records >= 0 and body < n_records * record_bytes):
        raise ReaderError("edf", "file is shorter than its header says (truncated)")
