"""Turn an ECG into the model's input: (12, 1000) float32, 10 s at 100 Hz, fixed lead order.

Training, ingest and the service all prepare ECGs here, so a query is prepared exactly like the
training data. numpy only: no torch, and no scipy (its filters, re-implemented in ``dsp``). WFDB
records are read by ``wfdb_io`` (numpy only), re-exported here as ``read_wfdb``; the ``wfdb``
package is a test reference, not a dependency.

Preparation, in order:
1. map lead names (case-insensitive, ``AVR`` = ``aVR``) to the model's order; a missing III, aVR,
   aVL or aVF is derived from I and II (Einthoven/Goldberger), any other missing lead is an error;
2. convert units to mV (``uV``/``µV`` files are divided by 1000);
3. resample to 100 Hz with a polyphase filter;
4. keep the first 10 s (recordings of 8-10 s are zero-padded at the end, shorter ones rejected);
5. remove baseline wander with a 0.5 Hz high-pass (zero-phase Butterworth).

The prepared ECG stays in mV, because absolute voltage is diagnostic (LVH, low voltage). The model
divides it by one robust scale (RMS over the leads that are not flat; ``unit_rms`` here, the same
arithmetic inside the ONNX graph) before its convolutions, so its learned part is blind to gain
errors (headers off by 5x or 1000x, as real archives have). The voltage itself can join the
embedding as a block of per-lead log amplitudes (``amplitude_weight``, off by default: a 5x gain
error in a header would move the same ECG far from itself).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import numpy as np

from ecgsearch.ecg import dsp
from ecgsearch.ecg.bounds import MAX_RATE_HZ, MIN_RATE_HZ

# WFDB reading lives in its own module (one per outside format); ingest, the CLI and tests import it here.
from ecgsearch.ecg.wfdb_io import read_wfdb

MODEL_FS = 100
MODEL_SECONDS = 10
MODEL_SAMPLES = MODEL_FS * MODEL_SECONDS
MIN_SECONDS = 8.0
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
NORMALISATION = "highpass-0.5Hz, mV; the model divides by the global RMS over non-flat leads"
HIGHPASS_HZ = 0.5
FLAT_STD_MV = 1e-6
CLIP = 20.0
# Sampling rates accepted anywhere (files and requests): ecg.bounds, which says why.
MIN_FS = MIN_RATE_HZ
MAX_FS = MAX_RATE_HZ
RATIO_LIMIT = 1000

_LEAD_INDEX = {name.upper(): i for i, name in enumerate(LEADS)}
_DERIVABLE = {"III", "AVR", "AVL", "AVF"}
_HIGHPASS = dsp.butter_highpass_sos(2, HIGHPASS_HZ, MODEL_FS)  # scipy.signal.butter(..., output="sos")


class SignalError(ValueError):
    """An ECG that cannot be prepared; names the record and says why."""

    def __init__(self, record: str, reason: str) -> None:
        super().__init__(f"{record}: {reason}")
        self.record = record
        self.reason = reason


class UnreadableRecord(SignalError):
    """The file is missing, truncated or not WFDB."""


class MissingLeads(SignalError):
    """A lead the model needs is absent and cannot be derived."""


class InvalidSamples(SignalError):
    """NaN or infinite samples, a flat ECG, or an array of the wrong shape."""


class TooShort(SignalError):
    """Fewer than MIN_SECONDS seconds of signal."""


@dataclass(frozen=True)
class RawEcg:
    """An ECG as stored: (n_leads, n_samples) in its own units, rate and lead order."""

    record: str
    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    units: tuple[str, ...]
    comments: tuple[str, ...] = ()
    recorded_at: datetime | None = None

    def starting_at(self, n: int) -> RawEcg:
        """The same recording with its first ``n`` samples dropped: a recording started later."""
        return RawEcg(self.record, self.signal[:, n:], self.fs, self.leads, self.units)


def prepare(raw: RawEcg) -> np.ndarray:
    """A RawEcg -> model input (12, MODEL_SAMPLES) float32."""
    return prepare_array(raw.signal, raw.fs, raw.leads, units=raw.units, record=raw.record)


def prepare_batch(raws: Sequence[RawEcg]) -> list[np.ndarray | SignalError]:
    """Many RawEcgs -> model inputs, or the SignalError of each one that cannot be prepared.

    Why a batch: per ECG, preparation is a few small numpy calls whose Python overhead costs
    more than their arithmetic. Here records of one rate and length are resampled in one call, and
    the high-pass and the scaling run once over the whole batch. Each result equals ``prepare(raw)``
    (same float64 arithmetic, row by row; tests/encoder/test_prepare_batch.py checks it).
    """
    out: list[np.ndarray | SignalError | None] = [None] * len(raws)
    staged: list[tuple[int, np.ndarray, float]] = []
    for i, raw in enumerate(raws):
        try:
            x, fs = _model_leads(raw.signal, raw.fs, raw.leads, raw.units, raw.record)
        except SignalError as error:
            out[i] = error
        else:
            staged.append((i, x, fs))
    records = [raws[i].record for i, _, _ in staged]
    for (i, _, _), result in zip(staged, _resample_and_filter(staged, records), strict=True):
        out[i] = result if isinstance(result, SignalError) else result.astype(np.float32)
    return out  # type: ignore[return-value]  # every slot is filled above


def load(path: str | Path) -> np.ndarray:
    """Read and prepare one WFDB record."""
    return prepare(read_wfdb(path))


def recorded(raw: RawEcg) -> np.ndarray:
    """The whole recording in the model's 12 leads (missing limb leads derived) and mV, at its own rate and
    unfiltered: the ECG as a reader is shown it, which preparation would resample to 100 Hz and cut at
    10 s. SignalError as for ``prepare`` (units, leads, NaN, length)."""
    x, _ = _model_leads(raw.signal, raw.fs, raw.leads, raw.units, raw.record, seconds=None)
    return x.astype(np.float32)


def for_comparison(signal: np.ndarray, fs: float, to_fs: float) -> np.ndarray:
    """A recording (12, n) in mV at ``fs`` (``recorded``) -> its first 10 s at ``to_fs``, baseline wander
    removed by the model's 0.5 Hz high-pass, still in mV: two ECGs of different rates on one sample grid,
    to be drawn one over the other at the finer rate's detail rather than the model's 100 Hz."""
    x = np.asarray(signal, dtype=np.float64)[:, : int(math.ceil(MODEL_SECONDS * fs)) + 1]
    ratio = Fraction(to_fs / fs).limit_denominator(RATIO_LIMIT)
    if ratio != 1:
        up, down = ratio.numerator, ratio.denominator
        x = dsp.resample_poly(x, up, down, axis=-1, window=_polyphase_filter(up, down))
    x = dsp.sosfiltfilt(dsp.butter_highpass_sos(2, HIGHPASS_HZ, to_fs), x, axis=-1)
    return x[:, : int(round(MODEL_SECONDS * to_fs))].astype(np.float32)


def prepare_array(
    signal: np.ndarray,
    fs: float,
    leads: tuple[str, ...] | list[str],
    *,
    units: tuple[str, ...] | list[str] | str = "mV",
    record: str = "<ecg>",
) -> np.ndarray:
    """(n_leads, n_samples) at ``fs`` Hz with named leads -> model input (12, MODEL_SAMPLES) float32."""
    return _prepare_float64(signal, fs, leads, units, record).astype(np.float32)


def load_for_training(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One WFDB record -> (prepared mV, the same at unit RMS), float32 each.

    The unit-RMS copy is divided before rounding to float32, as training has always read it, so a
    seed's training run reproduces its weights bit for bit across this change of preparation.
    """
    raw = read_wfdb(path)
    x = _prepare_float64(raw.signal, raw.fs, raw.leads, raw.units, raw.record)
    return x.astype(np.float32), unit_rms(x)


def _prepare_float64(
    signal: np.ndarray,
    fs: float,
    leads: tuple[str, ...] | list[str],
    units: tuple[str, ...] | list[str] | str,
    record: str,
) -> np.ndarray:
    x, fs = _model_leads(signal, fs, leads, units, record)
    (result,) = _resample_and_filter([(0, x, fs)], [record])
    if isinstance(result, SignalError):
        raise result
    return result


def _model_leads(
    signal: np.ndarray,
    fs: float,
    leads: tuple[str, ...] | list[str],
    units: tuple[str, ...] | list[str] | str,
    record: str,
    seconds: float | None = MODEL_SECONDS,
) -> tuple[np.ndarray, float]:
    """Checks, units and lead order: (12, samples of the first ``seconds`` + 1; None: all) in mV, and the
    rate."""
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2:
        raise InvalidSamples(record, f"expected a 2-D array (leads, samples), got shape {x.shape}")
    if len(leads) != x.shape[0]:
        raise InvalidSamples(record, f"{len(leads)} lead names for {x.shape[0]} signal rows")
    if isinstance(fs, bool) or not (isinstance(fs, numbers.Real) and math.isfinite(fs) and fs > 0):
        raise InvalidSamples(record, f"invalid sampling rate {fs!r}")
    fs = float(fs)
    if not MIN_FS <= fs <= MAX_FS:
        raise InvalidSamples(record, f"sampling rate {fs:.6g} Hz outside {MIN_FS:g}-{MAX_FS:g} Hz")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise InvalidSamples(record, f"{bad} NaN or infinite samples")
    factors = _unit_factors(units, x.shape[0], record)
    if seconds is not None:
        x = x[:, : int(math.ceil(seconds * fs)) + 1]  # only the first 10 s are read further
    x = _to_model_leads(x * factors[:, None] if (factors != 1.0).any() else x, leads, record)
    seconds = np.shape(signal)[1] / fs
    if seconds < MIN_SECONDS:
        raise TooShort(record, f"{seconds:.2f} s of signal, at least {MIN_SECONDS:g} s needed")
    return x, fs


def _resample_and_filter(
    staged: Sequence[tuple[int, np.ndarray, float]], records: Sequence[str]
) -> list[np.ndarray | SignalError]:
    """Resample (one call per rate and length), high-pass (one call for all) the staged ECGs: float64 mV."""
    if not staged:
        return []
    batch = np.empty((len(staged), len(LEADS), MODEL_SAMPLES))
    groups: dict[tuple[float, int], list[int]] = {}
    for j, (_, x, fs) in enumerate(staged):
        groups.setdefault((fs, x.shape[1]), []).append(j)
    for (fs, _), members in groups.items():
        stack = np.stack([staged[j][1] for j in members]) if len(members) > 1 else staged[members[0]][1][None]
        resampled = _resample(stack, fs)[:, :, :MODEL_SAMPLES]
        batch[members, :, : resampled.shape[2]] = resampled
        batch[members, :, resampled.shape[2] :] = 0.0  # 8-10 s recordings: zero-padded at the end
    batch = dsp.sosfiltfilt(_HIGHPASS, batch, axis=2)
    live = (batch.std(axis=2) > FLAT_STD_MV).any(axis=1)
    return [
        batch[j] if live[j] else InvalidSamples(records[j], "every lead is flat") for j in range(len(staged))
    ]


def global_rms(x: np.ndarray) -> np.ndarray:
    """Prepared ECGs (..., 12, T) in mV -> (...) RMS over their non-flat leads (NaN when all are flat)."""
    batch = np.asarray(x, dtype=np.float64)
    live = batch.std(axis=-1) > FLAT_STD_MV  # (..., 12)
    energy = np.einsum("...jk,...jk->...j", batch, batch)  # per lead sum of squares
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((energy * live).sum(axis=-1) / (live.sum(axis=-1) * batch.shape[-1]))


def unit_rms(x: np.ndarray) -> np.ndarray:
    """Prepared ECGs (..., 12, T) in mV -> the same divided by their ``global_rms``, clipped to +-CLIP.

    What the model's first step does (``ecgsearch.encoder.model.UnitRms``, checked equal by a test);
    training applies it here so that augmentations act in these units. An all-flat ECG stays 0.
    """
    scale = global_rms(x)
    usable = np.isfinite(scale) & (scale > 0)
    out = np.asarray(x, dtype=np.float64) / np.where(usable, scale, 1.0)[..., None, None]
    return np.clip(out, -CLIP, CLIP).astype(np.float32)


def _unit_factors(units: tuple[str, ...] | list[str] | str, n: int, record: str) -> np.ndarray:
    names = [units] * n if isinstance(units, str) else list(units)
    if len(names) != n:
        raise InvalidSamples(record, f"{len(names)} amplitude units for {n} signal rows")
    factors = []
    for unit in names:
        u = (unit or "mV").strip().lower().replace("µ", "u")
        if u in {"mv", ""}:
            factors.append(1.0)
        elif u == "uv":
            factors.append(1e-3)
        elif u == "v":
            factors.append(1e3)
        else:
            raise InvalidSamples(record, f"unknown amplitude unit {unit!r}")
    return np.asarray(factors)


def _to_model_leads(x: np.ndarray, leads: tuple[str, ...] | list[str], record: str) -> np.ndarray:
    given = {str(name).strip().upper(): i for i, name in enumerate(leads)}
    if len(given) != len(leads):
        names = [str(name).strip().upper() for name in leads]
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InvalidSamples(record, f"lead names given twice: {', '.join(twice)}")
    out = np.zeros((len(LEADS), x.shape[1]))
    missing = []
    for j, name in enumerate(LEADS):
        i = given.get(name.upper())
        if i is None:
            missing.append(name.upper())
        else:
            out[j] = x[i]
    absent = [m for m in missing if m not in _DERIVABLE]
    if absent or (missing and ("I" not in given or "II" not in given)):
        raise MissingLeads(record, f"missing leads {', '.join(absent or missing)} (have {', '.join(leads)})")
    lead_i, lead_ii = out[_LEAD_INDEX["I"]], out[_LEAD_INDEX["II"]]
    derived = {
        "III": lead_ii - lead_i,
        "AVR": -(lead_i + lead_ii) / 2,
        "AVL": lead_i - lead_ii / 2,
        "AVF": lead_ii - lead_i / 2,
    }
    for name in missing:
        out[_LEAD_INDEX[name]] = derived[name]
    return out


def resample_ratio(fs: float) -> tuple[int, int]:
    """(up, down) of the polyphase resampling from ``fs`` to MODEL_FS; (1, 1) at the model's rate."""
    if abs(fs - MODEL_FS) < 1e-9:
        return 1, 1
    ratio = Fraction(MODEL_FS / fs).limit_denominator(RATIO_LIMIT)
    return ratio.numerator, ratio.denominator


def resampled_length(n_samples: int, fs: float) -> int:
    """Samples per lead after resampling the part of ``n_samples`` that preparation reads (first 10 s)."""
    used = min(n_samples, int(math.ceil(MODEL_SECONDS * fs)) + 1)
    up, down = resample_ratio(fs)
    return -(-used * up // down)


def _resample(x: np.ndarray, fs: float) -> np.ndarray:
    """Polyphase resampling along the last axis, with the anti-aliasing filter designed once per ratio."""
    up, down = resample_ratio(fs)
    if up == down:
        return x
    return dsp.resample_poly(x, up, down, axis=-1, window=_polyphase_filter(up, down))


@functools.lru_cache(maxsize=64)
def _polyphase_filter(up: int, down: int) -> np.ndarray:
    """resample_poly's own default design (Kaiser window, beta 5), computed once per ratio."""
    max_rate = max(up, down)
    taps = dsp.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, beta=5.0)
    taps.setflags(write=False)
    return taps
