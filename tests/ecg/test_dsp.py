"""ecg/dsp.py gives scipy.signal's values, on real ECGs wherever one fits, and serving imports no scipy.

scipy is the reference here only (dev extra); the serving install leaves it out. Stated tolerances:
firwin taps 1e-15 absolute, resample_poly 1e-10 of the signal's scale, sosfiltfilt 1e-10 mV (the
blocked filter sums in another order than scipy's sample-by-sample recursion: ~1e-12 measured),
prepared ECGs 1e-6 mV, find_peaks exactly.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from ecgsearch.ecg import dsp, signals
from ecgsearch.ecg.readers import complete_leads, read_ecg

TAPS_TOL = 1e-15
RESAMPLE_TOL = 1e-10  # relative to max |x|
FILTER_TOL = 1e-10  # mV
PREPARED_TOL = 1e-6  # mV
# Rates that occur in ECG archives (shared data: 100, 500, 800, 1000 Hz; elsewhere 128, 250, 257, 360,
# 10 kHz) and odd ones near the limits (MIN_FS, ratios next to RATIO_LIMIT).
RATES = (500, 1000, 800, 257, 360, 128, 250, 10_000, 50, 75, 99.9, 100.1, 50.02, 333, 1024, 240, 2000)


@pytest.fixture(scope="module")
def ecg500(data_dir: Path) -> np.ndarray:
    """A real 12-lead ECG, 10 s at 500 Hz, in mV."""
    return signals.read_wfdb(data_dir / "ptb-xl" / "records500" / "00000" / "00001_hr").signal


@pytest.fixture(scope="module")
def ecg1000(data_dir: Path) -> np.ndarray:
    """A real 12-lead ECG of 115 s at 1000 Hz (PTB via the Challenge), rescaled to mV."""
    raw = signals.read_wfdb(data_dir / "challenge" / "ptb" / "S0002")
    return raw.signal / np.abs(raw.signal).max()


@pytest.fixture(scope="module")
def ptbxl100(data_dir: Path) -> list[signals.RawEcg]:
    return [
        signals.read_wfdb(p.with_suffix("")) for p in sorted(data_dir.glob("ptb-xl/records100/00000/*.hea"))
    ]


def _close(got: np.ndarray, want: np.ndarray, tol: float) -> float:
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    diff = float(np.nanmax(np.abs(got - want), initial=0.0))
    assert diff <= tol, diff
    return diff


# --- firwin -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fs", RATES)
def test_firwin_equals_scipy_for_every_resampling_filter(fs: float) -> None:
    up, down = signals.resample_ratio(fs)
    max_rate = max(up, down)
    want = sps.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    _close(dsp.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, beta=5.0), want, TAPS_TOL)
    _close(signals._polyphase_filter(up, down), want, TAPS_TOL)


@pytest.mark.parametrize(
    ("numtaps", "cutoff", "beta"), [(1, 0.5, 5.0), (2, 0.3, 5.0), (64, 0.1, 8.6), (7, 0.9, 0.0)]
)
def test_firwin_small_and_even_lengths(numtaps: int, cutoff: float, beta: float) -> None:
    _close(dsp.firwin(numtaps, cutoff, beta), sps.firwin(numtaps, cutoff, window=("kaiser", beta)), TAPS_TOL)
    _close(dsp.kaiser(numtaps, beta), sps.windows.kaiser(numtaps, beta), TAPS_TOL)


def test_firwin_refuses_what_scipy_refuses() -> None:
    for cutoff in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            dsp.firwin(11, cutoff)
    with pytest.raises(ValueError):
        dsp.firwin(0, 0.5)


# --- resample_poly ------------------------------------------------------------------------------


@pytest.mark.parametrize("fs", RATES)
def test_resample_poly_equals_scipy_on_real_ecgs(fs: float, ecg500: np.ndarray, ecg1000: np.ndarray) -> None:
    """The first 10 s as preparation reads them (ceil(10 fs) + 1 samples); a real ECG stands in for rates
    the shared data lacks (the arithmetic does not know the rate)."""
    up, down = signals.resample_ratio(fs)
    n = int(np.ceil(10 * fs)) + 1
    source = ecg500 if n <= ecg500.shape[1] else ecg1000
    x = source[:, :n]
    taps = signals._polyphase_filter(up, down)
    want = sps.resample_poly(x, up, down, axis=-1, window=taps)
    scale = np.abs(x).max()
    _close(dsp.resample_poly(x, up, down, axis=-1, window=taps) / scale, want / scale, RESAMPLE_TOL)
    # Batches of records (the ingest path), and the other axis.
    batch = np.stack([x, x[::-1], 0.5 * x])
    _close(
        dsp.resample_poly(batch, up, down, axis=-1, window=taps),
        sps.resample_poly(batch, up, down, axis=-1, window=taps),
        RESAMPLE_TOL * scale,
    )
    _close(dsp.resample_poly(x.T, up, down, axis=0, window=taps), want.T, RESAMPLE_TOL * scale)


def test_both_resampling_forms_are_covered() -> None:
    """Block products for short periods, per-output gathers for long ones: the rates above use both."""
    forms = {
        dsp._resample_plan(
            *signals.resample_ratio(fs), signals._polyphase_filter(*signals.resample_ratio(fs)).tobytes()
        ).gather
        for fs in RATES
    }
    assert forms == {True, False}


@pytest.mark.parametrize(
    ("up", "down"), [(1, 5), (2, 5), (100, 257), (3, 1), (25, 32), (1000, 999), (2, 10), (7, 7)]
)
@pytest.mark.parametrize("n", [1, 2, 3, 10, 57])
def test_resample_poly_signals_shorter_than_the_filter(
    up: int, down: int, n: int, ecg500: np.ndarray
) -> None:
    x = ecg500[1, 1000 : 1000 + n]
    _close(dsp.resample_poly(x, up, down), sps.resample_poly(x, up, down), RESAMPLE_TOL)  # default window too


def test_resample_poly_edge_cases() -> None:
    x = np.arange(24.0).reshape(2, 12)
    assert dsp.resample_poly(np.zeros((3, 0)), 1, 5, axis=-1).shape == (3, 0)
    same = dsp.resample_poly(x, 4, 4)
    assert np.array_equal(same, x) and same is not x
    _close(dsp.resample_poly(np.arange(12), 2, 3), sps.resample_poly(np.arange(12), 2, 3), RESAMPLE_TOL * 12)
    _close(
        dsp.resample_poly(x, 3, 2), sps.resample_poly(x, 3, 2), RESAMPLE_TOL * 24
    )  # scipy's default axis 0
    _close(
        dsp.resample_poly(x, 1, 2, axis=-1, window=[0.25, 0.5, 0.25]),
        sps.resample_poly(x, 1, 2, axis=-1, window=[0.25, 0.5, 0.25]),
        1e-14,
    )
    for up, down in ((0, 1), (1, 0), (1.5, 1)):
        with pytest.raises(ValueError):
            dsp.resample_poly(x, up, down)


@pytest.mark.parametrize("fs", [500, 257, 360])
def test_resample_poly_nan_stays_near_it_and_in_its_row(fs: float, ecg500: np.ndarray) -> None:
    """signals.py refuses non-finite samples before resampling; here: NaN covers at least scipy's NaN
    outputs, stays within two filter lengths, leaves other rows exact."""
    up, down = signals.resample_ratio(fs)
    x = ecg500[:3].copy()
    x[1, 2000] = np.nan
    got, want = dsp.resample_poly(x, up, down, axis=-1), sps.resample_poly(x, up, down, axis=-1)
    assert np.isnan(got[1]).sum() <= 2 * np.isnan(want[1]).sum() + 2 * up
    assert (np.isnan(got) | ~np.isnan(want)).all()
    np.testing.assert_allclose(got[[0, 2]], want[[0, 2]], rtol=0, atol=RESAMPLE_TOL * 5)
    finite = ~np.isnan(got)
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=RESAMPLE_TOL * 5)


# --- butter, sosfilt_zi, sosfiltfilt -------------------------------------------------------------


@pytest.mark.parametrize("order", [2, 4, 6, 8])
@pytest.mark.parametrize(("cutoff", "fs"), [(0.5, 100), (0.05, 500), (10, 100), (40, 100), (0.67, 250)])
def test_butter_highpass_equals_scipy(order: int, cutoff: float, fs: float) -> None:
    want = sps.butter(order, cutoff, btype="highpass", fs=fs, output="sos")
    _close(dsp.butter_highpass_sos(order, cutoff, fs), want, 1e-14)
    _close(dsp.sosfilt_zi(want), sps.sosfilt_zi(want), 1e-12)


def test_the_preparation_high_pass_is_scipys_bit_for_bit() -> None:
    want = sps.butter(2, signals.HIGHPASS_HZ, btype="highpass", fs=signals.MODEL_FS, output="sos")
    assert np.array_equal(signals._HIGHPASS, want)
    assert np.array_equal(dsp.sosfilt_zi(want), sps.sosfilt_zi(want))


def test_butter_refuses_odd_orders_and_bad_cutoffs() -> None:
    for order, cutoff in ((1, 0.5), (3, 0.5), (0, 0.5), (2, 0.0), (2, 50.0)):
        with pytest.raises(ValueError):
            dsp.butter_highpass_sos(order, cutoff, 100)


def test_sosfiltfilt_equals_scipy_on_real_ecgs(ptbxl100: list[signals.RawEcg]) -> None:
    """Every 100 Hz PTB-XL record of the first folder (1000 samples x 12 leads), as one batch."""
    batch = np.stack([r.signal for r in ptbxl100])
    _close(
        dsp.sosfiltfilt(signals._HIGHPASS, batch, axis=2),
        sps.sosfiltfilt(signals._HIGHPASS, batch, axis=2),
        FILTER_TOL,
    )


@pytest.mark.parametrize("n", [10, 11, 31, 33, 100, 999, 1000, 1023, 1024, 2048, 2049, 5000])
def test_sosfiltfilt_lengths(n: int, ecg1000: np.ndarray) -> None:
    """Just above the padding (9), around the block (32) and span (2048) sizes, several spans."""
    x = ecg1000[:, 5000 : 5000 + n] + 3.0  # with a baseline offset
    _close(dsp.sosfiltfilt(signals._HIGHPASS, x), sps.sosfiltfilt(signals._HIGHPASS, x), FILTER_TOL)
    _close(
        dsp.sosfiltfilt(signals._HIGHPASS, x.T, axis=0),
        sps.sosfiltfilt(signals._HIGHPASS, x.T, axis=0),
        FILTER_TOL,
    )


@pytest.mark.parametrize(
    "sos",
    [
        sps.butter(4, [1, 30], btype="bandpass", fs=500, output="sos"),  # 4 sections
        sps.butter(3, 40, fs=500, output="sos"),  # a first-order section: shorter padding
        sps.cheby1(6, 1, 0.67, btype="highpass", fs=250, output="sos"),
        sps.butter(1, 0.5, btype="highpass", fs=100, output="sos"),  # one first-order section: padlen 6
    ],
)
def test_sosfiltfilt_other_cascades(sos: np.ndarray, ecg500: np.ndarray) -> None:
    _close(dsp.sosfiltfilt(sos, ecg500), sps.sosfiltfilt(sos, ecg500), FILTER_TOL)
    if len(sos) == 1:  # padlen 6: seven samples are enough
        _close(dsp.sosfiltfilt(sos, ecg500[2, :7]), sps.sosfiltfilt(sos, ecg500[2, :7]), FILTER_TOL)


def test_sosfiltfilt_edge_cases(ecg500: np.ndarray) -> None:
    sos = signals._HIGHPASS
    for n in (0, 1, 9):  # no longer than the padding: refused, as scipy does
        with pytest.raises(ValueError, match="padlen, which is 9"):
            dsp.sosfiltfilt(sos, np.ones(n))
        with pytest.raises(ValueError, match="padlen, which is 9"):
            sps.sosfiltfilt(sos, np.ones(n))
    x = ecg500[:3, :1000].copy()
    x[1, 500] = np.nan
    x[2, 10] = np.inf
    _close(dsp.sosfiltfilt(sos, x), sps.sosfiltfilt(sos, x), FILTER_TOL)  # whole rows NaN, the first exact
    assert np.isnan(dsp.sosfiltfilt(sos, x)[1:]).all()
    _close(dsp.sosfiltfilt(sos, np.full(50, 2.5)), sps.sosfiltfilt(sos, np.full(50, 2.5)), FILTER_TOL)
    with pytest.raises(ValueError):
        dsp.sosfiltfilt(np.ones((1, 5)), x)
    with pytest.raises(ValueError):
        dsp.sosfiltfilt(np.array([[1, 0, 0, 2, 0, 0]]), x)


# --- find_peaks ---------------------------------------------------------------------------------


def _peaks_both(x: np.ndarray, height: float | None, distance: float | None) -> None:
    want, _ = sps.find_peaks(x, height=height, distance=distance)
    got = dsp.find_peaks(x, height=height, distance=distance)
    assert got.dtype == want.dtype and np.array_equal(got, want), (height, distance)


def test_find_peaks_equals_scipy_on_lead_ii(ptbxl100: list[signals.RawEcg], data_dir: Path) -> None:
    """web/peaks.py's use (lead II, median removed, flipped when the negative swing is larger, half the
    maximum, 0.25 s apart) and other settings, on raw 1 uV-step leads (plateaus and ties included)."""
    leads = [(r.signal[1], 100.0) for r in ptbxl100[:200]]
    leads += [
        (signals.read_wfdb(p.with_suffix("")).signal[1], 500.0)
        for p in sorted(data_dir.glob("ptb-xl/records500/00000/*.hea"))[:20]
    ]
    for lead, fs in leads:
        x = np.nan_to_num(lead - np.median(lead))
        if -x.min() > x.max():
            x = -x
        _peaks_both(x, 0.5 * x.max(), max(1, int(0.25 * fs)))
        _peaks_both(x, None, None)
        _peaks_both(x, 0.1 * x.max(), None)
        _peaks_both(x, None, 2.5)
        _peaks_both(lead, float(np.median(lead)), 7)


def test_find_peaks_plateaus_ties_and_edges() -> None:
    rng = np.random.default_rng(7)
    cases = [
        np.array(c, dtype=float)
        for c in (
            [],
            [1],
            [1, 2],
            [0, 1, 0],
            [0, 1, 1, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 1],
            [1, 1, 0],
            [2, 2, 2, 2],
            [0, 2, 0, 2, 0, 2, 0, 2, 0],
            [0, np.nan, 1, 0, 3, np.nan, 0],
            [0, 1, 1, 2, 2, 1, 3, 3, 3, 0],
        )
    ]
    cases += [rng.integers(0, 4, size=size).astype(float) for size in (5, 40, 400) for _ in range(30)]
    for x in cases:
        for height in (None, 1.0, 2.0):
            for distance in (None, 1, 2, 3.5, 7):
                _peaks_both(x, height, distance)
    with pytest.raises(ValueError):
        dsp.find_peaks(np.zeros(5), distance=0.5)


def test_web_peaks_first_r_peak_on_real_leads(ptbxl100: list[signals.RawEcg]) -> None:
    from ecgsearch.web import peaks

    for raw in ptbxl100[:50]:
        x = np.nan_to_num(raw.signal[1] - np.median(raw.signal[1]))
        x = -x if -x.min() > x.max() else x
        want, _ = sps.find_peaks(x, height=0.5 * x.max(), distance=25)
        assert peaks.first_r_peak(raw.signal[1], 100.0) == (int(want[0]) if len(want) else None)


# --- preparation and serving imports -----------------------------------------------------------


def _with_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preparation as it was before ecg/dsp.py: scipy's filters in signals.py."""
    scipy_dsp = types.SimpleNamespace(sosfiltfilt=sps.sosfiltfilt, resample_poly=sps.resample_poly)
    monkeypatch.setattr(signals, "dsp", scipy_dsp)
    monkeypatch.setattr(signals, "_HIGHPASS", sps.butter(2, 0.5, btype="highpass", fs=100, output="sos"))

    def taps(up: int, down: int) -> np.ndarray:
        max_rate = max(up, down)
        return sps.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))

    monkeypatch.setattr(signals, "_polyphase_filter", taps)


def _prepared_both(raws: list[signals.RawEcg], hospital: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def run() -> list[object]:
        out: list[object] = [*signals.prepare_batch(raws)]
        out += [signals.prepare(r) for r in raws]
        for path in hospital:
            ecg = read_ecg(path)
            out.append(signals.prepare_array(complete_leads(ecg), ecg.sampling_rate_hz, signals.LEADS))
        return out

    new = run()
    with monkeypatch.context() as m:
        _with_scipy(m)
        old = run()
    assert len(new) == len(old)
    for got, want in zip(new, old, strict=True):
        if isinstance(want, signals.SignalError):
            assert type(got) is type(want) and str(got) == str(want)
        else:
            assert isinstance(got, np.ndarray) and got.dtype == np.float32
            _close(got.astype(np.float64), want.astype(np.float64), PREPARED_TOL)


def test_preparation_equals_the_scipy_one(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few records of every rate in the shared data (100, 500, 1000 Hz, Georgia, flat leads) and the
    hospital files at 800 and 1000 Hz."""
    paths = (
        sorted(data_dir.glob("ptb-xl/records100/00000/*.hea"))[:10]
        + sorted(data_dir.glob("ptb-xl/records500/00000/*.hea"))[:5]
    )
    paths += (
        sorted(data_dir.glob("challenge/ptb/*.hea"))[:2]
        + sorted(data_dir.glob("challenge/georgia/*.hea"))[:2]
    )
    paths += [data_dir / "cinc2021" / "JS20004.hea"]
    raws = [signals.read_wfdb(p.with_suffix("")) for p in paths]
    hospital = [
        data_dir / "hospital" / name for name in ("edf_contec_0000050.edf", "dicom_pydicom_waveform_ecg.dcm")
    ]
    _prepared_both(raws, hospital, monkeypatch)


@pytest.mark.slow
def test_preparation_equals_the_scipy_one_on_all_shared_data(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every WFDB record (PTB-XL 100 and 500 Hz, CinC 2021, the Challenge folders) and every hospital file."""
    paths = sorted(data_dir.glob("ptb-xl/records*/*/*.hea")) + sorted(data_dir.glob("cinc2021/*.hea"))
    paths += sorted(data_dir.glob("challenge/*/*.hea"))
    raws = [signals.read_wfdb(p.with_suffix("")) for p in paths]
    assert len(raws) == 1987 + 488 + 50 + 179
    hospital = sorted(p for p in (data_dir / "hospital").iterdir() if p.is_file() and p.suffix != ".tsv")
    assert len(hospital) == 16
    _prepared_both(raws, hospital, monkeypatch)


def test_serving_imports_no_scipy() -> None:
    """What the service, ingest, the readers and the viewer import at serving time leaves scipy out."""
    modules = [
        "ecgsearch.ecg.signals",
        "ecgsearch.ecg.readers",
        *(f"ecgsearch.ecg.readers.{m}" for m in ("aecg", "dicom", "edf", "muse", "philips", "scp")),
        "ecgsearch.export.runtime",
        "ecgsearch.search.serving.service",
        "ecgsearch.search.serving.server",
        "ecgsearch.ingest.pipeline",
        "ecgsearch.web.peaks",
    ]
    if importlib.util.find_spec("flask") is not None:  # the web extra
        modules.append("ecgsearch.web.app")
    code = f"import sys, {', '.join(modules)}; assert 'scipy' not in sys.modules, 'scipy imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_band_pass_taps_equal_scipy() -> None:
    from ecgsearch.ecg import features

    for taps, band, fs in ((31, (5.0, 25.0), 100.0), (101, (0.5, 40.0), 500.0), (3, (1.0, 2.0), 10.0)):
        expected = sps.firwin(taps, band, pass_zero=False, fs=fs)
        np.testing.assert_allclose(dsp.firwin_bandpass(taps, *band, fs=fs), expected, rtol=0, atol=TAPS_TOL)
    with pytest.raises(ValueError, match="odd"):
        dsp.firwin_bandpass(30, 5.0, 25.0, fs=100.0)
    with pytest.raises(ValueError, match="band edges"):
        dsp.firwin_bandpass(31, 25.0, 5.0, fs=100.0)
    assert features.QRS_FIR.shape == (features.FIR_TAPS,)


def test_moving_windows_equal_scipy_ndimage(ecg500: np.ndarray) -> None:
    """The three 1-D filters the R-peak rule uses, on a real ECG's leads, with the edges zero (-inf for
    the maximum) as scipy.ndimage's mode="constant"."""
    from scipy import ndimage

    x = ecg500.T[:, :1000].astype(np.float64)
    w = sps.firwin(31, (5.0, 25.0), pass_zero=False, fs=100.0)
    expected = ndimage.correlate1d(x, w, axis=1, mode="constant")
    np.testing.assert_allclose(dsp.correlate_same(x, w), expected, rtol=0, atol=1e-12)
    expected = ndimage.uniform_filter1d(x**2, 9, axis=1, mode="constant")
    np.testing.assert_allclose(dsp.moving_mean(x**2, 9), expected, rtol=0, atol=1e-12)
    expected = ndimage.maximum_filter1d(x, 25, axis=1, mode="constant", cval=-np.inf)
    np.testing.assert_array_equal(dsp.moving_max(x, 25), expected)
    with pytest.raises(ValueError, match="odd"):
        dsp.moving_mean(x, 8)
