"""A content fingerprint of one prepared ECG, and the score that says whether two ECGs are one recording.

The same ECG stored twice (another dataset's copy, another rate, another file format, a 5x gain, a
few hundred ms cut at the start) embeds close to itself but not at a cosine one threshold can tell
from a look-alike ECG of another patient. The waveform itself can: a copy matches sample by sample.

Fingerprint (computed once per ECG from the prepared (12, 1000) 100 Hz mV signal; ``encode``):
- the 8 independent leads I, II, V1-V6 (III, aVR, aVL, aVF are sums of I and II: nothing new);
- band-pass 1-25 Hz (zero-phase, FFT weighting): below ~1 Hz lies what preparation's high-pass and
  zero padding leave behind, above ~25 Hz lies where one source's decimation differs from another's;
- decimated to 50 Hz; the first and last second dropped (filter edges, and PTB-XL's 100 Hz files end
  in a ~1 mV artefact their 500 Hz originals lack): 8 x 400 samples;
- one scale per ECG (never per lead: a copy keeps the ratios between leads), int8: 3,200 bytes,
  stored base64 in the payload (``EcgPayload.fingerprint``, never sent or shown).

Score (``score``): the lag within +-0.3 s maximising the joint Pearson r over the leads live in both
(a lead flat or missing in one file is ignored), then the median over 1 s windows of the joint r at
that lag, over windows carrying signal in both (at least 3). A local artefact in one file spoils one
window, not the score. ``COPY_THRESHOLD`` is measured by ``python -m ecgsearch.ingest.duplicates``.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass

import numpy as np

from ecgsearch.ecg.signals import LEADS, MODEL_FS, MODEL_SAMPLES

FINGERPRINT_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
BAND_HZ = (1.0, 25.0)
FS = 50  # the fingerprint's rate
EDGE_S = 1.0
SAMPLES = int((MODEL_SAMPLES / MODEL_FS - 2 * EDGE_S) * FS)  # 400
MAX_LAG = int(0.3 * FS)  # +-0.3 s: copies cut or padded differently at the start
WINDOW = FS  # 1 s
MIN_WINDOWS = 3
WINDOW_ENERGY = 0.05  # a window carries signal when its energy is >= 5% of the mean window's
PEAK_RMS = 8.0  # int8 full scale = 8 x the ECG's RMS (beyond: clipped, alike in both copies)
NFFT = 2048
# Score at or above which two ECGs are one recording. Measured by `python -m ecgsearch.ingest.duplicates
# ../shared/data --out results/duplicate_threshold.json` (2,232 real ECGs): real copies score 0.9952-1.0,
# synthetic ones (another rate, x5 gain, 0.16 s cut, noise, 8 leads in uV) >= 0.992, with 3 of 8 leads
# flat >= 0.979; the closest different ECGs (one patient's two recordings, each ECG's 20 nearest) reach
# 0.904. A false copy hides a different ECG from every search, a missed copy only shows one ECG twice:
# the threshold sits nearer the copies, 0.066 above the closest different ECG.
COPY_THRESHOLD = 0.97
_ROWS = [LEADS.index(name) for name in FINGERPRINT_LEADS]


class FingerprintError(ValueError):
    """A stored fingerprint that does not decode to 8 x 400 int8 samples."""


@functools.cache
def _band() -> np.ndarray:
    lo, hi = BAND_HZ
    f = np.fft.rfftfreq(NFFT, 1 / MODEL_FS)
    high = 1 / (1 + (lo / np.maximum(f, 1e-9)) ** 4)
    low = 1 / (1 + (f / hi) ** 8)
    return high * low


def compute(prepared: np.ndarray) -> np.ndarray:
    """A prepared ECG (12, MODEL_SAMPLES) mV -> its fingerprint (8, 400) int8 (all zero if flat)."""
    x = np.asarray(prepared, dtype=np.float64)[_ROWS]
    x = x - x.mean(axis=1, keepdims=True)
    x = np.fft.irfft(np.fft.rfft(x, NFFT, axis=1) * _band(), NFFT, axis=1)[:, : x.shape[1]]
    edge = int(EDGE_S * MODEL_FS)
    x = x[:, edge : MODEL_SAMPLES - edge : MODEL_FS // FS]
    rms = float(np.sqrt(np.mean(x * x)))
    if not np.isfinite(rms) or rms <= 0.0:
        return np.zeros((len(_ROWS), SAMPLES), np.int8)
    return np.clip(np.rint(x * (127.0 / (PEAK_RMS * rms))), -127, 127).astype(np.int8)


def encode(prepared: np.ndarray) -> str:
    """A prepared ECG -> its fingerprint as stored (base64 of the int8 samples, lead after lead)."""
    return base64.b64encode(compute(prepared).tobytes()).decode("ascii")


def decode(stored: str) -> np.ndarray:
    """A stored fingerprint -> (8, 400) int8; FingerprintError when it is not one."""
    try:
        raw = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        raise FingerprintError("fingerprint: not base64") from None
    if len(raw) != len(_ROWS) * SAMPLES:
        raise FingerprintError(f"fingerprint: {len(raw)} bytes, expected {len(_ROWS) * SAMPLES}")
    return np.frombuffer(raw, np.int8).reshape(len(_ROWS), SAMPLES)


@dataclass(frozen=True)
class Print:
    """A fingerprint made ready to score against many others (what ``score`` needs of it, once):
    the samples as float64, the live leads, their spectra and cumulative energies per lead."""

    samples: np.ndarray  # (8, SAMPLES) float64
    live: np.ndarray  # (8,) bool: not all zero
    spectrum: np.ndarray  # (8, SAMPLES + 1) rfft over 2 * SAMPLES points (no wrap-around for any lag)
    energy: np.ndarray  # (8, SAMPLES + 1) cumulative sum of squares per lead, from 0


def ready(fp: np.ndarray | Print) -> Print:
    """A fingerprint (8, 400) int8 -> its ``Print`` (a Print is returned as it is)."""
    if isinstance(fp, Print):
        return fp
    x = np.asarray(fp, dtype=np.float64)
    energy = np.zeros((x.shape[0], SAMPLES + 1))
    np.cumsum(x * x, axis=1, out=energy[:, 1:])
    return Print(x, np.abs(x).sum(axis=1) > 0, np.fft.rfft(x, 2 * SAMPLES, axis=1), energy)


def score(a: np.ndarray | Print, b: np.ndarray | Print) -> float:
    """How surely two fingerprints are one recording: the median windowed joint r at the best lag
    (see the module doc); 0.0 when they share no live lead or fewer than 3 windows of signal. Give
    ``Print``s (``ready``) to score one fingerprint against many without redoing its part."""
    pa, pb = ready(a), ready(b)
    live = pa.live & pb.live
    if not live.any():
        return 0.0
    every = bool(live.all())  # the common case: no copies of the arrays
    lag = _best_lag(pa, pb, None if every else live)
    x, y = (pa.samples, pb.samples) if every else (pa.samples[live], pb.samples[live])
    if lag >= 0:
        xs, ys = x[:, : SAMPLES - lag], y[:, lag:]
    else:
        xs, ys = x[:, -lag:], y[:, : SAMPLES + lag]
    n = (xs.shape[1] // WINDOW) * WINDOW
    xs = xs[:, :n].reshape(xs.shape[0], -1, WINDOW)
    ys = ys[:, :n].reshape(ys.shape[0], -1, WINDOW)
    xy = np.einsum("lwt,lwt->w", xs, ys)
    xx = np.einsum("lwt,lwt->w", xs, xs)
    yy = np.einsum("lwt,lwt->w", ys, ys)
    ok = (xx > 0) & (yy > 0)
    n_ok = int(ok.sum())
    if n_ok:
        ok &= (xx * n_ok >= WINDOW_ENERGY * xx[ok].sum()) & (yy * n_ok >= WINDOW_ENERGY * yy[ok].sum())
    r = np.sort(xy[ok] / np.sqrt(xx[ok] * yy[ok]))
    if r.size < MIN_WINDOWS:
        return 0.0
    half = r.size // 2
    return float(r[half] if r.size % 2 else (r[half - 1] + r[half]) / 2)  # the median


_LAGS = np.arange(-MAX_LAG, MAX_LAG + 1)
_AHEAD = np.maximum(_LAGS, 0)  # x(0 .. T - lag) faces y(lag .. T) for lag >= 0, the mirror below
_BEHIND = np.maximum(-_LAGS, 0)


def _best_lag(a: Print, b: Print, live: np.ndarray | None) -> int:
    """The lag (b(t + lag) matches a(t)) within +-MAX_LAG maximising the joint r over the live leads'
    overlap (None: every lead): their cross-correlation summed by FFT, each lag's energies from
    cumulative sums."""
    sa, sb, ea, eb = a.spectrum, b.spectrum, a.energy, b.energy
    if live is not None:
        sa, sb, ea, eb = sa[live], sb[live], ea[live], eb[live]
    cross = np.einsum("lf,lf->f", sa.conj(), sb)
    cc = np.fft.irfft(cross, 2 * SAMPLES)  # cc[lag mod 2T] = sum over leads and t of a(t) b(t + lag)
    ca = ea.sum(axis=0)
    cb = eb.sum(axis=0)
    exx = ca[SAMPLES - _AHEAD] - ca[_BEHIND]
    eyy = cb[SAMPLES - _BEHIND] - cb[_AHEAD]
    r = cc[_LAGS % (2 * SAMPLES)] / np.sqrt(np.maximum(exx * eyy, 1e-30))
    return int(_LAGS[int(np.argmax(r))])


def score_stored(a: str | None, b: str | None) -> float:
    """``score`` of two stored fingerprints; 0.0 when either is absent (stored before fingerprints)."""
    if not a or not b:
        return 0.0
    return score(decode(a), decode(b))


def is_copy(a: str | None, b: str | None, threshold: float = COPY_THRESHOLD) -> bool:
    """Whether two stored fingerprints are one recording (score at or above ``threshold``)."""
    return score_stored(a, b) >= threshold
