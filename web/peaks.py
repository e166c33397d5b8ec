"""R peaks of lead II, to line two ECGs up for the comparison view: on the first R peak (the 10 s
overlay), and beat by beat as a median beat per lead (every beat of each ECG cut around its lead II R
peak and the median taken sample by sample), which compares irregular rhythms such as atrial
fibrillation, where beats after the first no longer coincide."""

from __future__ import annotations

import numpy as np

from ecgsearch.ecg.dsp import find_peaks  # scipy.signal.find_peaks' rules, numpy only

LEAD_II = 1  # index in the model's lead order
MIN_RR_S = 0.25  # no two R peaks closer than this (240 beats per minute)
HEIGHT_FRACTION = 0.5  # a peak must reach half of the lead's largest deflection
BEAT_BEFORE_S = 0.25  # a beat's window: from 250 ms before its R peak (P wave and PR) ...
BEAT_AFTER_S = 0.45  # ... to 450 ms after it (QRS, ST and T at ordinary rates)


def r_peaks(lead: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of the R peaks, in time order (empty for a flat lead).

    The QRS complex is the largest deflection on lead II; when its negative swing is the larger one
    (inverted or deep S complexes) the lead is flipped first. Peaks must be ``MIN_RR_S`` apart and
    reach ``HEIGHT_FRACTION`` of the maximum, which keeps T waves out on ordinary ECGs.
    """
    x = np.asarray(lead, dtype=np.float64)
    x = np.nan_to_num(x - np.median(x)) if x.size else x
    if x.size < 3 or not np.any(x):
        return np.zeros(0, dtype=np.int64)
    if -x.min() > x.max():
        x = -x
    peaks = find_peaks(x, height=HEIGHT_FRACTION * x.max(), distance=max(1, int(MIN_RR_S * fs)))
    return np.sort(np.asarray(peaks, dtype=np.int64))


def first_r_peak(lead: np.ndarray, fs: float) -> int | None:
    """Sample index of the first R peak (``r_peaks``), or None when there is none."""
    peaks = r_peaks(lead, fs)
    return int(peaks[0]) if len(peaks) else None


def median_beat(signal: np.ndarray, fs: float) -> tuple[np.ndarray, int] | None:
    """The median beat of every lead and how many beats made it, or None without one whole beat.

    Each lead II R peak with a whole window (``BEAT_BEFORE_S`` before to ``BEAT_AFTER_S`` after) cuts
    the same window from all leads; the median over beats, sample by sample, is the lead's median
    beat, its R peak at sample ``round(BEAT_BEFORE_S * fs)``. Shape (leads, window).
    """
    x = np.asarray(signal, dtype=np.float64)
    before, after = int(round(BEAT_BEFORE_S * fs)), int(round(BEAT_AFTER_S * fs))
    peaks = r_peaks(x[LEAD_II], fs)
    whole = peaks[(peaks >= before) & (peaks + after <= x.shape[1])]
    if len(whole) == 0:
        return None
    beats = np.stack([x[:, p - before : p + after] for p in whole])
    return np.median(beats, axis=0), len(whole)


def alignment_shift(query: np.ndarray, neighbour: np.ndarray, fs: float) -> int | None:
    """Samples to move the neighbour later so its first lead II R peak meets the query's (None: no peak)."""
    q = first_r_peak(query[LEAD_II], fs)
    n = first_r_peak(neighbour[LEAD_II], fs)
    return None if q is None or n is None else q - n
