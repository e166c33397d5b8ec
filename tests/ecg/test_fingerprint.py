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


def test_threshold_is_the_measured_one() -> None:
    """COPY_THRESHOLD sits between the measured copies and the closest different ECGs."""
    measured = json.loads((REPO / "results" / "duplicate_threshold.json").read_text())
    assert measured["threshold"] == fingerprint.COPY_THRESHOLD
    assert measured["copies_missed_at_threshold"] == []
    assert measured["non_copies_at_or_above_threshold"] == 0
    assert measured["margin_below_lowest_copy"] > 0 and measured["margin_above_highest_non_copy"] > 0
