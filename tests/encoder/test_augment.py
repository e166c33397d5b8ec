"""Augmentations: their statistics match the config, and a seed fixes them."""

import numpy as np
import pytest
import torch

from ecgsearch.encoder import augment as aug
from ecgsearch.encoder.config import EncoderConfig


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_std_matches_config() -> None:
    x = torch.zeros(64, 12, 500)
    noisy = aug.gaussian_noise(x, 0.07, gen())
    assert noisy.std().item() == pytest.approx(0.07, rel=0.02)
    assert abs(noisy.mean().item()) < 0.002


def test_scaling_stays_within_range_and_per_lead() -> None:
    x = torch.ones(64, 12, 100)
    scaled = aug.scale(x, 0.8, 1.2, gen())
    assert scaled.min() >= 0.8 and scaled.max() <= 1.2
    assert torch.allclose(scaled, scaled[..., :1].expand_as(scaled))  # one factor per lead
    assert scaled[..., 0].std() > 0.05  # factors differ between leads


def test_wander_is_slow_bounded_and_near_zero_mean() -> None:
    x = torch.zeros(32, 12, 1000)
    wander = aug.baseline_wander(x, 0.3, 0.5, gen()).numpy()
    assert np.abs(wander).max() <= 0.3 + 1e-6
    spectrum = np.abs(np.fft.rfft(wander, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(1000, d=1 / 100)
    assert spectrum[..., freqs > 1.0].sum() < 0.05 * spectrum.sum()
    assert abs(wander.mean()) < 0.02


def test_seeded_augment_repeats() -> None:
    x = torch.randn(4, 12, 500)
    config = EncoderConfig()
    assert torch.equal(aug.augment(x, config, gen(3)), aug.augment(x, config, gen(3)))
    assert not torch.equal(aug.augment(x, config, gen(3)), aug.augment(x, config, gen(4)))


def test_two_windows_are_crops_of_the_ecg() -> None:
    x = torch.arange(1000, dtype=torch.float32).expand(5, 12, 1000).contiguous()
    a, b = aug.two_windows(x, 500, True, gen())
    assert a.shape == b.shape == (5, 12, 500)
    assert torch.all(a[..., 1:] - a[..., :-1] == 1)  # contiguous windows
    fixed_a, fixed_b = aug.two_windows(x, 500, False, gen())
    assert fixed_a[0, 0, 0] == 0 and fixed_b[0, 0, 0] == 500


def test_lead_dropout_zeroes_whole_leads_but_never_all() -> None:
    x = torch.ones(256, 12, 50)
    out = aug.lead_dropout(x, 0.3, gen())
    per_lead = out[..., 0]
    assert torch.equal(out, per_lead[..., None].expand_as(out))  # whole leads, nothing partial
    assert 0.2 < (per_lead == 0).float().mean().item() < 0.4
    assert (aug.lead_dropout(x, 1.0, gen()).sum(dim=(1, 2)) > 0).all()
    assert torch.equal(aug.lead_dropout(x, 0.0, gen()), x)


def test_three_windows_offset_view_starts_near_window_a() -> None:
    x = torch.arange(1000, dtype=torch.float32).expand(64, 12, 1000).contiguous()
    a, b, shifted = aug.three_windows(x, 500, True, 32, gen())
    same_a, same_b = aug.two_windows(x, 500, True, gen())
    assert torch.equal(a, same_a) and torch.equal(b, same_b)  # A and B drawn as two_windows draws them
    offsets = (shifted[:, 0, 0] - a[:, 0, 0]).numpy()
    assert np.abs(offsets).max() <= 32 and len(np.unique(offsets)) > 10
    assert torch.all(shifted[..., 1:] - shifted[..., :-1] == 1)
    assert shifted[..., 0].min() >= 0 and shifted[..., -1].max() <= 999  # clipped to the ECG
    with pytest.raises(ValueError, match="view_offset"):
        EncoderConfig(view_offset=500)
