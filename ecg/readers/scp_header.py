"""SCP-ECG header fields: section 1 (patient and device tags) and section 7 (global measurements).

Section 1 is a list of tag, 16-bit length, value, ended by tag 255. Only the tags that map to
non-personal fields are decoded (age, birth date for the derived age, sex, acquisition date, the
acquiring device of tag 14) plus the patient id (tag 2), kept only as patient_key; names and free
text are never decoded. Section 7 stores wave boundaries of the global beat, not intervals: PR, QRS
and QT are the spans between them (29999 marks an undefined point), the QTc and ventricular rate come
from its optional tail.
"""

from __future__ import annotations

from datetime import date

from ecgsearch.ecg.readers.types import (
    EcgHeader,
    Measurements,
    ReaderError,
    age_from_dates,
    cap_age,
    number,
    year_month,
)

UNDEFINED = 29999
# Value sizes the standard fixes, for writers that store a wrong tag length.
_FIXED_SIZES = {
    4: 3,
    5: 4,
    6: 3,
    7: 3,
    8: 1,
    9: 1,
    11: 2,
    12: 2,
    24: 1,
    25: 4,
    26: 3,
    27: 2,
    28: 2,
    29: 1,
    33: 2,
}
# Tag 4 age units: years, months, weeks, days, hours.
_AGE_YEARS = {1: 1.0, 2: 1 / 12, 3: 7 / 365.25, 4: 1 / 365.25, 5: 1 / 8766}
# Tag 14 byte 16 (language support) -> codec; plain 8-bit ASCII when bit 0 is clear.
_CODECS = {
    0x01: "latin-1",
    0x03: "iso8859_2",
    0x0B: "iso8859_4",
    0x13: "iso8859_5",
    0x1B: "iso8859_6",
    0x23: "iso8859_7",
    0x2B: "iso8859_8",
    0x33: "iso8859_11",
    0x3B: "iso8859_15",
    0x07: "utf-16-le",
    0x0F: "shift_jis",
    0x17: "euc_jp",
    0x1F: "euc_jp",
    0x27: "gb2312",
    0x2F: "cp949",
    0x37: "utf-8",
}
# The standard's manufacturer codes (tag 14 byte 7), used when the manufacturer string is empty.
_MANUFACTURERS = (
    "",
    "Burdick",
    "Cambridge",
    "Compumed",
    "Datamed",
    "Fukuda",
    "Hewlett-Packard",
    "Marquette Electronics",
    "Mortara Instruments",
    "Nihon Kohden",
    "Okin",
    "Quinton",
    "Siemens",
    "Spacelabs",
    "Telemed",
    "Hellige",
    "ESA-OTE",
    "Schiller",
    "Picker-Schwarzer",
    "et medical devices",
    "Zwönitz",
)


def header(section1: bytes | None, section7: bytes | None) -> EcgHeader:
    tags = _tags(section1) if section1 is not None else {}
    device = tags.get(14, b"")
    codec = _CODECS.get(device[16]) if len(device) > 16 and device[16] & 0x01 else None
    acquired = _date(tags.get(25, b""))
    age = _age(tags.get(4, b""))
    if age is None:
        age = age_from_dates(_date(tags.get(5, b"")), acquired)
    vendor = model = None
    if len(device) >= 36:
        strings = device[36:].split(b"\x00") + [b""] * 5  # program, serial, software, SCP software, maker
        coded = _MANUFACTURERS[device[7]] if device[7] < len(_MANUFACTURERS) else ""
        vendor = _text(strings[4], codec) or coded
        model = _text(device[8:14], codec)
    sex = tags.get(8, b"\x00")[:1]
    return EcgHeader(
        age_years=age,
        sex={b"\x01": "M", b"\x02": "F"}.get(sex),
        acquired_month=year_month(acquired),
        vendor=vendor or None,
        device_model=model or None,
        measurements=measurements(section7) if section7 is not None else Measurements(),
        statement_codes=(),
        patient_key=(_text(tags[2], codec) or None) if 2 in tags else None,
    )


def _tags(body: bytes) -> dict[int, bytes]:
    found = _walk(body, fixed=False)
    if found is None:
        found = _walk(body, fixed=True)
    if found is None:
        raise ReaderError("section 1", "tag lengths overrun the section")
    return found


def _walk(body: bytes, fixed: bool) -> dict[int, bytes] | None:
    tags: dict[int, bytes] = {}
    pos = 0
    while pos + 3 <= len(body):
        tag, length = body[pos], int.from_bytes(body[pos + 1 : pos + 3], "little")
        if fixed and tag in _FIXED_SIZES:
            length = _FIXED_SIZES[tag]
        pos += 3
        if tag == 255:
            break
        if pos + length > len(body):
            return None
        tags.setdefault(tag, body[pos : pos + length])
        pos += length
    return tags


def _text(raw: bytes, codec: str | None) -> str:
    """A NUL-terminated text in the section 1 language (two NUL bytes end UTF-16)."""
    if codec == "utf-16-le":
        end = next((i for i in range(0, len(raw) - 1, 2) if raw[i : i + 2] == b"\x00\x00"), len(raw))
        raw = raw[: end - end % 2]
    else:
        raw = raw.split(b"\x00", 1)[0]
    for name in (codec, "utf-8"):
        if name:
            try:
                return raw.decode(name).strip()
            except UnicodeDecodeError:
                continue
    return raw.decode("latin-1").strip()


def _date(raw: bytes) -> date | None:
    """Year (16 bits), month, day; None when absent or invalid."""
    if len(raw) < 4:
        return None
    try:
        return date(int.from_bytes(raw[:2], "little"), raw[2], raw[3])
    except ValueError:
        return None


def _age(raw: bytes) -> int | None:
    """Tag 4: age (16 bits) and its unit; 0 means not set."""
    if len(raw) < 3 or raw[2] not in _AGE_YEARS or not int.from_bytes(raw[:2], "little"):
        return None
    return cap_age(int(int.from_bytes(raw[:2], "little") * _AGE_YEARS[raw[2]]))


def measurements(body: bytes) -> Measurements:
    """The first (global) measurement block of section 7, and its optional rate and QTc tail."""
    if len(body) < 6:
        raise ReaderError("section 7", "too short")
    n_blocks, n_spikes = body[0], body[1]
    tail = 6 + 16 * n_blocks + 10 * n_spikes
    if tail > len(body):
        raise ReaderError("section 7", "measurement blocks lie past the end of the section")
    points: dict[str, int] = {}
    axes: list[int | None] = [None, None, None]
    if n_blocks:
        names = ("p_onset", "p_offset", "qrs_onset", "qrs_offset", "t_offset")
        for k, name in enumerate(names):
            value = int.from_bytes(body[6 + 2 * k : 8 + 2 * k], "little")
            if value < UNDEFINED:
                points[name] = value
        for k in range(3):
            value = int.from_bytes(body[16 + 2 * k : 18 + 2 * k], "little", signed=True)
            axes[k] = None if abs(value) in (999, UNDEFINED) else value
    rate = qtc = None
    if tail + 2 <= len(body):
        after_types = tail + 2 + int.from_bytes(body[tail : tail + 2], "little")  # one QRS type byte each
        if after_types + 7 <= len(body):
            vent = int.from_bytes(body[after_types : after_types + 2], "little")
            rate = vent if 0 < vent < UNDEFINED else None
            stored = int.from_bytes(body[after_types + 4 : after_types + 6], "little")
            qtc = stored if 0 < stored < UNDEFINED else None  # any formula (byte after it says which)

    def span(start: str, end: str) -> float | None:
        a, b = points.get(start), points.get(end)
        return float(b - a) if a is not None and b is not None and b > a else None

    return Measurements(
        ventricular_rate_bpm=number(rate),
        pr_ms=span("p_onset", "qrs_onset"),
        qrs_ms=span("qrs_onset", "qrs_offset"),
        qt_ms=span("qrs_onset", "t_offset"),
        qtc_ms=number(qtc),
        p_axis=number(axes[0]),
        r_axis=number(axes[1]),
        t_axis=number(axes[2]),
    )
