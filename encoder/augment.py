"""Augmentations of prepared ECG windows: amplitude scaling, Gaussian noise, baseline wander; and views.

All take an explicit ``torch.Generator`` so a seeded run draws the same augmentations every time.
Amplitudes are in the prepared signal's units (ECG divided by its RMS, so ~1 is a typical sample).
"""

from __future__ import annotations

import math

import torch

from ecgsearch.ecg.signals import MODEL_FS
from ecgsearch.encoder.config import EncoderConfig

MIN_WANDER_HZ = 0.05


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def scale(x: torch.Tensor, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    """Multiply each lead of each ECG by a factor drawn uniformly from [low, high]."""
    return x * _uniform((x.shape[0], x.shape[1], 1), low, high, g).to(x)


def gaussian_noise(x: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """Add white Gaussian noise of standard deviation ``std``."""
    return x + std * torch.randn(x.shape, generator=g).to(x)


def baseline_wander(
    x: torch.Tensor, amplitude: float, max_hz: float, g: torch.Generator, fs: float = MODEL_FS
) -> torch.Tensor:
    """Add one slow sinusoid per lead: MIN_WANDER_HZ..max_hz, random phase, amplitude up to ``amplitude``."""
    n, leads, t = x.shape
    freq = _uniform((n, leads, 1), MIN_WANDER_HZ, max_hz, g)
    phase = _uniform((n, leads, 1), 0.0, 2 * math.pi, g)
    amp = _uniform((n, leads, 1), 0.0, amplitude, g)
    time = torch.arange(t, dtype=torch.float32) / fs
    return x + (amp * torch.sin(2 * math.pi * freq * time + phase)).to(x)


def lead_dropout(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Zero each lead of each ECG with probability ``p`` (at least one lead is always kept)."""
    if p <= 0:
        return x
    drop = torch.rand((x.shape[0], x.shape[1], 1), generator=g) < p
    drop[drop.all(dim=1).squeeze(-1), 0] = False
    return x * (~drop).to(x)


def augment(x: torch.Tensor, config: EncoderConfig, g: torch.Generator) -> torch.Tensor:
    """The augmented view: scaling, then baseline wander, then noise, then lead dropout (if set)."""
    x = scale(x, config.scale_min, config.scale_max, g)
    x = baseline_wander(x, config.wander_amplitude, config.wander_max_hz, g)
    x = gaussian_noise(x, config.noise_std, g)
    return lead_dropout(x, config.lead_dropout, g) if config.lead_dropout > 0 else x


def _crop(x: torch.Tensor, starts: torch.Tensor, window: int) -> torch.Tensor:
    """Per-row windows of ``window`` samples beginning at ``starts`` (n,)."""
    n, leads, _ = x.shape
    idx = (starts[:, None, None] + torch.arange(window)).expand(n, leads, window)
    return torch.gather(x, 2, idx.to(x.device))


def _starts(n: int, t: int, window: int, random_crop: bool, g: torch.Generator) -> torch.Tensor:
    if window > t:
        raise ValueError(f"window {window} longer than the ECG ({t} samples)")
    if not random_crop:
        return torch.tensor([0, t - window])[:, None].expand(2, n)
    return torch.randint(0, t - window + 1, (2, n), generator=g)


def two_windows(
    x: torch.Tensor, window: int, random_crop: bool, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two windows of ``window`` samples per ECG: random starts, or the first and the last ``window``."""
    starts = _starts(x.shape[0], x.shape[2], window, random_crop, g)
    return _crop(x, starts[0], window), _crop(x, starts[1], window)


def three_windows(
    x: torch.Tensor, window: int, random_crop: bool, offset: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows A and B as ``two_windows``, and A', starting up to ``offset`` samples before or after A.

    A' (clipped to the ECG) is what the augmented view is made from, so the augmentation term also
    asks the encoder to ignore where a window happens to start.
    """
    n, _, t = x.shape
    starts = _starts(n, t, window, random_crop, g)
    shift = torch.randint(-offset, offset + 1, (n,), generator=g)
    shifted = (starts[0] + shift).clamp(0, t - window)
    return _crop(x, starts[0], window), _crop(x, starts[1], window), _crop(x, shifted, window)
