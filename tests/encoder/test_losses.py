"""NT-Xent against hand-computed values, and the tri-objective's terms."""

import math

import pytest
import torch

from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.losses import (
    jaccard,
    label_contrast,
    label_overlap,
    nt_xent,
    statement_loss,
    tri_objective,
)
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


def test_jaccard_of_label_sets() -> None:
    y = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    expected = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(jaccard(y), expected)


def test_a_rhythm_share_makes_a_shared_rhythm_count_apart_from_the_morphology() -> None:
    # columns: two morphology labels, then one rhythm statement (AF, say)
    y = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0], [1, 1, 0]])
    rhythm = torch.tensor([False, False, True])
    assert torch.equal(label_overlap(y), jaccard(y)) and torch.equal(
        label_overlap(y, rhythm, 0.0), jaccard(y)
    )
    w = label_overlap(y, rhythm, 0.5)
    assert w[0, 1] == pytest.approx(0.5)  # the same rhythm, no morphology in common: half (Jaccard 1/3)
    assert jaccard(y)[0, 1] == pytest.approx(1 / 3)
    assert w[0, 2] == pytest.approx(0.5)  # the same morphology, one without the rhythm: the other half
    assert w[2, 3] == pytest.approx(0.25)  # neither in that rhythm: half their morphology Jaccard
    assert torch.allclose(w, w.T)


def test_label_contrast_known_answer() -> None:
    # rows 0 and 1 share {A} and embed alike, row 2 has {B} only: rows 0 and 1 are the anchors, each
    # with one target (the other) among two candidates at cosines 1 and 0; row 2 shares nothing
    h = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1, 0], [1, 0], [0, 1]])
    expected = math.log(math.e + 1) - 1
    assert label_contrast(h, y, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_label_contrast_soft_targets_follow_overlap() -> None:
    # {A,B}, {A}, {B} at cosine 0 to each other: row 0's targets are 1/2, 1/2 -> log 2; rows 1 and 2 pick
    # row 0 (their only overlap) among two equal candidates -> log 2; mean log 2
    h = torch.eye(3)
    y = torch.tensor([[1, 1], [1, 0], [0, 1]])
    assert label_contrast(h, y, temperature=0.5).item() == pytest.approx(math.log(2), abs=1e-6)


def test_unlabelled_rows_take_no_part() -> None:
    g = torch.Generator().manual_seed(2)
    h = torch.randn(5, 8, generator=g)
    y = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 1, 0]])
    with_unlabelled = label_contrast(h, y)
    keep = torch.tensor([0, 1, 2, 4])
    assert with_unlabelled.item() == pytest.approx(label_contrast(h[keep], y[keep]).item(), abs=1e-6)
    none = label_contrast(h.requires_grad_(), torch.zeros(5, 3, dtype=torch.long))
    assert none.item() == 0.0
    none.backward()  # still a graph: a batch without labels trains the other terms


def test_tri_objective_adds_the_weighted_label_term_only_with_labels() -> None:
    torch.manual_seed(0)
    config = EncoderConfig(
        w_label=2.0, stem_channels=8, stage_channels=(16, 16), stage_kernels=(5, 3), embedding_dim=32
    )
    model = SelfSupervised(config)
    x = torch.randn(3, 4, 12, 500)
    y = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    plain, plain_terms = tri_objective(model, x[0], x[1], x[2], config)
    total, terms = tri_objective(model, x[0], x[1], x[2], config, labels=y)
    assert "label" not in plain_terms and terms["label"] > 0
    assert total.item() == pytest.approx(plain.item() + 2.0 * terms["label"], rel=1e-5)
    _, h, _ = model.encode(torch.cat([x[0], x[1], x[2]]))  # one batch as in the objective (batch norm)
    assert terms["label"] == pytest.approx(label_contrast(h[:8], torch.cat([y, y])).item(), rel=1e-5)


def test_statement_term_is_the_heads_bce_over_labelled_rows() -> None:
    torch.manual_seed(0)
    config = EncoderConfig(
        w_statement=3.0, stem_channels=8, stage_channels=(16, 16), stage_kernels=(5, 3), embedding_dim=32,
        statement_vocabulary=("A", "B"),
    )  # fmt: skip
    model = SelfSupervised(config)
    x = torch.randn(3, 4, 12, 500)
    # columns: the head's two statements first, then a label outside the head's vocabulary
    y = torch.tensor([[1, 0, 0], [1, 1, 1], [0, 0, 1], [0, 0, 0]])
    plain, _ = tri_objective(model, x[0], x[1], x[2], config)
    total, terms = tri_objective(model, x[0], x[1], x[2], config, labels=y)
    assert "label" not in terms and terms["statement"] > 0
    assert total.item() == pytest.approx(plain.item() + 3.0 * terms["statement"], rel=1e-5)
    _, h, _ = model.encode(torch.cat([x[0], x[1], x[2]]))
    keep = torch.tensor([0, 1, 2, 4, 5, 6])  # row 3 (and its second window) has no label at all
    logits = model.encoder.statement_logits(h[keep])
    targets = torch.cat([y, y])[keep][:, :2].float()
    by_hand = -(targets * logits.sigmoid().log() + (1 - targets) * (1 - logits.sigmoid()).log()).mean()
    assert terms["statement"] == pytest.approx(by_hand.item(), rel=1e-4)
    none = statement_loss(model, h[:2], torch.zeros(2, 3))
    assert none.item() == 0.0
    none.backward()


def test_steadiness_term_is_zero_for_the_same_window_and_weighs_a_moved_one() -> None:
    torch.manual_seed(0)
    config = EncoderConfig(view_offset=16, w_steady=10.0)
    model = SelfSupervised(config).eval()  # eval: batch norm does not mix the views
    x = torch.randn(3, 4, 12, 500)
    base, base_terms = tri_objective(config=EncoderConfig(view_offset=16), model=model, half_a=x[0],
                                     half_b=x[1], augmented_a=x[2])  # fmt: skip
    same, terms = tri_objective(model, x[0], x[1], x[2], config, moved_a=x[0])
    assert terms["steady"] == pytest.approx(0.0, abs=1e-6) and same.item() == pytest.approx(
        base.item(), rel=1e-5
    )
    moved, terms = tri_objective(model, x[0], x[1], x[2], config, moved_a=torch.roll(x[0], 8, dims=2))
    assert terms["steady"] > 0 and moved.item() == pytest.approx(
        base.item() + 10.0 * terms["steady"], rel=1e-5
    )
    assert "steady" not in base_terms
    with pytest.raises(ValueError, match="view_offset"):
        EncoderConfig(w_steady=1.0)


@pytest.mark.parametrize("w_steady", [0.0, 10.0])
def test_validation_loss_draws_the_views_its_objective_needs(w_steady: float) -> None:
    """The unlabelled-split validation runs the same objective, the steadiness view included."""
    import numpy as np

    from ecgsearch.encoder.data import EcgArrays
    from ecgsearch.encoder.train import validation_loss

    config = EncoderConfig(
        stem_channels=8, stage_channels=(16,), stage_kernels=(3,), embedding_dim=24, view_offset=16,
        w_steady=w_steady, batch_size=4,
    )  # fmt: skip
    n = 6
    val = EcgArrays(
        x=np.random.default_rng(0).standard_normal((n, 12, 1000)).astype(np.float32),
        ecg_ids=np.arange(n), patient_ids=list(range(n)), folds=np.full(n, 9),
        superclasses=[frozenset()] * n,
    )  # fmt: skip
    torch.manual_seed(0)
    loss = validation_loss(SelfSupervised(config), val, config, torch.device("cpu"))
    assert math.isfinite(loss) and loss > 0
