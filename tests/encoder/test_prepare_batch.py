"""Batch preparation gives what one-at-a-time preparation gives, and embeds as the reference did."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from ecgsearch.ecg import signals
from ecgsearch.export.runtime import Embedder

# Stated tolerances: prepared samples (mV) and embedding cosine.
SAMPLE_TOL = 1e-5
COSINE_TOL = 1e-4


def _reference(raw: signals.RawEcg) -> np.ndarray:
    """Preparation as it was written before batching: per record, float64, scipy's defaults."""
    x = np.asarray(raw.signal, dtype=np.float64)
    x = signals._to_model_leads(
        x * signals._unit_factors(raw.units, x.shape[0], raw.record)[:, None], raw.leads, raw.record
    )
    up, down = signals.resample_ratio(raw.fs)
    x = x[:, : int(math.ceil(signals.MODEL_SECONDS * raw.fs)) + 1]
    if up != down:
        x = sps.resample_poly(x, up, down, axis=1)
    x = x[:, : signals.MODEL_SAMPLES]
    x = np.pad(x, ((0, 0), (0, signals.MODEL_SAMPLES - x.shape[1])))
    x = sps.sosfiltfilt(sps.butter(2, 0.5, btype="highpass", fs=100, output="sos"), x, axis=1)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def raws(data_dir: Path) -> list[signals.RawEcg]:
    """100 Hz and 500 Hz PTB-XL, 1000 Hz and long PTB records, Georgia and an ECG with flat leads."""
    ptbxl = data_dir / "ptb-xl"
    paths = sorted((ptbxl / "records100" / "00000").glob("*.hea"))[:40]
    paths += sorted((ptbxl / "records500" / "00000").glob("*.hea"))[:10]
    challenge = data_dir / "challenge"
    paths += sorted((challenge / "ptb").glob("*.hea"))[:2] + sorted((challenge / "georgia").glob("*.hea"))[:3]
    paths += [
        data_dir / "cinc2021" / "JS20004.hea",
        challenge / "cpsc_2018" / sorted(p.name for p in (challenge / "cpsc_2018").glob("*.hea"))[0],
    ]
    return [signals.read_wfdb(p.with_suffix("")) for p in paths]


def test_batch_equals_one_at_a_time(raws: list[signals.RawEcg]) -> None:
    batch = signals.prepare_batch(raws)
    assert len({r.fs for r in raws}) >= 3  # several rates in one batch
    for raw, got in zip(raws, batch, strict=True):
        assert isinstance(got, np.ndarray), raw.record
        assert got.shape == (12, signals.MODEL_SAMPLES) and got.dtype == np.float32
        assert np.array_equal(got, signals.prepare(raw)), raw.record


def test_batch_matches_the_reference_preparation(raws: list[signals.RawEcg]) -> None:
    for raw, got in zip(raws, signals.prepare_batch(raws), strict=True):
        assert np.abs(got - _reference(raw)).max() < SAMPLE_TOL, raw.record


def test_embeddings_change_by_less_than_the_tolerance(raws: list[signals.RawEcg]) -> None:
    embedder = Embedder(threads=1)
    new = embedder.embed(np.stack(signals.prepare_batch(raws)))
    old = embedder.embed(np.stack([_reference(r) for r in raws]))
    cosine = np.sum(new * old, axis=1) / (np.linalg.norm(new, axis=1) * np.linalg.norm(old, axis=1))
    assert (1.0 - cosine).max() < COSINE_TOL


def test_errors_stay_per_record(raws: list[signals.RawEcg]) -> None:
    """A bad ECG in a batch yields its own SignalError; its neighbours are prepared as usual."""
    good = raws[0]
    flat = signals.RawEcg("flat", np.zeros_like(good.signal), good.fs, good.leads, good.units)
    short = signals.RawEcg("short", good.signal[:, :500], good.fs, good.leads, good.units)
    missing = signals.RawEcg("no-v1", good.signal[:6], good.fs, good.leads[:6], good.units[:6])
    nan = good.signal.copy()
    nan[3, 10] = np.nan
    bad = signals.RawEcg("nan", nan, good.fs, good.leads, good.units)
    out = signals.prepare_batch([flat, good, short, missing, bad])
    assert isinstance(out[0], signals.InvalidSamples) and "flat" in str(out[0])
    assert np.array_equal(out[1], signals.prepare(good))
    assert isinstance(out[2], signals.TooShort) and str(out[2]).startswith("short:")
    assert isinstance(out[3], signals.MissingLeads) and "V1" in str(out[3])
    assert isinstance(out[4], signals.InvalidSamples) and "NaN" in str(out[4])
    with pytest.raises(signals.InvalidSamples, match="every lead is flat"):
        signals.prepare(flat)
