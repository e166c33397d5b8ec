"""NT-Xent (SimCLR) and the tri-objective: two contrastive terms plus reconstruction.

The halves term asks two windows of one ECG to embed alike; the augmentation term asks a window
and its noisy, rescaled, wandering copy to embed alike; the reconstruction term keeps morphology in
the embedding, which contrast alone can drop once halves are trivially matched.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.model import SelfSupervised


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Normalised-temperature cross entropy over 2n views; row i of ``a`` pairs with row i of ``b``.

    Each of the 2n views must pick its partner among the other 2n - 1; the loss is the mean over views.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two equal (n, d) batches, got {tuple(a.shape)}, {tuple(b.shape)}")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def tri_objective(
    model: SelfSupervised,
    half_a: torch.Tensor,
    half_b: torch.Tensor,
    augmented_a: torch.Tensor,
    config: EncoderConfig,
    augmented_b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """w_halves*NT-Xent(A, B) + w_augment*NT-Xent(A, aug A) + w_recon*MSE(decode(A), A).

    ``augmented_b`` (optional) replaces B in the halves term. Returns the total and each term's value.
    """
    n = half_a.shape[0]
    views = [half_a, half_b if augmented_b is None else augmented_b, augmented_a]
    f, h, p = model.encode(torch.cat(views))
    p_a, p_b, p_aug = p[:n], p[n : 2 * n], p[2 * n :]
    halves = nt_xent(p_a, p_b, config.temperature)
    augment = nt_xent(p_a, p_aug, config.temperature)
    recon = F.mse_loss(model.reconstruct(f[:n], h[:n], half_a.shape[-1]), half_a)
    total = config.w_halves * halves + config.w_augment * augment + config.w_recon * recon
    terms = {"halves": halves.item(), "augment": augment.item(), "recon": recon.item(), "total": total.item()}
    return total, terms
