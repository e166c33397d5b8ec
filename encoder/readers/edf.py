"""EDF/EDF+ through ecgdatakit (physical min/max scaling, mV). The EDF patient field can hold a name
and birth date: only sex, the derived age and the patient code (as patient_key) are kept."""

from __future__ import annotations

from ecgsearch.encoder.readers import _datakit
from ecgsearch.encoder.readers.types import ReadEcg, make_read_ecg


def read(data: bytes) -> ReadEcg:
    record = _datakit.parse(data, "edf:EDFParser", "edf", ".edf")
    x, names, rate = _datakit.signal(record, "edf")
    return make_read_ecg(x, names, rate, "edf", _datakit.header(record))
