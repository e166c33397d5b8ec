"""NT-Xent (SimCLR) and the tri-objective: two contrastive terms plus reconstruction; and a label term.

The halves term asks two windows of one ECG to embed alike; the augmentation term asks a window
and its noisy, rescaled, wandering copy to embed alike; the reconstruction term keeps morphology in
the embedding, which contrast alone can drop once halves are trivially matched.

The label term (``label_contrast``, weight ``w_label``) uses the diagnoses an archive already holds: a
supervised contrastive loss whose soft targets are the Jaccard overlaps of two ECGs' statement sets, on
the embedding itself (what search compares). ECGs without statements take no part in it and keep the
self-supervised terms only.

The statement term (``w_statement``) reads the same labels another way: a linear head on the embedding
predicts each statement of the training folds' vocabulary (multi-label BCE), so the embedding must carry
what tells the statements apart, and the served model can append the head's probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.model import SelfSupervised

# x -> (x of every process stacked in rank order, index of this process's first row), differentiable
Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def nt_xent(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1, gather: Gather | None = None
) -> torch.Tensor:
    """Normalised-temperature cross entropy over 2n views; row i of ``a`` pairs with row i of ``b``.

    Each of the 2n views must pick its partner among the other 2n - 1; the loss is the mean over views.
    With ``gather`` (several processes, see ``distributed.gather_with_grad``) the candidates are the
    views of the global batch and the loss is the mean over this process's views, so the mean over
    processes is the global batch's loss.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two equal (n, d) batches, got {tuple(a.shape)}, {tuple(b.shape)}")
    if gather is not None:
        return _nt_xent_global(a, b, temperature, gather)
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def _nt_xent_global(a: torch.Tensor, b: torch.Tensor, temperature: float, gather: Gather) -> torch.Tensor:
    n = a.shape[0]
    za, zb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    everyone_a, first = gather(za)  # (N, d), this process's rows at first ... first + n
    everyone_b, _ = gather(zb)
    total = everyone_a.shape[0]
    sim = torch.cat([za, zb]) @ torch.cat([everyone_a, everyone_b]).T / temperature  # (2n, 2N)
    own = torch.arange(n, device=a.device) + first
    itself = F.one_hot(torch.cat([own, own + total]), 2 * total).to(torch.bool)
    targets = torch.cat([own + total, own])
    return F.cross_entropy(sim.masked_fill(itself, float("-inf")), targets)


def jaccard(labels: torch.Tensor) -> torch.Tensor:
    """(n, L) multi-hot statement sets -> (n, n) |A & B| / |A | B| (0 where both sets are empty)."""
    y = labels.to(torch.float32)
    inter = y @ y.T
    size = y.sum(dim=1)
    union = size[:, None] + size[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))


def label_overlap(
    labels: torch.Tensor, rhythm: torch.Tensor | None = None, share: float = 0.0
) -> torch.Tensor:
    """(n, n) target overlaps of label sets: their Jaccard, or with ``rhythm`` (a column mask) and
    ``share`` > 0, (1 - share) x the Jaccard of the other columns + share x that of the rhythm columns."""
    if rhythm is None or share <= 0:
        return jaccard(labels)
    return (1 - share) * jaccard(labels[:, ~rhythm]) + share * jaccard(labels[:, rhythm])


def label_contrast(
    h: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    rhythm: torch.Tensor | None = None,
    rhythm_share: float = 0.0,
) -> torch.Tensor:
    """Supervised contrast with soft targets: each labelled row's softmax over the other labelled rows
    (cosine / temperature) is pulled towards its overlaps with them (``label_overlap``), normalised to
    sum 1.

    ``labels`` is (n, L) multi-hot; rows without any statement take no part (neither as anchor nor as
    candidate), nor do anchors that share nothing with any other row. The loss is the mean, over the
    anchors left, of the cross entropy -sum_j w_ij log p_ij; 0 (with a gradient path) when none is left.
    """
    if h.ndim != 2 or labels.ndim != 2 or labels.shape[0] != h.shape[0]:
        raise ValueError(f"expected (n, d) and (n, L), got {tuple(h.shape)}, {tuple(labels.shape)}")
    keep = labels.sum(dim=1) > 0
    z = F.normalize(h[keep], dim=1)
    if z.shape[0] < 2:
        return h.sum() * 0.0
    w = label_overlap(labels[keep], rhythm, rhythm_share)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    w = w.masked_fill(eye, 0.0)
    mass = w.sum(dim=1)
    anchors = mass > 0
    if not anchors.any():
        return h.sum() * 0.0
    log_p = F.log_softmax((z @ z.T / temperature).masked_fill(eye, float("-inf")), dim=1)
    targets = w[anchors] / mass[anchors, None]
    return -(targets * log_p[anchors].masked_fill(eye[anchors], 0.0)).sum(dim=1).mean()


def statement_loss(
    model: SelfSupervised, h: torch.Tensor, labels: torch.Tensor, x: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-label BCE of the encoder's statement head on embeddings ``h`` of windows ``x``, over rows with
    any statement (``x`` is read by a head with the rhythm input only).

    The head's vocabulary is the first columns of ``labels`` (``train_data`` orders it so); rows without
    statements (unlabelled ECGs) take no part; 0 (with a gradient path) when none is left.
    """
    keep = labels.sum(dim=1) > 0
    if not keep.any():
        return h.sum() * 0.0
    logits = model.encoder.statement_logits(h[keep], None if x is None else x[keep])
    targets = labels[keep][:, : logits.shape[1]].to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets)


def tri_objective(
    model: SelfSupervised,
    half_a: torch.Tensor,
    half_b: torch.Tensor,
    augmented_a: torch.Tensor,
    config: EncoderConfig,
    augmented_b: torch.Tensor | None = None,
    gather: Gather | None = None,
    labels: torch.Tensor | None = None,
    rhythm_columns: torch.Tensor | None = None,
    moved_a: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """w_halves*NT-Xent(A, B) + w_augment*NT-Xent(A, aug A) + w_recon*MSE(decode(A), A)
    [+ w_label*label_contrast + w_statement*statement_loss over the embeddings of A and B].

    ``augmented_b`` (optional) replaces B in the halves term; ``gather`` makes the contrastive negatives
    those of every process (see ``nt_xent``); ``labels`` (n, L) multi-hot statement sets of the batch's
    ECGs turn on the label terms when ``w_label`` or ``w_statement`` > 0; ``moved_a`` (A starting a few
    samples earlier or later, not augmented) turns on the steadiness term when ``w_steady`` > 0. Returns
    the total and each term's value.
    """
    n = half_a.shape[0]
    views = [half_a, half_b if augmented_b is None else augmented_b, augmented_a]
    steady_view = moved_a if config.w_steady > 0 else None
    if steady_view is not None:
        views.append(steady_view)
    windows = torch.cat(views)
    f, h, p = model.encode(windows)
    p_a, p_b, p_aug = p[:n], p[n : 2 * n], p[2 * n : 3 * n]
    halves = nt_xent(p_a, p_b, config.temperature, gather)
    augment = nt_xent(p_a, p_aug, config.temperature, gather)
    recon = F.mse_loss(model.reconstruct(f[:n], h[:n], half_a.shape[-1]), half_a)
    total = config.w_halves * halves + config.w_augment * augment + config.w_recon * recon
    terms = {"halves": halves.item(), "augment": augment.item(), "recon": recon.item()}
    if labels is not None and (config.w_label > 0 or config.w_statement > 0) and gather is not None:
        raise ValueError("the label terms run in one process only (in-memory PTB-XL)")
    if config.w_label > 0 and labels is not None:
        # both windows of each ECG: its other window is a candidate with the largest overlap
        label = label_contrast(
            h[: 2 * n],
            torch.cat([labels, labels]),
            config.label_temperature,
            rhythm_columns,
            config.label_rhythm_share,
        )
        total = total + config.w_label * label
        terms["label"] = label.item()
    if config.w_statement > 0 and labels is not None:
        statement = statement_loss(model, h[: 2 * n], torch.cat([labels, labels]), windows[: 2 * n])
        total = total + config.w_statement * statement
        terms["statement"] = statement.item()
    if steady_view is not None:
        # the embedding search compares, not the projection: a few samples' offset should barely move it
        steady = (1 - F.cosine_similarity(h[:n], h[3 * n :], dim=1)).mean()
        total = total + config.w_steady * steady
        terms["steady"] = steady.item()
    terms["total"] = total.item()
    return total, terms
