"""The first R peak of lead II, to line two ECGs up in time for the comparison view."""

from __future__ import annotations

import numpy as np

from ecgsearch.encoder.dsp import find_peaks  # scipy.signal.find_peaks' rules, numpy only

LEAD_II = 1  # index in the model's lead order
MIN_RR_S = 0.25  # no two R peaks closer than this (240 beats per minute)
HEIGHT_FRACTION = 0.5  # a peak must reach half of the lead's largest deflection


def first_r_peak(lead: np.ndarray, fs: float) -> int | None:
    """Sample index of the first R peak, or None for a flat lead.

    The QRS complex is the largest deflection on lead II; when its negative swing is the larger one
    (inverted or deep S complexes) the lead is flipped first. Peaks must be ``MIN_RR_S`` apart and
    reach ``HEIGHT_FRACTION`` of the maximum, which keeps T waves out on ordinary ECGs.
    """
    x = np.asarray(lead, dtype=np.float64)
    x = np.nan_to_num(x - np.median(x))
    if x.size < 3 or not np.any(x):
        return None
    if -x.min() > x.max():
        x = -x
    peaks = find_peaks(x, height=HEIGHT_FRACTION * x.max(), distance=max(1, int(MIN_RR_S * fs)))
    return int(peaks[0]) if len(peaks) else None


def alignment_shift(query: np.ndarray, neighbour: np.ndarray, fs: float) -> int | None:
    """Samples to move the neighbour later so its first lead II R peak meets the query's (None: no peak)."""
    q = first_r_peak(query[LEAD_II], fs)
    n = first_r_peak(neighbour[LEAD_II], fs)
    return None if q is None or n is None else q - n
