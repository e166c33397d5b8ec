"""SCP-ECG (EN 1064): Huffman and difference decoding through ecgdatakit, the only maintained Python
decoder; statements in SCP section 8/11 are free text here, so no statement codes are taken."""

from __future__ import annotations

from ecgsearch.encoder.readers import _datakit
from ecgsearch.encoder.readers.types import ReadEcg, make_read_ecg


def read(data: bytes) -> ReadEcg:
    record = _datakit.parse(data, "scp_ecg:SCPECGParser", "scp-ecg", ".scp")
    x, names, rate = _datakit.signal(record)
    return make_read_ecg(x, names, rate, "scp-ecg", _datakit.header(record))
