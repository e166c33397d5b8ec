"""Known answers of signal preparation, on real PTB-XL records wherever one fits.

Einthoven and Goldberger: III = II - I, aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2. PTB-XL stores
all twelve leads, so the stored limb leads check the formulas, and a record with them removed must
prepare like the full one. Prepared ECGs stay in mV; the model's first step divides by a global RMS
over the non-flat leads (``signals.unit_rms``), so gain and units drop out of its learned part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg import ptbxl, signals

DERIVED = ("III", "AVR", "AVL", "AVF")
QUANTUM_MV = 0.001  # PTB-XL stores 1 uV steps: three rounded values differ by at most 1.5 of them


@pytest.fixture(scope="module")
def raws(ptbxl_dir: Path) -> list[signals.RawEcg]:
    rows = ptbxl.read_table(ptbxl_dir)
    picked = rows[:20] + [r for r in rows if r.fold == 10][:5]
    out = [signals.read_wfdb(r.path()) for r in picked]
    out.append(signals.read_wfdb(picked[0].path(prefer_hr=True)))  # one 500 Hz record too
    return out


def _lead(raw: signals.RawEcg, name: str) -> np.ndarray:
    return raw.signal[[n.upper() for n in raw.leads].index(name)]


def test_stored_limb_leads_obey_einthoven_and_goldberger(raws: list[signals.RawEcg]) -> None:
    for raw in raws:
        lead_i, lead_ii = _lead(raw, "I"), _lead(raw, "II")
        expected = {
            "III": lead_ii - lead_i,
            "AVR": -(lead_i + lead_ii) / 2,
            "AVL": lead_i - lead_ii / 2,
            "AVF": lead_ii - lead_i / 2,
        }
        for name, derived in expected.items():
            np.testing.assert_allclose(_lead(raw, name), derived, atol=1.5 * QUANTUM_MV + 1e-9, err_msg=name)


def test_derived_limb_leads_prepare_like_the_stored_ones(raws: list[signals.RawEcg]) -> None:
    """Eight leads in (I, II, V1-V6): preparation derives the other four and matches the full record."""
    for raw in raws:
        keep = [i for i, n in enumerate(raw.leads) if n.upper() not in DERIVED]
        assert len(keep) == 8
        eight = signals.prepare_array(
            raw.signal[keep], raw.fs, [raw.leads[i] for i in keep], units=[raw.units[i] for i in keep]
        )
        np.testing.assert_allclose(eight, signals.prepare(raw), atol=0.01)  # quantisation, in mV


def test_units_scale_to_millivolts(raws: list[signals.RawEcg]) -> None:
    raw = raws[0]
    expected = signals.prepare(raw)
    for factor, unit in ((1000.0, "uV"), (1000.0, "µV"), (0.001, "V")):
        got = signals.prepare_array(raw.signal * factor, raw.fs, raw.leads, units=unit)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=unit)
    with pytest.raises(signals.InvalidSamples, match="unknown amplitude unit 'mmHg'"):
        signals.prepare_array(raw.signal, raw.fs, raw.leads, units="mmHg")


@pytest.mark.parametrize("gain", [5.0, 0.2, 1000.0])
def test_another_gain_scales_the_mv_and_leaves_the_unit_rms_input(
    raws: list[signals.RawEcg], gain: float
) -> None:
    """A header whose gain is off by 5x or 1000x scales the prepared mV and nothing the encoder reads."""
    for raw in raws[:5]:
        scaled = signals.prepare_array(raw.signal * gain, raw.fs, raw.leads, units=raw.units)
        np.testing.assert_allclose(scaled, signals.prepare(raw) * gain, rtol=1e-4, atol=1e-5 * gain)
        np.testing.assert_allclose(
            signals.unit_rms(scaled), signals.unit_rms(signals.prepare(raw)), atol=1e-5
        )


def test_unit_rms_input_has_rms_one_over_its_live_leads(raws: list[signals.RawEcg]) -> None:
    for raw in raws:
        mv = signals.prepare(raw)
        assert mv.shape == (12, signals.MODEL_SAMPLES) and mv.dtype == np.float32
        assert 0.02 < signals.global_rms(mv) < 2.0  # mV
        x = signals.unit_rms(mv)
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("fs_index", [0, -1])  # a 100 Hz and the 500 Hz record
def test_eight_seconds_are_padded_and_shorter_is_rejected(raws: list[signals.RawEcg], fs_index: int) -> None:
    raw = raws[fs_index]
    n8 = int(8 * raw.fs)
    padded = signals.prepare_array(raw.signal[:, :n8], raw.fs, raw.leads, units=raw.units)
    assert padded.shape == (12, signals.MODEL_SAMPLES)
    signal_part = np.sqrt(np.mean(padded[:, : 7 * signals.MODEL_FS] ** 2))
    last_second = np.sqrt(np.mean(padded[:, -signals.MODEL_FS :] ** 2))
    assert last_second < 0.05 * signal_part  # the last 2 s are zeros, high-passed with the rest
    short = int(round(7.9 * raw.fs))
    with pytest.raises(signals.TooShort, match="7.90 s of signal, at least 8 s needed"):
        signals.prepare_array(raw.signal[:, :short], raw.fs, raw.leads, units=raw.units)


def test_flat_leads_are_left_out_of_the_scale_and_stay_zero(raws: list[signals.RawEcg]) -> None:
    raw = raws[1]
    flat = raw.signal.copy()
    v3, v4 = ([n.upper() for n in raw.leads].index(n) for n in ("V3", "V4"))
    flat[v3] = 0.7  # a disconnected electrode: a constant offset
    flat[v4] = 0.0
    x = signals.unit_rms(signals.prepare_array(flat, raw.fs, raw.leads, units=raw.units)).astype(np.float64)
    out_v3, out_v4 = (signals.LEADS.index(n) for n in ("V3", "V4"))
    assert np.abs(x[[out_v3, out_v4]]).max() < 1e-6
    live = [i for i in range(12) if i not in (out_v3, out_v4)]
    assert np.sqrt(np.mean(x[live] ** 2)) == pytest.approx(1.0, rel=1e-3)  # scaled by the ten live leads
    with pytest.raises(signals.InvalidSamples, match="every lead is flat"):
        signals.prepare_array(np.zeros_like(raw.signal), raw.fs, raw.leads, units=raw.units)
