"""EDF/EDF+ read here with numpy: a 256-byte header, 256 header bytes per signal, then data records of
little-endian int16, physical = digital * gain + offset from the declared physical and digital ranges.

No library: the format is this small, and owning it keeps the scaling and the bounds explicit (tests
compare the result with edfio 0.4.18). Tolerant where real converters are sloppy: the Contec sample
(plain EDF whose recording field is written EDF+-style, a literal 'dd-MMM-yyyy' as patient, 37,855
one-sample records), a record count of -1 (recorder not closed: the complete records are read) and
bytes after the last record. Strict where reading on would mislead: header numbers, the header length,
one rate for every signal, and a file shorter than its header says is refused rather than read short.

The patient field can hold a name and birth date: only sex, the derived age and the EDF+ patient code
(as patient_key) are kept; plain EDF's patient field is free text and is never kept.
"""

from __future__ import annotations

import math
import re
from datetime import date

import numpy as np

from ecgsearch.ecg.readers.types import (
    MAX_CHANNELS,
    EcgHeader,
    ReadEcg,
    ReaderError,
    age_from_dates,
    check_channels,
    check_duration,
    make_read_ecg,
    year_month,
)
from ecgsearch.ecg.readers.units import sampling_rate, to_mv, voltage_unit

_ANNOTATIONS = "EDF Annotations"
# Per-signal header fields, each stored for all signals in turn: (name, width in bytes).
_SIGNAL_FIELDS = (
    ("label", 16),
    ("transducer", 80),
    ("dimension", 8),
    ("physical minimum", 8),
    ("physical maximum", 8),
    ("digital minimum", 8),
    ("digital maximum", 8),
    ("prefiltering", 80),
    ("samples per record", 8),
    ("reserved", 32),
)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_EDFPLUS_DATE = re.compile(r"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$")


def read(data: bytes) -> ReadEcg:
    header_bytes = _integer(data[184:192], "header length")
    n_records = _integer(data[236:244], "number of data records")
    n_signals = _integer(data[252:256], "number of signals")
    if not 1 <= n_signals <= MAX_CHANNELS + 1:  # one more for an EDF+ annotation signal
        raise ReaderError("channels", f"{n_signals} signals; 1-{MAX_CHANNELS} supported")
    if header_bytes != 256 * (n_signals + 1) or len(data) < header_bytes:
        raise ReaderError("header length", "does not match the number of signals (or truncated)")
    fields = _signal_fields(data, n_signals)
    per_record = [_integer(v, "samples per record") for v in fields["samples per record"]]
    if any(n <= 0 for n in per_record):
        raise ReaderError("samples per record", "not a positive number")
    labels = [_text(v) for v in fields["label"]]
    ecg = [i for i, label in enumerate(labels) if label != _ANNOTATIONS]
    check_channels(len(ecg))
    if len({per_record[i] for i in ecg}) != 1:
        raise ReaderError("samples per record", "signals sampled at different rates")
    duration = _real(data[244:252], "data record duration")
    if duration <= 0:
        raise ReaderError("data record duration", "not a positive number")
    rate = sampling_rate(per_record[ecg[0]] / duration)

    record_bytes = 2 * sum(per_record)
    complete = (len(data) - header_bytes) // record_bytes
    if n_records == -1:
        n_records = complete
    elif n_records < 0 or complete < n_records:
        raise ReaderError("number of data records", "the file is shorter than its header says (truncated)")
    if n_records == 0:
        raise ReaderError("number of data records", "no data record")
    check_duration(n_records * per_record[ecg[0]], rate)

    records = np.frombuffer(data, dtype="<i2", count=n_records * record_bytes // 2, offset=header_bytes)
    records = records.reshape(n_records, record_bytes // 2)
    starts = np.concatenate([[0], np.cumsum(per_record)])
    rows = [_physical(records[:, starts[i] : starts[i + 1]].ravel(), fields, i) for i in ecg]
    names = [re.sub(r"^(ECG|EKG)\s+", "", labels[i], flags=re.IGNORECASE) for i in ecg]
    return make_read_ecg(np.stack(rows), names, rate, "edf", _header(data))


def _physical(digital: np.ndarray, fields: dict[str, list[bytes]], i: int) -> np.ndarray:
    """One signal in mV: gain and offset map [digital min, digital max] onto [physical min, max]."""
    d_min = _integer(fields["digital minimum"][i], "digital minimum")
    d_max = _integer(fields["digital maximum"][i], "digital maximum")
    p_min = _real(fields["physical minimum"][i], "physical minimum")
    p_max = _real(fields["physical maximum"][i], "physical maximum")
    if d_max <= d_min or p_max == p_min:
        raise ReaderError("physical range", "empty digital or physical range: samples cannot be scaled")
    gain = (p_max - p_min) / (d_max - d_min)
    unit = voltage_unit(_text(fields["dimension"][i]))
    return to_mv(digital, gain, p_min - gain * d_min, unit, "dimension")


def _header(data: bytes) -> EcgHeader:
    """Start date, and for EDF+ the patient code, sex, derived age and the recording equipment."""
    started = _edf_date(_text(data[168:176]))
    if data[192:196] != b"EDF+":
        return EcgHeader(acquired_month=year_month(started))
    patient = _text(data[8:88]).split()
    recording = _text(data[88:168]).split()
    if len(recording) >= 2 and recording[0] == "Startdate":
        started = _edfplus_date(recording[1]) or started  # carries the 4-digit year
    code, sex, born = (patient + ["X", "X", "X"])[:3]
    equipment = recording[4] if len(recording) > 4 and recording[0] == "Startdate" else "X"
    return EcgHeader(
        age_years=age_from_dates(_edfplus_date(born), started),
        sex={"M": "M", "F": "F"}.get(sex.upper()),
        acquired_month=year_month(started),
        device_model=None if equipment == "X" else equipment.replace("_", " "),
        patient_key=None if code.upper() == "X" else code.replace("_", " "),
    )


def _signal_fields(data: bytes, n: int) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    pos = 256
    for name, width in _SIGNAL_FIELDS:
        out[name] = [data[pos + i * width : pos + (i + 1) * width] for i in range(n)]
        pos += n * width
    return out


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").replace("\x00", "").strip()


def _integer(raw: bytes, field: str) -> int:
    try:
        return int(_text(raw))
    except ValueError:
        raise ReaderError(field, "not a whole number") from None


def _real(raw: bytes, field: str) -> float:
    try:
        value = float(_text(raw))
    except ValueError:
        raise ReaderError(field, "not a number") from None
    if not math.isfinite(value):
        raise ReaderError(field, "not a finite number")
    return value


def _edf_date(text: str) -> date | None:
    """dd.mm.yy; years 85-99 are 1985-1999, 00-84 are 2000-2084 (the EDF clipping rule)."""
    try:
        day, month, year = (int(p) for p in text.split("."))
        return date(year + (1900 if year >= 85 else 2000), month, day)
    except ValueError:
        return None


def _edfplus_date(text: str) -> date | None:
    """dd-MMM-yyyy with an English month, as EDF+ writes dates in the patient and recording fields."""
    m = _EDFPLUS_DATE.match(text)
    if not m or m.group(2).upper() not in _MONTHS:
        return None
    try:
        return date(int(m.group(3)), _MONTHS.index(m.group(2).upper()) + 1, int(m.group(1)))
    except ValueError:
        return None
