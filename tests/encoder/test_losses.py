"""NT-Xent against hand-computed values, and the tri-objective's terms."""

import math

import pytest
import torch

from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.losses import nt_xent, tri_objective
from ecgsearch.encoder.model import SelfSupervised


def test_two_pair_known_answer() -> None:
    # views e1, e2, e1, e2 at temperature 1: each picks its partner (cos 1) among {1, 0, 0}
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = math.log((math.e + 2) / math.e)
    assert nt_xent(a, a.clone(), temperature=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_scales_similarities() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert nt_xent(a, a, temperature=t).item() == pytest.approx(expected, abs=1e-6)


def test_aligned_pairs_beat_random_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=g)
    aligned = nt_xent(a, a + 0.01 * torch.randn(16, 32, generator=g))
    unrelated = nt_xent(a, torch.randn(16, 32, generator=g))
    assert aligned < unrelated


def test_symmetric_in_its_arguments() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    assert nt_xent(a, b).item() == pytest.approx(nt_xent(b, a).item(), abs=1e-6)


def test_tri_objective_weights_its_terms() -> None:
    torch.manual_seed(0)
    config = EncoderConfig(w_halves=0.5, w_augment=2.0, w_recon=3.0)
    model = SelfSupervised(config)
    x = torch.randn(3, 4, 12, 500)
    total, terms = tri_objective(model, x[0], x[1], x[2], config)
    weighted = 0.5 * terms["halves"] + 2.0 * terms["augment"] + 3.0 * terms["recon"]
    assert total.item() == pytest.approx(weighted, rel=1e-5)
    assert all(math.isfinite(v) for v in terms.values())
    total.backward()
    assert model.decoder.out.weight.grad is not None
