"""Philips ``<parsedwaveforms>`` as integer counts: XLI through sierraecg's decoder, or uncompressed.

XLI (LZW, 10-bit codes, over second differences) is decoded by sierraecg 0.4.0, the Philips reference
decoder, one lead at a time: this module walks the 8-byte block headers itself (length, first sample)
and feeds each block to ``sierraecg.lzw.LzwDecoder`` and ``sierraecg.xli.xli_decode_deltas``, rather
than calling ``sierraecg.read_file``, so that a block length pointing backwards cannot loop forever,
a block cannot expand past the samples the header declares (LZW can grow a few bytes into megabytes),
and the XML is parsed once, by defusedxml. Leads III, aVR, aVL and aVF are stored as residuals and
rebuilt here from I and II with sierraecg's formulas.
"""

from __future__ import annotations

import base64
import binascii
from xml.etree.ElementTree import Element

import numpy as np
from sierraecg.lzw import LzwDecoder
from sierraecg.xli import xli_decode_deltas

from ecgsearch.ecg.readers.types import ReaderError, check_channels, check_duration, real
from ecgsearch.ecg.readers.xmlsafe import text

_STANDARD = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# The pure-Python LZW decoder takes ~0.4 us a byte: 4 million samples is 8 MB, a few seconds at worst.
MAX_XLI_SAMPLES = 4_000_000
_SLACK_BYTES = 32  # a block may decode a little past the declared length; more is corrupt


def decode(root: Element, waves: Element) -> tuple[np.ndarray, list[str], int]:
    """(leads, samples) int64 counts, lead labels and the sampling rate (Hz)."""
    signal = root.find("dataacquisition/signalcharacteristics")
    rate = _whole(waves.get("samplespersecond"))
    if rate is None and signal is not None:
        rate = _whole(text(signal, "samplingrate"))
    if not rate or rate <= 0:
        raise ReaderError("samplingrate", "missing or not a positive number")
    duration_ms = real(waves.get("durationperchannel"))
    if duration_ms is None or duration_ms <= 0:
        raise ReaderError("durationperchannel", "missing or not a positive number")
    n = int(round(duration_ms * rate / 1000))
    check_duration(n, rate)
    labels = _labels(waves, signal)
    check_channels(len(labels))
    method = _compression(waves)
    encoding = waves.get("dataencoding", "")
    if method == "XLI":
        if encoding != "Base64":
            raise ReaderError("dataencoding", f"XLI data must be Base64, not {encoding[:20]!r}")
        counts = _xli(_base64(waves.text or ""), len(labels), n)
        if tuple(labels[:6]) == _STANDARD[:6]:
            _rebuild_limb_leads(counts)
    elif method:
        raise ReaderError("compression", f"{method[:20]!r} is not supported (XLI or none)")
    else:
        signed = waves.get("signalsigned") or (text(signal, "signalsigned") if signal is not None else None)
        unsigned = (signed or "").strip().lower() in {"false", "no", "f", "0"}
        counts = _uncompressed(waves.text or "", encoding, len(labels), n, not unsigned)
    return counts, labels, rate


def _labels(waves: Element, signal: Element | None) -> list[str]:
    """``leadlabels`` (cut to ``numberofleads``), else named from the channel count and lead set."""
    names = (waves.get("leadlabels") or "").split()
    if names:
        declared = _whole(waves.get("numberofleads"))
        return names[:declared] if declared is not None and 0 < declared < len(names) else names
    if signal is None:
        raise ReaderError("signalcharacteristics", "missing: no lead labels")
    count = _whole(text(signal, "numberchannelsallocated")) or _whole(text(signal, "numberchannelsvalid"))
    if count is None or count <= 0:
        raise ReaderError("numberchannelsallocated", "missing: no lead labels")
    check_channels(count)
    lead_set = text(signal, "acquisitiontype") or text(signal, "leadset") or ""
    standard = lead_set in {"STD-12", "10-WIRE"}
    return [_STANDARD[k] if standard and k < 12 else f"Channel {k + 1}" for k in range(count)]


def _compression(waves: Element) -> str:
    """'XLI', another method name, or '' when the data is not compressed."""
    if (waves.get("compressflag") or "").strip().lower() in {"false", "no", "0"}:
        return ""
    method = (waves.get("compression") or waves.get("compressmethod") or "").strip()
    return "" if method.lower() in {"", "uncompressed", "none"} else method.upper()


def _xli(raw: bytes, n_leads: int, n: int) -> np.ndarray:
    if n_leads * n > MAX_XLI_SAMPLES:
        raise ReaderError("parsedwaveforms", f"XLI data of {n_leads * n} samples; at most {MAX_XLI_SAMPLES}")
    leads, pos = [], 0
    for lead in range(n_leads):
        if pos + 8 > len(raw):
            raise ReaderError("parsedwaveforms", f"XLI data holds {lead} leads, {n_leads} expected")
        size = int.from_bytes(raw[pos : pos + 4], "little", signed=True)
        first = int.from_bytes(raw[pos + 6 : pos + 8], "little", signed=True)
        pos += 8
        if size < 0 or pos + size > len(raw):
            raise ReaderError("parsedwaveforms", f"XLI block {lead + 1} length points past the data")
        buffer = _lzw(raw[pos : pos + size], 2 * n + _SLACK_BYTES)
        pos += size
        if len(buffer) % 2:
            buffer.append(0)
        if len(buffer) < max(2 * n, 4):
            found = len(buffer) // 2
            raise ReaderError("parsedwaveforms", f"XLI lead {lead + 1}: {found} samples, {n} expected")
        try:
            samples = xli_decode_deltas(buffer, first)
        except (OverflowError, IndexError, ValueError):
            reason = f"XLI lead {lead + 1} does not decode to 16-bit samples"
            raise ReaderError("parsedwaveforms", reason) from None
        leads.append(np.asarray(samples[:n], dtype=np.int64))
    return np.stack(leads)


def _lzw(block: bytes, limit: int) -> list[int]:
    """The bytes of one LZW block, refused once longer than ``limit``."""
    decoder = LzwDecoder(block, bits=10)
    out: list[int] = []
    while len(out) <= limit:
        try:
            byte = decoder.read()
        except (IndexError, KeyError, ValueError):
            raise ReaderError("parsedwaveforms", "an XLI block is not valid LZW data") from None
        if byte == -1:
            return out
        out.append(byte & 0xFF)
    raise ReaderError("parsedwaveforms", "an XLI block decodes past the declared duration")


def _rebuild_limb_leads(x: np.ndarray) -> None:
    """XLI stores III, aVR, aVL, aVF as residuals from what I and II predict (in place, floor division)."""
    lead_i, lead_ii = x[0], x[1]
    x[2] = lead_ii - lead_i - x[2]
    lead_iii = x[2]
    x[3] = -x[3] - (lead_i + lead_ii) // 2
    x[4] = (lead_i - lead_iii) // 2 - x[4]
    x[5] = (lead_ii + lead_iii) // 2 - x[5]


def _uncompressed(body: str, encoding: str, n_leads: int, n: int, signed: bool) -> np.ndarray:
    """Leads one after another: Base64 16-bit little-endian, or whitespace-separated integers."""
    if encoding == "Base64":
        raw = _base64(body)
        if len(raw) < 2 * n_leads * n:
            raise ReaderError("parsedwaveforms", f"{len(raw)} bytes, {2 * n_leads * n} expected")
        values = np.frombuffer(raw, dtype="<i2" if signed else "<u2", count=n_leads * n).astype(np.int64)
    elif encoding == "Plain":
        tokens = body.split()
        if len(tokens) < n_leads * n:
            raise ReaderError("parsedwaveforms", f"{len(tokens)} samples, {n_leads * n} expected")
        try:
            values = np.array(tokens[: n_leads * n], dtype=np.int64)
        except (ValueError, OverflowError):
            raise ReaderError("parsedwaveforms", "a plain sample is not a whole number") from None
    else:
        raise ReaderError("dataencoding", f"{encoding[:20]!r} is not supported (Base64 or Plain)")
    return values.reshape(n_leads, n)


def _base64(body: str) -> bytes:
    try:
        raw = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ReaderError("parsedwaveforms", "not valid Base64") from None
    if not raw:
        raise ReaderError("parsedwaveforms", "no waveform data")
    return raw


def _whole(value: str | None) -> int | None:
    x = real(value)
    return None if x is None else int(round(x))
