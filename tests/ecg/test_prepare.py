"""signals.prepare_array: bad input raises the typed SignalError, numpy scalars are valid rates."""

from __future__ import annotations

import numpy as np
import pytest

from ecgsearch.ecg import signals

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _ecg(fs: int = 500, seconds: int = 10) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((len(LEADS), fs * seconds))


def test_unit_count_mismatch_is_invalid_samples() -> None:
    with pytest.raises(signals.InvalidSamples, match="2 amplitude units for 12 signal rows"):
        signals.prepare_array(_ecg(), 500.0, LEADS, units=("mV", "mV"))


@pytest.mark.parametrize("fs", [np.float32(500.0), np.int64(500), 500])
def test_numpy_sampling_rate_is_accepted(fs: object) -> None:
    expected = signals.prepare_array(_ecg(), 500.0, LEADS)
    np.testing.assert_array_equal(signals.prepare_array(_ecg(), fs, LEADS), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("fs", [True, 0.0, -1.0, float("nan"), "500"])
def test_invalid_sampling_rate(fs: object) -> None:
    with pytest.raises(signals.InvalidSamples, match="invalid sampling rate"):
        signals.prepare_array(_ecg(), fs, LEADS)  # type: ignore[arg-type]
