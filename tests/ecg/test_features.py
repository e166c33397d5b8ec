"""Handcrafted features: R peaks, heart rate and RR irregularity, log-RMS in mV; the graph twin agrees."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ecgsearch.ecg import features, signals
from ecgsearch.encoder.model import RhythmFeatures

FS = signals.MODEL_FS


def synthetic(beat_times_s: list[float], amplitude: float = 1.0) -> np.ndarray:
    """(12, 1000) ECG-like signal: a narrow QRS-like spike at each beat, a broad T wave after it."""
    t = np.arange(signals.MODEL_SAMPLES) / FS
    lead = np.zeros_like(t)
    for b in beat_times_s:
        lead += np.exp(-0.5 * ((t - b) / 0.015) ** 2) - 0.2 * np.exp(-0.5 * ((t - b - 0.03) / 0.02) ** 2)
        lead += 0.25 * np.exp(-0.5 * ((t - b - 0.3) / 0.06) ** 2)
    return amplitude * np.tile(lead, (12, 1)).astype(np.float32)


def test_regular_rhythm_gives_its_rate_and_no_irregularity() -> None:
    beats = list(np.arange(0.4, 9.8, 0.8))  # 75 bpm
    peaks = features.r_peaks(synthetic(beats)[features.LEAD_II])
    assert np.allclose(peaks / FS, beats, atol=0.02)
    rate, irregularity = features.rhythm(synthetic(beats)[None])[0]
    assert rate == pytest.approx(75.0, abs=1.0)
    assert irregularity < 0.02


def test_irregular_rhythm_is_measured_and_scale_free() -> None:
    rr = np.array([0.6, 1.0, 0.5, 0.9, 0.7, 1.1, 0.55, 0.8, 0.95, 0.6, 0.75])
    beats = list(0.3 + np.concatenate([[0.0], np.cumsum(rr)]))
    d = np.sort(np.abs(np.diff(rr)))
    want = {
        "rmssd": (60 / rr.mean(), np.sqrt(np.mean(d**2)) / rr.mean()),
        "trimmed": (60 / np.median(rr), np.sqrt(np.mean(d[:-2] ** 2)) / np.median(rr)),
        "median": (60 / np.median(rr), np.median(d) / np.median(rr)),
    }
    for kind, (rate, irregularity) in want.items():
        small = features.rhythm(synthetic(beats, 0.001)[None], kind)[0]
        large = features.rhythm(synthetic(beats, 5.0)[None], kind)[0]
        assert small[0] == pytest.approx(rate, rel=0.03), kind
        assert small[1] == pytest.approx(irregularity, rel=0.1), kind
        assert np.allclose(small, large)


def test_one_missed_beat_does_not_read_as_arrhythmia() -> None:
    """A regular rhythm with one beat missed (as at a circular shift's seam): trimmed stays low."""
    beats = [b for b in np.arange(0.4, 9.8, 0.8) if not 4.3 < b < 4.5]
    trimmed = features.rhythm(synthetic(beats)[None])[0]
    rmssd = features.rhythm(synthetic(beats)[None], "rmssd")[0]
    assert trimmed[1] < 0.02 and rmssd[1] > 0.3
    assert trimmed[0] == pytest.approx(75.0, abs=1.0)
    with pytest.raises(ValueError, match="irregularity"):
        features.rhythm(synthetic(beats)[None], "sdnn")


def test_too_few_beats_or_a_flat_lead_give_nan() -> None:
    assert np.isnan(features.rhythm(synthetic([2.0, 6.0])[None])).all()
    assert np.isnan(features.rhythm(np.zeros((1, 12, 1000)))).all()
    with pytest.raises(ValueError, match="ECGs"):
        features.rhythm(np.zeros((12, 1000)))


def test_log_rms_is_in_the_units_given() -> None:
    t = np.arange(1000) / FS
    x = np.stack([a * np.sqrt(2) * np.sin(2 * np.pi * 5 * t) for a in np.linspace(0.1, 1.2, 12)])[None]
    assert np.allclose(features.lead_log_rms(x)[0], np.log(np.linspace(0.1, 1.2, 12)), atol=1e-3)
    assert np.allclose(features.lead_log_rms(x * 1000)[0] - features.lead_log_rms(x)[0], np.log(1000))


def test_graph_rhythm_features_match_numpy_on_real_ecgs(ptbxl_dir: Path) -> None:
    x = np.stack([signals.load(p.with_suffix("")) for p in sorted(ptbxl_dir.glob("records100/*/*.hea"))[:48]])
    want = features.rhythm(x)
    with torch.no_grad():
        got, ok = RhythmFeatures().raw(torch.from_numpy(x))
    assert np.array_equal(ok.numpy(), np.isfinite(want).all(axis=1))
    assert ok.numpy().mean() > 0.9
    assert np.allclose(got.numpy()[ok.numpy()], want[ok.numpy()], rtol=1e-4)
    rates = want[:, 0][np.isfinite(want[:, 0])]
    assert 40 < np.median(rates) < 110


def _rhythm_one(peaks: np.ndarray, kind: str) -> tuple[float, float]:
    """The documented rule for one ECG's R peaks, written plainly (the batch form must agree)."""
    rr = np.diff(peaks[: features.MAX_PEAKS]) / FS
    if len(rr) < 2:
        return np.nan, np.nan
    typical = rr.mean() if kind == "rmssd" else np.median(rr)
    d = np.abs(np.diff(rr))
    if kind == "median":
        spread = np.median(d)
    else:
        d = np.sort(d)[: len(d) - features.TRIM_LARGEST] if kind == "trimmed" and len(d) > 3 else d
        spread = np.sqrt(np.mean(d**2))
    return 60 / typical, spread / typical


def test_batch_rhythm_agrees_with_each_ecg_alone(ptbxl_dir: Path) -> None:
    """Every variant at once over a batch whose rows hold 3, 4, 5 beats, more than MAX_PEAKS, none,
    and real ECGs: as each row's R peaks give one by one."""
    real = [signals.load(p.with_suffix("")) for p in sorted(ptbxl_dir.glob("records100/*/*.hea"))[:24]]
    made = [synthetic(list(np.arange(0.5, 0.5 + n * 0.9, 0.9))) for n in (3, 4, 5, 6)]
    made += [synthetic([1.0, 1.7, 2.9, 3.4, 4.8, 5.3]), synthetic(list(np.arange(0.2, 9.9, 0.2)))]
    x = np.stack([*made, np.zeros((12, 1000), np.float32), *real])
    got = features.rhythms(x, features.IRREGULARITY)
    for kind in features.IRREGULARITY:
        want = np.array([_rhythm_one(features.r_peaks(row[features.LEAD_II]), kind) for row in x])
        np.testing.assert_allclose(got[kind], want, rtol=1e-12, err_msg=kind)
        np.testing.assert_array_equal(features.rhythm(x, kind), got[kind])
    assert np.isnan(got["trimmed"][len(made)]).all() and np.isfinite(got["trimmed"][: len(made)]).all()


def test_standardise_and_append() -> None:
    z = features.standardise(np.array([[80.0, np.nan], [1000.0, 0.1]]), [70.0, 0.05], [10.0, 0.05])
    assert np.allclose(z, [[1.0, 0.0], [features.Z_CLIP, 1.0]])
    unit = np.eye(2, 4)
    out = features.append_to_embedding(unit, z, features.block_weights([(2, 1.0)]))
    assert out.shape == (2, 6) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
