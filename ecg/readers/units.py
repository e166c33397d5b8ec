"""Voltage units and the one counts-to-mV step the Philips, aECG, SCP-ECG and EDF readers share.

The scaling is done in two float64 steps, ``counts * scale + offset`` in the file's unit and then one
multiplication to mV, in that order: the readers returned exactly these values before (through
ecgdatakit), and a single combined factor would round differently in the last bit.
"""

from __future__ import annotations

import numpy as np

from ecgsearch.ecg.readers.types import ReaderError

_MICROVOLTS = {"nV": 0.001, "uV": 1.0, "mV": 1000.0, "V": 1_000_000.0}
_ALIASES = {
    "nv": "nV",
    "nanovolt": "nV",
    "nanovolts": "nV",
    "uv": "uV",
    "\u00b5v": "uV",
    "\u03bcv": "uV",
    "microvolt": "uV",
    "microvolts": "uV",
    "mv": "mV",
    "millivolt": "mV",
    "millivolts": "mV",
    "v": "V",
    "volt": "V",
    "volts": "V",
}


def voltage_unit(text: str | None) -> str | None:
    """'uV', 'mV', 'V' or 'nV' for the spellings files use ('µV', 'uv', 'millivolts'...), else None."""
    return _ALIASES.get((text or "").strip().lower())


def rescale(value: float, unit: str, to_unit: str) -> float:
    """A value in one voltage unit expressed in another (an aECG origin in its scale's unit)."""
    return value * _MICROVOLTS[unit] / _MICROVOLTS[to_unit]


def to_mv(counts: np.ndarray, scale: float, offset: float, unit: str | None, field: str) -> np.ndarray:
    """``counts * scale + offset`` (in ``unit``) as float64 mV; ReaderError(field) when the unit is
    not a voltage or the scale is zero or not finite (a negative EDF gain inverts, as the file says)."""
    if unit not in _MICROVOLTS:
        raise ReaderError(field, "amplitudes not convertible to mV (no voltage unit)")
    if not (np.isfinite(scale) and scale != 0 and np.isfinite(offset)):
        raise ReaderError(field, "amplitude scale is zero or not a number")
    x = np.asarray(counts).astype(np.float64) * scale + offset
    return x if unit == "mV" else x * (_MICROVOLTS[unit] / _MICROVOLTS["mV"])


def sampling_rate(rate: float) -> float:
    """A rate computed from an interval: whole Hz when it is one up to float noise (1 / 0.002 s),
    otherwise kept exact rather than rounded (a 3333 us interval is 300.03 Hz, not 300)."""
    nearest = round(rate)
    return float(nearest) if abs(rate - nearest) <= 1e-6 * max(1.0, abs(rate)) else float(rate)
