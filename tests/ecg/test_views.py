"""Named views: rhythm is blind to gain, voltage follows it, an implausible gain gets the flag instead."""

from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg import signals, views
from ecgsearch.ecg.schema import InvalidQuery, check_view
from ecgsearch.export.runtime import Embedder, bundled_model


@pytest.fixture(scope="module")
def original_and_copy(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """PTB-XL ECG 5 (100 Hz file) and the Challenge's copy of it, whose header says 200/mV for 1000/mV."""
    original = next((data_dir / "ptb-xl" / "records100").glob("*/00005_lr.hea")).with_suffix("")
    copy = data_dir / "challenge" / "ptb_xl" / "HR00005"
    return (
        signals.prepare(signals.read_wfdb(original))[None],
        signals.prepare(signals.read_wfdb(copy))[None],
    )


def test_shipped_statistics_fit_the_views() -> None:
    stats = views.served_statistics()
    assert set(stats) == set(views.MEASURED)
    assert stats[views.RHYTHM].names == views.RHYTHM_FEATURES
    assert stats[views.VOLTAGE].names == views.VOLTAGE_FEATURES
    assert stats[views.RHYTHM].folds == tuple(range(1, 9))
    assert all(s > 0 for v in stats.values() for s in v.std)


def test_rhythm_is_blind_to_gain_and_voltage_is_not(original_and_copy: tuple[np.ndarray, np.ndarray]) -> None:
    mv, _ = original_and_copy
    stats = views.served_statistics()
    rhythm = views.standardised(views.RHYTHM, views.rhythm_measures(mv), stats[views.RHYTHM])
    rhythm5 = views.standardised(views.RHYTHM, views.rhythm_measures(5 * mv), stats[views.RHYTHM])
    assert np.allclose(rhythm, rhythm5, atol=1e-5)
    volt = views.voltage_measures(mv)
    assert np.allclose(views.voltage_measures(5 * mv) - volt, np.log(5), atol=1e-6)


def test_a_gain_off_by_1000_gets_the_flag_not_a_vector(
    original_and_copy: tuple[np.ndarray, np.ndarray],
) -> None:
    mv, _ = original_and_copy
    batch = np.concatenate([mv, mv * 1000, mv / 1000])
    embedder = Embedder(bundled_model())
    v = views.view_vectors(embedder.embed(batch), batch)
    assert v.gain_suspect.tolist() == [False, True, True]
    assert views.VOLTAGE in v.row(0) and views.VOLTAGE not in v.row(1)
    assert np.isfinite(v.voltage[0]).all() and np.isnan(v.voltage[1:]).all()
    assert np.allclose(v.rhythm[0], v.rhythm[1], atol=1e-5)  # the other views stay
    assert v.waveform.shape == (3, views.LEARNED_DIM)
    assert np.allclose(np.linalg.norm(v.waveform, axis=1), 1.0, atol=1e-5)


def test_the_challenge_copy_is_flagged_or_carries_its_original_voltage(
    original_and_copy: tuple[np.ndarray, np.ndarray],
) -> None:
    """HR00005 reads 5x its original's amplitude: a voltage vector would be wrong, so it must be flagged."""
    mv, copy = original_and_copy
    ratio = signals.global_rms(copy)[0] / signals.global_rms(mv)[0]
    assert ratio == pytest.approx(5.0, rel=0.05)
    assert views.gain_suspect(copy).tolist() == [True]
    assert views.gain_suspect(mv).tolist() == [False]


def test_waveform_view_is_the_served_vectors_learned_part() -> None:
    rng = np.random.default_rng(0)
    learned = rng.standard_normal((4, views.LEARNED_DIM))
    learned /= np.linalg.norm(learned, axis=1, keepdims=True)
    served = np.concatenate([learned, rng.standard_normal((4, 2)) * 0.2], axis=1)
    served /= np.linalg.norm(served, axis=1, keepdims=True)
    assert np.allclose(views.waveform_from_embedding(served), learned, atol=1e-6)


def test_versions_name_the_model_and_change_with_the_statistics() -> None:
    stats = views.served_statistics()
    first = views.view_versions("abc")
    assert first[views.WAVEFORM] == "abc"
    other = dict(stats)
    s = stats[views.RHYTHM]
    other[views.RHYTHM] = views.ViewStatistics(
        s.view, s.names, s.mean, tuple(x * 2 for x in s.std), s.folds, s.n
    )
    assert views.view_versions("abc", other)[views.RHYTHM] != first[views.RHYTHM]
    assert views.view_versions("abc", other)[views.VOLTAGE] == first[views.VOLTAGE]
    with pytest.raises(InvalidQuery, match="unknown view 'shape'"):
        check_view("shape")


def test_a_copy_at_another_gain_is_told_by_its_original() -> None:
    stats = views.served_statistics()[views.VOLTAGE]
    std = np.asarray(stats.std)
    typical = np.zeros(12)  # an ECG at the training folds' typical voltage
    five_x = typical + np.log(5.0) / std  # the same recording with a 5x header gain
    assert views.copy_gain_is_off(five_x, typical, stats)  # the copy is the loud one: it loses its voltage
    assert not views.copy_gain_is_off(typical, five_x, stats)  # the original is off: the copy keeps its own
    assert not views.copy_gain_is_off(typical + np.log(1.5) / std, typical, stats)  # within 2x: one ECG
    ecgs = np.random.default_rng(0).normal(0, 0.2, (3, 12, 1000))  # plausible voltage, every lead live
    named = views.view_vectors(np.eye(3, 8), ecgs, learned_dim=8)
    assert not named.gain_suspect.any()
    held = named.withholding_voltage([1])
    assert held.gain_suspect.tolist() == [False, True, False] and np.isnan(held.voltage[1]).all()
    assert views.VOLTAGE not in held.row(1) and views.VOLTAGE in held.row(0)
    assert not named.gain_suspect.any()  # the original views are left as they were
