"""Fixtures of the benchmark and evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tiny_head_config(tmp_path: Path) -> Path:
    """A tiny statement-head recipe (the shipped recipe's shape, seconds to train on 2 cores)."""
    path = tmp_path / "tiny_head.yaml"
    path.write_text(
        "stem_channels: 8\nstage_channels: [16, 16]\nstage_kernels: [5, 3]\nembedding_dim: 32\n"
        "projection_dim: 16\ndecoder_channels: 8\nbatch_size: 16\nepochs: 1\nw_statement: 1.0\n"
        "statement_min_count: 3\nstatement_weight: 1.0\nrhythm_weight: 0.25\n"
    )
    return path
