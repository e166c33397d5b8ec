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
    """A fingerprint made ready to score against many others (what ``score`` needs of it, once): the
    samples as float64, the live leads and the cumulative energy over the leads. ``ready`` of a stack
    (n, 8, 400) gives every field that leading axis: ``take`` picks rows, ``scores`` scores one Print
    against many at once."""

    samples: np.ndarray  # (..., 8, SAMPLES) float64
    live: np.ndarray  # (..., 8) bool: not all zero
    energy: np.ndarray  # (..., SAMPLES + 1) cumulative sum over time of the squares summed over leads

    def take(self, rows: int | np.ndarray | list[int]) -> Print:
        """The Prints of ``rows`` of a stack (one Print for one row)."""
        return Print(self.samples[rows], self.live[rows], self.energy[rows])


def _cumulative(squares: np.ndarray) -> np.ndarray:
    """(..., SAMPLES) -> (..., SAMPLES + 1): cumulative sums from 0 (exact: sums of int8 squares)."""
    out = np.zeros((*squares.shape[:-1], SAMPLES + 1))
    np.cumsum(squares, axis=-1, out=out[..., 1:])
    return out


def ready(fp: np.ndarray | Print) -> Print:
    """A fingerprint (8, 400) int8 or a stack of them (n, 8, 400) -> its ``Print`` (a Print is
    returned as it is)."""
    if isinstance(fp, Print):
        return fp
    x = np.asarray(fp, dtype=np.float64)
    return Print(x, np.abs(x).sum(axis=-1) > 0, _cumulative((x * x).sum(axis=-2)))


def score(a: np.ndarray | Print, b: np.ndarray | Print) -> float:
    """How surely two fingerprints are one recording: the median windowed joint r at the best lag
    (see the module doc); 0.0 when they share no live lead or fewer than 3 windows of signal. Give
    ``Print``s (``ready``) to score one fingerprint against many without redoing its part, or
    ``scores`` to score it against a stack of them at once."""
    pb = ready(b)
    return float(scores(ready(a), Print(pb.samples[None], pb.live[None], pb.energy[None]))[0])


_LAGS = np.arange(-MAX_LAG, MAX_LAG + 1)
_AHEAD = np.maximum(_LAGS, 0)  # x(0 .. T - lag) faces y(lag .. T) for lag >= 0, the mirror below
_BEHIND = np.maximum(-_LAGS, 0)
_EXACT_FLOAT32 = 2.0**24  # energies below: every sum of products of two prints is an exact float32
_PADDED = SAMPLES + 2 * MAX_LAG


def scores(a: Print, others: Print) -> np.ndarray:
    """``score(a, o)`` for each row ``o`` of the stack ``others`` (``ready`` of (n, 8, 400)), in numpy
    passes over all of them: ingest confirms ~5 candidates per new ECG.

    Each pair's lag (o(t + lag) matches a(t)) within +-MAX_LAG maximises the joint r over the leads
    live in both: their cross-correlations summed over the leads, every lag of every pair in one
    matrix product (``a`` shifted by each lag against each padded ``o``), each lag's energies from
    cumulative sums. The samples are integers, so every sum is exact, in any order: in float32 when
    Cauchy-Schwarz keeps every partial sum below 2**24 (any print ``compute`` makes: its energy is
    ~8e5), else in float64. A lead dead in either is all zeros, so it adds nothing to a
    cross-correlation; its energy is left out by a mask. At the best lag (the first of equals), the
    joint r of each whole 1 s window from the overlap's start."""
    n, leads = len(others.live), len(_ROWS)
    live = a.live & others.live  # (n, 8)
    every = bool(live.all())  # the common case: no lead to leave out
    exact32 = max(float(a.energy[-1]), float(others.energy[:, -1].max(initial=0))) < _EXACT_FLOAT32
    dtype = np.float32 if exact32 else np.float64
    # shifted[k] holds a moved k samples right in a row of _PADDED; others padded by MAX_LAG each side
    placed = np.zeros((leads, _PADDED + 2 * MAX_LAG), dtype)
    placed[:, 2 * MAX_LAG : 2 * MAX_LAG + SAMPLES] = a.samples
    # shifted[k, l, s] = placed[l, s + 2 MAX_LAG - k]: a view stepping back one sample per lag, copied
    step, row = placed.strides[1], placed.strides[0]
    view = np.lib.stride_tricks.as_strided(
        placed[:, 2 * MAX_LAG :],
        shape=(len(_LAGS), leads, _PADDED),
        strides=(-step, row, step),
        writeable=False,
    )
    shifted = view.reshape(len(_LAGS), -1)  # a copy: the view is not contiguous
    padded = np.zeros((n, leads, _PADDED), dtype)
    padded[:, :, MAX_LAG : MAX_LAG + SAMPLES] = others.samples
    cc = (padded.reshape(n, -1) @ shifted.T).astype(np.float64)  # (n, lags): sum of a(t) o(t + lag)
    if every:
        ca, cb = np.broadcast_to(a.energy, (n, SAMPLES + 1)), others.energy
    else:  # the energies of the leads live in both only
        lead = live[..., None]
        ca = _cumulative((a.samples * a.samples * lead).sum(axis=1))
        cb = _cumulative((others.samples * others.samples * lead).sum(axis=1))
    exx = ca[:, SAMPLES - _AHEAD] - ca[:, _BEHIND]
    eyy = cb[:, SAMPLES - _BEHIND] - cb[:, _AHEAD]
    lag = _LAGS[np.argmax(cc / np.sqrt(np.maximum(exx * eyy, 1e-30)), axis=1)]
    # each pair's overlap at its lag, in whole windows from its start (zeros after)
    xs, ys = np.zeros((n, leads, SAMPLES)), np.zeros((n, leads, SAMPLES))
    for k, shift in enumerate(lag.tolist()):
        span = (SAMPLES - abs(shift)) // WINDOW * WINDOW
        xs[k, :, :span] = a.samples[:, max(-shift, 0) : max(-shift, 0) + span]
        ys[k, :, :span] = others.samples[k, :, max(shift, 0) : max(shift, 0) + span]
    if not every:
        xs *= live[..., None]
        ys *= live[..., None]
    cut = (n, leads, SAMPLES // WINDOW, WINDOW)
    xw, yw = xs.reshape(cut), ys.reshape(cut)
    xy = np.einsum("nlwt,nlwt->nw", xw, yw)
    xx = np.einsum("nlwt,nlwt->nw", xw, xw)
    yy = np.einsum("nlwt,nlwt->nw", yw, yw)
    ok = (xx > 0) & (yy > 0)
    n_ok = ok.sum(axis=1, keepdims=True)
    ok &= (xx * n_ok >= WINDOW_ENERGY * (xx * ok).sum(axis=1, keepdims=True)) & (
        yy * n_ok >= WINDOW_ENERGY * (yy * ok).sum(axis=1, keepdims=True)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sort(np.where(ok, xy / np.sqrt(xx * yy), np.inf), axis=1)  # windows not ok sort last
    count = ok.sum(axis=1)
    rows, half = np.arange(n), count // 2
    upper, lower = r[rows, np.minimum(half, r.shape[1] - 1)], r[rows, np.maximum(half - 1, 0)]
    median = np.where(count % 2 == 1, upper, (lower + upper) / 2)  # the median of the windows' r
    return np.where(live.any(axis=1) & (count >= MIN_WINDOWS), median, 0.0)


def score_stored(a: str | None, b: str | None) -> float:
    """``score`` of two stored fingerprints; 0.0 when either is absent (stored before fingerprints)."""
    if not a or not b:
        return 0.0
    return score(decode(a), decode(b))


def is_copy(a: str | None, b: str | None, threshold: float = COPY_THRESHOLD) -> bool:
    """Whether two stored fingerprints are one recording (score at or above ``threshold``)."""
    return score_stored(a, b) >= threshold
