"""signals.prepare_array: bad input raises the typed SignalError, numpy scalars are valid rates."""

from __future__ import annotations

from pathlib import Path

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


def test_recorded_keeps_every_sample_in_model_order_and_mv(ptbxl_dir: Path) -> None:
    """``recorded``: the whole file at its own rate, leads mapped and in mV, nothing filtered or cut."""
    raw = signals.read_wfdb(ptbxl_dir / "records500" / "00000" / "00001_hr")
    x = signals.recorded(raw)
    assert x.shape == (12, 5000) and x.dtype == np.float32
    np.testing.assert_allclose(x[1], raw.signal[raw.leads.index("II")], atol=1e-6)
    uv = signals.recorded(signals.RawEcg("uv", raw.signal * 1000, raw.fs, raw.leads, ("uV",) * 12))
    np.testing.assert_allclose(uv, x, atol=1e-5)


def test_two_rates_of_one_ecg_compare_on_one_grid(ptbxl_dir: Path) -> None:
    """PTB-XL's 500 Hz file and its 100 Hz twin, both put on a 500 Hz grid by ``for_comparison``, agree
    closely (the 100 Hz file lacks only what lies above 50 Hz); the 500 Hz one keeps its own samples'
    detail, high-passed like the model's input."""
    high = signals.recorded(signals.read_wfdb(ptbxl_dir / "records500" / "00000" / "00001_hr"))
    low = signals.recorded(signals.read_wfdb(ptbxl_dir / "records100" / "00000" / "00001_lr"))
    at_500 = signals.for_comparison(high, 500.0, 500.0)
    from_100 = signals.for_comparison(low, 100.0, 500.0)
    assert at_500.shape == from_100.shape == (12, 5000)
    inner = slice(250, 4750)  # away from the edges of the filters
    assert np.corrcoef(at_500[:, inner].ravel(), from_100[:, inner].ravel())[0, 1] > 0.95
    assert abs(np.median(at_500, axis=1)).max() < 0.1  # baseline wander removed
    model = signals.prepare_array(low, 100.0, LEADS)  # the model's input is the same high-pass at 100 Hz
    np.testing.assert_allclose(signals.for_comparison(low, 100.0, 100.0), model, atol=1e-5)
