"""Read WFDB records (PhysioNet's ``.hea`` header plus signal files) with numpy alone.

Why our own reader: the serving install must not carry the ``wfdb`` package (matplotlib, pandas and
aiohttp come with it). This module reads what ECG archives publish: single-segment records, one
sample per frame, no skew, in formats 8, 16, 24, 32, 61, 80 and 212, one or several signal files,
byte offsets (MATLAB v4 ``.mat`` files of the PhysioNet Challenges are format 16 after a 24-byte
offset). It gives the values ``wfdb.rdrecord`` gives: the same header grammar (wfdb's own regular
expressions), the same defaults (gain 200, baseline from adc_zero, units mV, sampling rate 250),
the same arithmetic ((digital - baseline) / gain in float64) and the invalid-sample sentinels read as
NaN; tests/ecg/test_wfdb_io.py checks this against wfdb on every shared record. One quirk is
tolerated on purpose: a record line naming the record with ``.mat`` appended (Georgia headers).

Everything else (multi-segment records, other formats including FLAC-compressed 508/516/524,
``~`` null signals, several samples per frame, skew) raises UnreadableRecord naming the record and
the feature in one line. A hostile or corrupt record costs bounded work: at most MAX_HEADER_BYTES
of header are read, file sizes are checked against what the header describes before any signal
byte is read, and no record over MAX_SAMPLES samples is decoded.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from ecgsearch.ecg.signals import RawEcg

# A header is a few lines per signal plus comments; 1 MiB is thousands of times a 12-lead header.
MAX_HEADER_BYTES = 1 << 20
# No ECG (or polysomnography) record has more signals; it bounds the per-line work of a header.
MAX_SIGNALS = 1024
# Samples over all signals (1.6 GB as float64 at the limit): 4.6 h of 12 leads at 1 kHz, a 24 h 3-lead
# Holter at 500 Hz. The service reads 10 s ECGs; a header claiming more is corrupt or not for us.
MAX_SAMPLES = 200_000_000

# Header line grammar exactly as wfdb reads it (wfdb/io/header.py), so fields split alike.
_RX_RECORD = re.compile(
    r"""
    [ \t]* (?P<record_name>[-\w]+)
           /?(?P<n_seg>\d*)
    [ \t]+ (?P<n_sig>\d+)
    [ \t]* (?P<fs>\d*\.?\d*)
           /*(?P<counter_freq>-?\d*\.?\d*)
           \(?(?P<base_counter>-?\d*\.?\d*)\)?
    [ \t]* (?P<sig_len>\d*)
    [ \t]* (?P<base_time>\d{,2}:?\d{,2}:?\d{,2}\.?\d{,6})
    [ \t]* (?P<base_date>\d{,2}/?\d{,2}/?\d{,4})
    """,
    re.VERBOSE,
)
_RX_SIGNAL = re.compile(
    r"""
    [ \t]* (?P<file_name>~?[-\w]*\.?[\w]*)
    [ \t]+ (?P<fmt>\d+)
           x?(?P<samps_per_frame>\d*)
           :?(?P<skew>\d*)
           \+?(?P<byte_offset>\d*)
    [ \t]* (?P<adc_gain>-?\d*\.?\d*e?[\+-]?\d*)
           \(?(?P<baseline>-?\d*)\)?
           /?(?P<units>[\w\^\-\?%\/]*)
    [ \t]* (?P<adc_res>\d*)
    [ \t]* (?P<adc_zero>-?\d*)
    [ \t]* (?P<init_value>-?\d*)
    [ \t]* (?P<checksum>-?\d*)
    [ \t]* (?P<block_size>\d*)
    [ \t]* (?P<sig_name>[\S]?[^\t\n\r\f\v]*)
    """,
    re.VERBOSE,
)
_RX_FIRST_TOKEN = re.compile(r"[ \t]*(\S+)(.*)", re.DOTALL)

# Bytes per sample, the dtype samples are loaded as, and the digital value wfdb reads as NaN
# (wfdb/io/_signal.py: BYTES_PER_SAMPLE, DATA_LOAD_TYPES, INVALID_SAMPLE_VALUE). Format 8 stores first
# differences and has no invalid value.
_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "212": 1.5}
_LOAD_DTYPE = {"8": "<i1", "16": "<i2", "24": "<u1", "32": "<i4", "61": ">i2", "80": "<u1", "212": "<u1"}
_INVALID: dict[str, int | None] = {
    "8": None,
    "16": -(2**15),
    "24": -(2**23),
    "32": -(2**31),
    "61": -(2**15),
    "80": -(2**7),
    "212": -(2**11),
}
_REFUSED_FORMATS = {
    "0": "format 0 (a null signal without samples)",
    "160": "format 160 (offset binary 16-bit)",
    "310": "format 310 (packed 10-bit)",
    "311": "format 311 (packed 10-bit)",
    "508": "format 508 (FLAC-compressed)",
    "516": "format 516 (FLAC-compressed)",
    "524": "format 524 (FLAC-compressed)",
}


class _Refused(Exception):
    """Why a record cannot be read; read_wfdb turns it into UnreadableRecord with the record's name."""


class _Signal(NamedTuple):
    """One signal line's fields, defaults applied (a tuple: twelve are built per ECG read)."""

    file_name: str
    fmt: str
    byte_offset: int
    gain: float
    baseline: int
    units: str
    init_value: int
    name: str


@dataclass(frozen=True)
class _Header:
    n_sig: int
    sig_len: int | None
    fs: float
    recorded_at: datetime | None
    comments: tuple[str, ...]
    signals: tuple[_Signal, ...]


def read_wfdb(path: str | Path) -> RawEcg:
    """Read a WFDB record (path without extension, or with .hea/.dat/.mat) as wfdb.rdrecord would.

    Raises UnreadableRecord naming the record and, in one line, what is missing, corrupt or not
    supported.
    """
    # signals re-exports this function, so its types are imported here rather than at module level.
    from ecgsearch.ecg.signals import RawEcg, UnreadableRecord

    record = str(path if isinstance(path, Path) else Path(path))  # the name as the old reader gave it
    base, extension = os.path.splitext(record)  # os.path below, not pathlib: a tenth of the cost
    if extension not in {".hea", ".dat", ".mat"}:
        base = record
    try:
        header = _parse_header(_read_header_text(base + ".hea"))
        signal = _read_signals(os.path.dirname(base), header)
    except _Refused as why:
        raise UnreadableRecord(record, str(why)) from None
    except (OSError, ValueError, OverflowError, MemoryError) as exc:
        reason = " ".join(f"cannot read WFDB record ({type(exc).__name__}: {exc})".split())
        raise UnreadableRecord(record, reason) from exc
    return RawEcg(
        record=record,
        signal=signal.T,
        fs=header.fs,
        leads=tuple(s.name for s in header.signals),
        units=tuple(s.units for s in header.signals),
        comments=header.comments,
        recorded_at=header.recorded_at,
    )


def _read_header_text(header: str) -> str:
    """The header as wfdb reads it (ASCII, other bytes dropped); only a small regular file is read."""
    name = os.path.basename(header)
    try:
        fd = os.open(header, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block us
    except FileNotFoundError:
        raise _Refused(f"no header file {name}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Refused(f"header {name} is not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, MAX_HEADER_BYTES + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_HEADER_BYTES:
                raise _Refused(f"header {name} is larger than {MAX_HEADER_BYTES} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", errors="ignore")


def _parse_header(text: str) -> _Header:
    """Header fields as wfdb parses them, plus the checks that keep reading bounded and unambiguous."""
    lines, comments = [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            comments.append(line.strip(" \t#"))
        elif line:
            lines.append(line)
    if not lines:
        raise _Refused("empty header")
    # Challenge (Georgia) headers name the record 'E00001.mat'; wfdb refuses that, we read past it.
    first = _RX_FIRST_TOKEN.match(lines[0])
    rec = _RX_RECORD.match(first[1].removesuffix(".mat") + first[2]) if first else None
    if rec is None:
        raise _Refused(f"malformed record line {_clip(lines[0])!r}")
    if rec["n_seg"]:
        raise _Refused(f"multi-segment records ({rec['n_seg']} segments) are not supported")
    n_sig = int(rec["n_sig"])
    if n_sig == 0:
        raise _Refused("header declares no signals")
    if n_sig != len(lines) - 1:
        raise _Refused(f"malformed header: declares {n_sig} signals but describes {len(lines) - 1}")
    if n_sig > MAX_SIGNALS:
        raise _Refused(f"{n_sig} signals, more than this reader's limit of {MAX_SIGNALS}")
    fs = float(rec["fs"]) if rec["fs"] else 250.0
    if round(fs, 8) == float(int(fs)):  # wfdb reads a rate within 1e-8 of an integer as that integer
        fs = float(int(fs))
    for field in ("counter_freq", "base_counter"):
        if rec[field]:
            float(rec[field])  # wfdb refuses a malformed one (ValueError)
    return _Header(
        n_sig=n_sig,
        sig_len=int(rec["sig_len"]) if rec["sig_len"] else None,
        fs=fs,
        recorded_at=_recorded_at(rec["base_time"], rec["base_date"]),
        comments=tuple(comments),
        signals=tuple(_parse_signal(line, i) for i, line in enumerate(lines[1:], start=1)),
    )


def _parse_signal(line: str, number: int) -> _Signal:
    """One signal line: wfdb's fields and defaults; unsupported layouts are refused by name."""
    s = _RX_SIGNAL.match(line)
    if s is None:
        raise _Refused(f"malformed line for signal {number}: {_clip(line)!r}")
    (file_name, fmt, per_frame, skew, offset, gain, baseline, units, _, adc_zero, init, checksum, _, name) = (
        s.groups()
    )
    # wfdb's grammar would read '16+-24' or '200,5/mV' as a shorter token and shift every later field:
    # the format token (groups 2-5) and the gain token (groups 6-8) must end at a space or the line's end.
    end = s.end(5)
    if end < len(line) and line[end] not in " \t":
        raise _Refused(f"malformed field {_clip(line[s.start(2) :].split()[0])!r} for signal {number}")
    end = s.end(8)
    if gain and end < len(line) and line[end] not in " \t":
        raise _Refused(f"malformed field {_clip(line[s.start(6) :].split()[0])!r} for signal {number}")
    if fmt not in _BYTES_PER_SAMPLE:
        what = _REFUSED_FORMATS.get(fmt, f"format {fmt}")
        raise _Refused(f"signal {number}: {what} is not supported")
    if per_frame and int(per_frame) != 1:
        raise _Refused(f"signal {number}: {per_frame} samples per frame are not supported")
    if skew and int(skew) != 0:
        raise _Refused(f"signal {number}: skew {skew} is not supported")
    if not file_name or file_name[0] == "~":
        raise _Refused(f"signal {number} has no signal file ('~' null signal): not supported")
    if "-" in (adc_zero, checksum):  # wfdb refuses a lone '-' in any integer field (int('-'))
        raise _Refused(f"malformed adc_zero or checksum for signal {number}")
    adc_gain = float(gain) if gain else 200.0
    return _Signal(
        file_name,
        fmt,
        int(offset) if offset else 0,
        200.0 if adc_gain == 0 else adc_gain,
        int(baseline) if baseline else int(adc_zero) if adc_zero else 0,
        units or "mV",
        int(init) if init else 0,
        name,  # wfdb gives None for a signal without a name; "" here
    )


def _recorded_at(base_time: str, base_date: str) -> datetime | None:
    """base_date/base_time parsed as wfdb parses them (it refuses a malformed one: ValueError)."""
    when: time | None = None
    day: date | None = None
    try:
        if base_time:
            fmt = ("%S", "%M:%S", "%H:%M:%S")[base_time.count(":")]
            when = datetime.strptime(base_time, fmt + (".%f" if "." in base_time else "")).time()
        if base_date:
            day = datetime.strptime(base_date, "%d/%m/%Y").date()
    except ValueError:
        raise _Refused(f"malformed base time or date {base_time!r} {base_date!r}") from None
    return datetime.combine(day, when) if day is not None and when is not None else None


def _read_signals(folder: str, header: _Header) -> np.ndarray:
    """(sig_len, n_sig) float64 in physical units, NaN where a sample holds its format's invalid value."""
    sigs = header.signals
    files: dict[str, list[int]] = {}  # signal file -> its signals, in header order
    for i, s in enumerate(sigs):
        files.setdefault(s.file_name, []).append(i)
    for name, members in files.items():
        fmts = {sigs[i].fmt for i in members}
        if len(fmts) > 1:
            raise _Refused(f"signal file {name} mixes formats {', '.join(sorted(fmts))}: not supported")
    sizes = {name: _file_size(folder, name) for name in files}
    sig_len = header.sig_len
    if sig_len is None:  # wfdb infers it from the size of the first signal file
        name, members = next(iter(files.items()))
        first = sigs[members[0]]
        sig_len = int((sizes[name] - first.byte_offset) / (_BYTES_PER_SAMPLE[first.fmt] * len(members)))
    if sig_len <= 0:
        raise _Refused("the record holds no samples")
    if sig_len * header.n_sig > MAX_SAMPLES:
        raise _Refused(
            f"header describes {sig_len} samples x {header.n_sig} signals, "
            f"more than this reader's limit of {MAX_SAMPLES} samples"
        )
    for name, members in files.items():  # every size checked before any byte is decoded
        first = sigs[members[0]]  # as in wfdb: a file's format and byte offset are its first signal's
        needed = math.ceil(sig_len * len(members) * _BYTES_PER_SAMPLE[first.fmt])
        held = max(sizes[name] - first.byte_offset, 0)
        if held < needed:
            after = f" after a {first.byte_offset}-byte offset" if first.byte_offset else ""
            raise _Refused(f"truncated signal file {name}: {needed} bytes expected{after}, {held} found")
    decoded = []
    for name, members in files.items():
        first = sigs[members[0]]
        inits = [sigs[i].init_value for i in members]
        path = os.path.join(folder, name)
        decoded.append((members, first.fmt, _decode(path, first.fmt, first.byte_offset, sig_len, inits)))
    if len(decoded) == 1:  # the common layout: one file holding every signal in header order
        signal = decoded[0][2].astype(np.float64)
    else:
        signal = np.empty((sig_len, header.n_sig))
        for members, _, digital in decoded:
            signal[:, members] = digital
    # wfdb's arithmetic, in its order: float64, minus baseline (exact as float64), divided by gain, NaNs.
    np.subtract(signal, np.array([float(s.baseline) for s in sigs]), signal)
    np.divide(signal, np.array([s.gain for s in sigs]), signal)
    for members, fmt, digital in decoded:
        invalid = _INVALID[fmt]
        if invalid is None:
            continue
        bad = digital == invalid
        if not bad.any():
            continue
        if len(decoded) == 1:
            signal[bad] = np.nan
        else:
            rows, cols = np.nonzero(bad)
            signal[rows, np.asarray(members)[cols]] = np.nan
    return signal


def _file_size(folder: str, name: str) -> int:
    """Size of a signal file that must be a regular file (a FIFO or device would make reading unbounded)."""
    try:
        info = os.stat(os.path.join(folder, name))
    except FileNotFoundError:
        raise _Refused(f"signal file {name} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise _Refused(f"signal file {name} is not a regular file")
    return info.st_size


def _decode(data: str, fmt: str, offset: int, sig_len: int, inits: list[int]) -> np.ndarray:
    """(sig_len, signals in the file) digital samples of one signal file, decoded as wfdb decodes them."""
    n_chan = len(inits)
    count = sig_len * n_chan
    n_items = math.ceil(count * _BYTES_PER_SAMPLE[fmt]) if fmt in {"212", "24"} else count
    raw = np.fromfile(data, dtype=_LOAD_DTYPE[fmt], count=n_items, offset=offset)
    if raw.size != n_items:  # the file shrank after its size was checked
        raise _Refused(f"truncated signal file {os.path.basename(data)}")
    if fmt == "212":  # two 12-bit samples in three bytes
        if raw.size % 3:
            raw = np.concatenate([raw, np.zeros(3 - raw.size % 3, dtype=np.uint8)])
        b = raw.reshape(-1, 3).astype(np.int16)
        pairs = np.empty((b.shape[0], 2), dtype=np.int16)
        pairs[:, 0] = b[:, 0] + ((b[:, 1] & 0x0F) << 8)
        pairs[:, 1] = b[:, 2] + ((b[:, 1] >> 4) << 8)
        digital = pairs.reshape(-1)[:count]
        digital[digital > 2047] -= 4096
    elif fmt == "24":  # little-endian 3-byte two's complement: sign-extend into a 4th byte
        b = raw.reshape(-1, 3)
        wide = np.empty((count, 4), dtype=np.uint8)
        wide[:, :3] = b
        wide[:, 3] = (b[:, 2] >> 7) * 255
        digital = wide.view("<i4").reshape(-1)
    elif fmt == "80":  # offset binary
        digital = (raw.astype(np.int16) - 128).astype(np.int8)
    else:
        digital = raw
    digital = digital.reshape(sig_len, n_chan)
    if fmt == "8":  # first differences, from each signal's initial value (int32 as wfdb)
        digital = np.cumsum(digital, axis=0, dtype=np.int32)
        digital += np.asarray(inits, dtype=np.int32)
    return digital


def _clip(text: str, limit: int = 60) -> str:
    """A header excerpt short enough for a one-line message."""
    return text if len(text) <= limit else text[:limit] + "..."
