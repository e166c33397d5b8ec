"""The content fingerprint finds one recording across rates, gains, cuts and lead sets, and no other ECG.

Real PTB-XL records: ecg_id 1 has a 500 Hz file beside its 100 Hz one (PTB-XL's own down-sampling);
ecg_id 26 and 28 are one patient's two recordings, the closest pair of different ECGs measured
(results/duplicate_threshold.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg import fingerprint, signals

REPO = Path(__file__).resolve().parents[2]
EIGHT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _record(ptbxl_dir: Path, ecg_id: int, hr: bool = False) -> signals.RawEcg:
    folder = "records500" if hr else "records100"
    return signals.read_wfdb(ptbxl_dir / folder / "00000" / f"{ecg_id:05d}_{'hr' if hr else 'lr'}")


def _print(raw: signals.RawEcg) -> np.ndarray:
    return fingerprint.compute(signals.prepare(raw))


@pytest.fixture(scope="module")
def original(ptbxl_dir: Path) -> np.ndarray:
    return _print(_record(ptbxl_dir, 1))


def test_copies_in_another_rate_gain_cut_and_lead_set_score_above_the_threshold(
    ptbxl_dir: Path, original: np.ndarray
) -> None:
    hr = _record(ptbxl_dir, 1, hr=True)
    x, leads, fs = hr.signal, list(hr.leads), hr.fs
    eight = [leads.index(n) for n in EIGHT]
    copies = {
        "500 Hz file": signals.prepare_array(x, fs, leads),
        "x5 gain": signals.prepare_array(5 * x, fs, leads),
        "0.16 s cut": signals.prepare_array(x[:, 80:], fs, leads),
        "8 leads in uV": signals.prepare_array(np.round(x[eight] * 1000), fs, EIGHT, units="uV"),
    }
    for name, prepared in copies.items():
        got = fingerprint.score(fingerprint.compute(prepared), original)
        assert got >= fingerprint.COPY_THRESHOLD, f"{name}: {got:.4f}"
    # symmetric enough that the order of the pair never decides
    a, b = fingerprint.compute(copies["0.16 s cut"]), original
    assert abs(fingerprint.score(a, b) - fingerprint.score(b, a)) < 0.01


def test_different_ecgs_score_below_it(ptbxl_dir: Path, original: np.ndarray) -> None:
    same_patient = fingerprint.score(_print(_record(ptbxl_dir, 26)), _print(_record(ptbxl_dir, 28)))
    assert same_patient < fingerprint.COPY_THRESHOLD - 0.05
    for other in (2, 3, 26):
        assert fingerprint.score(_print(_record(ptbxl_dir, other)), original) < 0.9


def test_stored_form_round_trips_and_is_small(original: np.ndarray, ptbxl_dir: Path) -> None:
    prepared = signals.prepare(_record(ptbxl_dir, 1))
    stored = fingerprint.encode(prepared)
    assert len(stored) < 4400  # 3,200 int8 samples in base64
    assert np.array_equal(fingerprint.decode(stored), original)
    assert fingerprint.is_copy(stored, stored) and not fingerprint.is_copy(stored, None)
    with pytest.raises(fingerprint.FingerprintError, match="bytes"):
        fingerprint.decode("AAAA")
    with pytest.raises(fingerprint.FingerprintError, match="base64"):
        fingerprint.decode("not base64!")


def test_flat_and_lead_less_prints_confirm_nothing(original: np.ndarray) -> None:
    flat = np.zeros_like(original)
    assert fingerprint.score(flat, original) == 0.0
    half = original.copy()
    half[2:] = 0  # only I and II in common: still the same recording
    assert fingerprint.score(half, original) >= fingerprint.COPY_THRESHOLD


def _score_plain(a: np.ndarray, b: np.ndarray) -> float:
    """The score's rule written plainly, pair by pair and lag by lag (no FFT, no batching)."""
    live = (np.abs(a).sum(axis=1) > 0) & (np.abs(b).sum(axis=1) > 0)
    if not live.any():
        return 0.0
    x, y = a[live].astype(np.float64), b[live].astype(np.float64)
    n = x.shape[1]

    def overlap(lag: int) -> tuple[np.ndarray, np.ndarray]:
        return (x[:, : n - lag], y[:, lag:]) if lag >= 0 else (x[:, -lag:], y[:, : n + lag])

    def joint_r(lag: int) -> float:
        xs, ys = overlap(lag)
        return float((xs * ys).sum() / np.sqrt(max((xs * xs).sum() * (ys * ys).sum(), 1e-30)))

    lags = range(-fingerprint.MAX_LAG, fingerprint.MAX_LAG + 1)
    xs, ys = overlap(max(lags, key=joint_r))
    w = fingerprint.WINDOW
    whole = xs.shape[1] // w
    rs, xx, yy, xy = [], [], [], []
    for i in range(whole):
        xw, yw = xs[:, i * w : (i + 1) * w], ys[:, i * w : (i + 1) * w]
        xx.append((xw * xw).sum()), yy.append((yw * yw).sum()), xy.append((xw * yw).sum())
    ok = [i for i in range(whole) if xx[i] > 0 and yy[i] > 0]
    mean_x, mean_y = sum(xx[i] for i in ok) / max(len(ok), 1), sum(yy[i] for i in ok) / max(len(ok), 1)
    for i in ok:
        if xx[i] >= fingerprint.WINDOW_ENERGY * mean_x and yy[i] >= fingerprint.WINDOW_ENERGY * mean_y:
            rs.append(xy[i] / np.sqrt(xx[i] * yy[i]))
    return float(np.median(rs)) if len(rs) >= fingerprint.MIN_WINDOWS else 0.0


def test_scores_of_many_pairs_at_once_follow_the_rule(ptbxl_dir: Path) -> None:
    """One print against a stack (as ingest confirms candidates): the plain rule's score for every
    pair, with leads dead in one side or the other, shifted copies and a flat print among them."""
    prints = np.stack([_print(_record(ptbxl_dir, i)) for i in (1, 2, 3, 26, 28)])
    some = prints.copy()
    some[0, 2:], some[1, ::2], some[2] = 0, 0, 0
    shifted = np.stack([np.roll(prints[0], 7, axis=1), np.roll(prints[1], -11, axis=1)])
    stack = np.concatenate([prints, some, shifted])
    bank = fingerprint.ready(stack)
    for i in (0, 1, 5, 6, 7, 10):
        got = fingerprint.scores(bank.take(i), bank)
        want = [_score_plain(stack[i], other) for other in stack]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        assert [fingerprint.score(stack[i], other) for other in stack] == got.tolist()
    assert fingerprint.scores(bank.take(0), bank.take([10]))[0] >= fingerprint.COPY_THRESHOLD  # shifted


def test_threshold_is_the_measured_one() -> None:
    """COPY_THRESHOLD sits between the measured copies and the closest different ECGs."""
    measured = json.loads((REPO / "results" / "duplicate_threshold.json").read_text())
    assert measured["threshold"] == fingerprint.COPY_THRESHOLD
    assert measured["copies_missed_at_threshold"] == []
    assert measured["non_copies_at_or_above_threshold"] == 0
    assert measured["margin_below_lowest_copy"] > 0 and measured["margin_above_highest_non_copy"] > 0
