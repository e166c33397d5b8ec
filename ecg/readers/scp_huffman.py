"""SCP-ECG Huffman tables (section 2) and sample decoding, then first/second difference undoing.

A table is a list of codes: prefix length, total length, a mode (1 = a value, 0 = switch to the table
numbered by the value) and a value. A code longer than its prefix carries its value in the extra bits,
as two's complement. The base code is stored with its first transmitted bit in the least significant
position. Section 2 holding 19999 means the standard's default table: '0' is 0, n ones then '0' and a
sign bit are +-n (n = 1..8), and nine or ten ones escape to an 8-bit or 16-bit value.

Every loop is bounded by the data: a table's codes must fit the section, and each decoding step
consumes at least one bit, so a hostile table or stream ends in a ReaderError, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgsearch.ecg.readers.types import ReaderError

DEFAULT_TABLE_MARK = 19999
MAX_TABLES = 256
MAX_CODES = 65_536  # all tables together; real writers use a few dozen


@dataclass(frozen=True)
class Code:
    prefix_bits: int
    total_bits: int
    switch: bool  # mode 0: switch to table number `value`
    value: int


@dataclass(frozen=True)
class Table:
    codes: dict[tuple[int, int], Code]  # (prefix length, prefix as read, first bit most significant)
    max_prefix: int


def _table(entries: list[tuple[int, Code]]) -> Table:
    codes = {(c.prefix_bits, prefix): c for prefix, c in entries}
    return Table(codes, max((c.prefix_bits for _, c in entries), default=0))


def _default_table() -> Table:
    entries = [(0b0, Code(1, 1, False, 0))]
    for n in range(1, 9):
        ones = (1 << n) - 1
        entries.append(((ones << 2) | 0, Code(n + 2, n + 2, False, n)))  # n ones, '0', sign '0'
        entries.append(((ones << 2) | 1, Code(n + 2, n + 2, False, -n)))  # n ones, '0', sign '1'
    entries.append((0b1111111110, Code(10, 18, False, 0)))  # escape: an 8-bit value follows
    entries.append((0b1111111111, Code(10, 26, False, 0)))  # escape: a 16-bit value follows
    return _table(entries)


DEFAULT = _default_table()


def tables(body: bytes) -> list[Table]:
    """Section 2's tables; the default table when it says 19999."""
    if len(body) < 2:
        raise ReaderError("section 2", "too short for a table count")
    n_tables = int.from_bytes(body[:2], "little")
    if n_tables == DEFAULT_TABLE_MARK:
        return [DEFAULT]
    if not 1 <= n_tables <= MAX_TABLES:
        raise ReaderError("section 2", f"{n_tables} Huffman tables; 1-{MAX_TABLES} supported")
    out, pos, total = [], 2, 0
    for t in range(n_tables):
        if pos + 2 > len(body):
            raise ReaderError("section 2", f"Huffman table {t + 1} lies past the end of the section")
        n_codes = int.from_bytes(body[pos : pos + 2], "little")
        pos += 2
        total += n_codes
        if n_codes == 0 or total > MAX_CODES or pos + 9 * n_codes > len(body):
            raise ReaderError("section 2", f"Huffman table {t + 1} declares {n_codes} codes that do not fit")
        entries = []
        for _ in range(n_codes):
            entries.append(_code(body[pos : pos + 9], t + 1))
            pos += 9
        out.append(_table(entries))
    return out


def _code(raw: bytes, table: int) -> tuple[int, Code]:
    prefix, total, mode = raw[0], raw[1], raw[2]
    if prefix > total:  # some writers swap the two lengths
        prefix, total = total, prefix
    if not 1 <= prefix <= 32 or total - prefix > 32:
        raise ReaderError("section 2", f"Huffman table {table}: code lengths {prefix}/{total} out of range")
    value = int.from_bytes(raw[3:5], "little", signed=True)
    stored = int.from_bytes(raw[5:9], "little") & ((1 << prefix) - 1)
    code = int(format(stored, f"0{prefix}b")[::-1], 2)  # first bit sent is stored in bit 0
    return code, Code(prefix, total, mode == 0, value)


def decode(data: bytes, n: int, tables: list[Table], lead: int) -> np.ndarray:
    """``n`` values from one lead's bit stream (most significant bit first); every lead starts in
    table 1."""
    if n > 8 * len(data):  # every value takes at least one bit
        raise ReaderError("section 6", f"lead {lead}: {n} samples cannot fit in {len(data)} bytes")
    bits = format(int.from_bytes(data, "big"), f"0{8 * len(data)}b") if data else ""
    n_bits = len(bits)
    out = np.empty(n, dtype=np.int64)
    table, pos, i = tables[0], 0, 0
    while i < n:
        code = length = 0
        while True:
            if pos >= n_bits:
                raise ReaderError("section 6", f"lead {lead}: Huffman data ends after {i} of {n} samples")
            code = (code << 1) | (bits[pos] == "1")
            pos += 1
            length += 1
            entry = table.codes.get((length, code))
            if entry is not None:
                break
            if length >= table.max_prefix:
                raise ReaderError("section 6", f"lead {lead}: bit {pos} starts no Huffman code")
        if entry.switch:
            if not 1 <= entry.value <= len(tables):
                raise ReaderError("section 6", f"lead {lead}: switch to Huffman table {entry.value}")
            table = tables[entry.value - 1]
            continue
        extra = entry.total_bits - entry.prefix_bits
        if extra:
            if pos + extra > n_bits:
                raise ReaderError("section 6", f"lead {lead}: Huffman data ends after {i} of {n} samples")
            raw = int(bits[pos : pos + extra], 2)
            pos += extra
            out[i] = raw - (1 << extra) if raw >> (extra - 1) else raw
        else:
            out[i] = entry.value
        i += 1
    return out


def undo_differences(d: np.ndarray, mode: int) -> np.ndarray:
    """Amplitudes from stored values: 0 as is, 1 first differences (x[n] = x[n-1] + d[n]), 2 second
    differences (x[n] = d[n] + 2 x[n-1] - x[n-2], the first two stored as amplitudes). Wrapped to 16
    bits at the end, as encoders that work in 16-bit arithmetic expect."""
    if mode == 1:
        x = np.cumsum(d)
    elif mode == 2 and len(d) > 2:
        steps = np.cumsum(np.concatenate(([d[1] - d[0]], d[2:])))  # x[k + 1] - x[k]
        x = d[0] + np.concatenate(([0], np.cumsum(steps)))
    else:
        x = d
    return x.astype(np.int16).astype(np.int64)
