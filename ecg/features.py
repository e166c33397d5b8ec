"""Handcrafted ECG features: lead-II R peaks, heart rate, RR irregularity, per-lead log-RMS amplitudes.

numpy only (``ecg.dsp``: no scipy, no torch), so serving can compute them beside the ONNX encoder.
They measure what a convolutional embedding pooled over time carries poorly: the timing of beats (an irregular
RR sequence is the mark of atrial fibrillation) and absolute voltage, which preparation divides out
(a high QRS voltage is the mark of left ventricular hypertrophy).

Rhythm features read a prepared ECG (any amplitude scale: peak detection is scale-free). Amplitude
features read the prepared ECG in mV. The served model computes both inside its ONNX graph
(``ecgsearch.encoder.model``) with the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ecgsearch.ecg import dsp
from ecgsearch.ecg.signals import LEADS, MODEL_FS

LEAD_II = LEADS.index("II")
RHYTHM_NAMES = ("heart_rate_bpm", "rr_irregularity")
QRS_BAND_HZ = (5.0, 25.0)
FIR_TAPS = 31  # linear-phase band-pass, 0.31 s at 100 Hz
ENERGY_SAMPLES = 9  # moving average of the squared band: ~0.09 s, one QRS
PEAK_HALF_WIDTH = 12  # a peak is the maximum within +-0.12 s: at most ~240 bpm
TOP_RANK = 20  # the threshold is a fraction of the 20th largest energy sample (98th centile of 10 s)
THRESHOLD = 0.35
MAX_PEAKS = 48  # more than 10 s at 240 bpm holds
LOG_RMS_FLOOR_MV = 1e-3
# Global RMS (mV, over non-flat leads, after the 0.5 Hz high-pass) a surface ECG can have: PTB-XL's
# 1,987 ECGs span 0.076-0.82 mV (median 0.18; the model card records its training folds' range when the
# amplitude block is on). Beyond this range the header gain is wrong (1000x: microvolts labelled mV) and
# the voltage is treated as unknown. A 5x error stays inside it and cannot be told from the signal.
VOLTAGE_RANGE_MV = (0.01, 10.0)
Z_CLIP = 5.0  # standardised features are clipped, so one odd measurement cannot dominate a vector
QRS_FIR = dsp.firwin_bandpass(FIR_TAPS, *QRS_BAND_HZ, fs=MODEL_FS).astype(np.float32)


def qrs_energy(lead: np.ndarray) -> np.ndarray:
    """(n, T) leads at MODEL_FS -> (n, T) QRS-band energy: FIR band-pass, squared, moving average."""
    x = np.asarray(lead, dtype=np.float64)
    band = dsp.correlate_same(x, QRS_FIR.astype(np.float64))
    return dsp.moving_mean(band**2, ENERGY_SAMPLES)


def r_peaks(lead: np.ndarray) -> np.ndarray:
    """Sample indices of R peaks in one lead at MODEL_FS (the rule ``rhythm`` and the encoder share).

    A peak is a sample of QRS-band energy that is the maximum within +-PEAK_HALF_WIDTH samples and
    above THRESHOLD x the TOP_RANK-th largest energy sample.
    """
    x = np.asarray(lead, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected one lead (n_samples,), got shape {x.shape}")
    return np.flatnonzero(_peak_mask(qrs_energy(x[None]))[0])


def _peak_mask(energy: np.ndarray) -> np.ndarray:
    rank = min(TOP_RANK, energy.shape[1])
    top = -np.partition(-energy, rank - 1, axis=1)[:, rank - 1 : rank]  # the rank-th largest
    local = dsp.moving_max(energy, 2 * PEAK_HALF_WIDTH + 1)
    return (energy == local) & (energy > THRESHOLD * top) & (energy > 0)


IRREGULARITY = ("trimmed", "rmssd", "median")
TRIM_LARGEST = 2  # one missed or spurious beat corrupts two successive RR differences


def rhythm(ecgs: np.ndarray, irregularity: str = "trimmed") -> np.ndarray:
    """(n, 12, T) ECGs at MODEL_FS -> (n, 2): heart rate (bpm) and RR irregularity from lead II.

    Heart rate is 60 / the median RR interval (``rmssd``: the mean, its original rule), irregularity
    relative to it: ``trimmed`` (served) the root mean square of successive RR differences without the
    TRIM_LARGEST largest (when more than TRIM_LARGEST + 1 remain), so one missed or extra beat, as at
    a recording's edge or a circular shift's seam, does not read as arrhythmia while atrial
    fibrillation, irregular throughout, still does; ``rmssd`` all of them; ``median`` their median
    absolute value. Chosen on fold 9 (results/rhythm_variants_fold9.json). Rows with fewer than three
    R peaks get NaN (no interval sequence to describe). Any amplitude scale gives the same.
    """
    return rhythms(ecgs, (irregularity,))[irregularity]


def rhythms(ecgs: np.ndarray, irregularities: Sequence[str]) -> dict[str, np.ndarray]:
    """``rhythm`` under several irregularity rules from one R-peak detection, every row at once (the
    rhythm view takes three; ingest measures whole batches)."""
    for irregularity in irregularities:
        if irregularity not in IRREGULARITY:
            raise ValueError(f"irregularity must be one of {IRREGULARITY}, not {irregularity!r}")
    x = _batch(ecgs)
    peaks = _peak_mask(qrs_energy(x[:, LEAD_II]))
    # Each row's first MAX_PEAKS peak positions, left-aligned; the rest NaN (sorted last).
    count = np.minimum(peaks.sum(axis=1), MAX_PEAKS)
    at = np.full((len(x), MAX_PEAKS), np.nan)
    rows, cols = np.nonzero(peaks)
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position of each peak within its row
    keep = rank < MAX_PEAKS
    at[rows[keep], rank[keep]] = cols[keep]
    rr = np.diff(at, axis=1) / MODEL_FS  # NaN past each row's last interval
    d = np.abs(np.diff(rr, axis=1))
    n_rr, n_d = count - 1, count - 2
    measured = count >= 3
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {}
        for irregularity in irregularities:
            typical = _row_mean(rr, n_rr) if irregularity == "rmssd" else _row_median(rr, n_rr)
            if irregularity == "median":
                spread = _row_median(d, n_d)
            elif irregularity == "trimmed":
                trimmed = np.where(n_d > TRIM_LARGEST + 1, n_d - TRIM_LARGEST, n_d)
                spread = np.sqrt(_row_mean(np.sort(d, axis=1) ** 2, trimmed))
            else:
                spread = np.sqrt(_row_mean(d**2, n_d))
            spread = np.where(n_d > 0, spread, 0.0)
            got = np.column_stack([60.0 / typical, spread / typical])
            out[irregularity] = np.where(measured[:, None], got, np.nan)
    return out


def _row_median(values: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median of the first ``n[i]`` values of each row (the rest NaN); NaN where ``n`` is 0."""
    ordered = np.sort(values, axis=1)
    rows = np.arange(len(values))
    lo, hi = np.maximum((n - 1) // 2, 0), np.maximum(n // 2, 0)
    return np.where(n > 0, (ordered[rows, lo] + ordered[rows, hi]) / 2, np.nan)


def _row_mean(values: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mean of the first ``n[i]`` values of each row (``values`` sorted or in order, NaN-padded)."""
    used = np.arange(values.shape[1])[None, :] < n[:, None]
    return np.where(used, values, 0.0).sum(axis=1) / n


def rhythm_statistics(values: np.ndarray) -> dict:
    """Mean and std of ``rhythm`` output over the rows where it was measured: the standardisation."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "names": list(RHYTHM_NAMES),
        "mean": [float(x) for x in np.nanmean(v, axis=0)],
        "std": [float(x) for x in np.nanstd(v, axis=0)],
        "n": int(np.isfinite(v).all(axis=1).sum()),
    }


def lead_log_rms(ecgs_mv: np.ndarray) -> np.ndarray:
    """(n, 12, T) ECGs in mV -> (n, 12): natural log of each lead's RMS (floored at 1 µV)."""
    x = _batch(ecgs_mv)
    return np.log(np.maximum(np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=2)), LOG_RMS_FLOOR_MV))


def _batch(ecgs: np.ndarray) -> np.ndarray:
    x = np.asarray(ecgs)
    if x.ndim != 3 or x.shape[1] != len(LEADS):
        raise ValueError(f"expected (n, {len(LEADS)}, samples) ECGs, got shape {x.shape}")
    return x


def standardise(
    features: np.ndarray, mean: Sequence[float], std: Sequence[float], clip: float = Z_CLIP
) -> np.ndarray:
    """z-scores with the reference mean and std, clipped to +-clip; NaN (no measurement) becomes 0."""
    z = (np.asarray(features, dtype=np.float64) - np.asarray(mean)) / np.asarray(std)
    return np.clip(np.nan_to_num(z, nan=0.0), -clip, clip)


def block_weights(blocks: Sequence[tuple[int, float]]) -> np.ndarray:
    """Per-feature weights from (size, weight) blocks: weight / sqrt(size) each, so a block's share of
    the vector does not grow with its number of features."""
    return np.concatenate([np.full(size, weight / np.sqrt(size)) for size, weight in blocks])


def append_to_embedding(unit_vectors: np.ndarray, z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[unit embedding | weights * z], L2-normalised: standardised features join the vector.

    A block of weight w whose features are z-scores has an expected norm of w beside the
    embedding's 1, so cosine similarity weighs the measured part by about w^2 against the learned one.
    """
    e = np.asarray(unit_vectors, dtype=np.float64)
    f = np.asarray(z, dtype=np.float64) * np.asarray(weights, dtype=np.float64)
    out = np.concatenate([e, f], axis=1)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)
