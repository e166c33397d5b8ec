"""Known answers for the metric functions behind results/recall_* and results/retrieval_*."""

from __future__ import annotations

import numpy as np
import pytest

from ecgsearch.bench import metrics


def test_recall_counts_a_known_wrong_id() -> None:
    truth = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    found = np.array([[0, 1, 2, 9], [4, 5, 6, 7]])  # one wrong id out of 8
    assert metrics.recall_at_k(found, truth, 4) == pytest.approx((3 / 4 + 1) / 2)
    assert metrics.recall_at_k(found, truth, 1) == 1.0


def test_recall_scores_short_filtered_truth_and_skips_empty() -> None:
    truth = np.array([[3, -1, -1], [-1, -1, -1]])  # filter kept one point; second query kept none
    found = np.array([[3, 8, 9], [1, 2, 3]])
    assert metrics.recall_at_k(found, truth, 3) == 1.0


def test_exact_topk_respects_mask_and_chunks() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((257, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    mask = np.arange(257) % 3 == 0
    ids, scores = metrics.exact_topk(q, x, 10, mask=mask, chunk=50)
    full = q @ x.T
    full[:, ~mask] = -np.inf
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :10])
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_topk_pads_when_filter_keeps_fewer_than_k() -> None:
    x = np.eye(4, dtype=np.float32)
    ids, _ = metrics.exact_topk(x[:1], x, 3, mask=np.array([True, False, True, False]))
    assert ids.tolist() == [[0, 2, -1]]


def test_latency_summary() -> None:
    s = metrics.latency_summary([0.001] * 99 + [0.1])
    assert s["p50_ms"] == pytest.approx(1.0)
    assert s["qps"] == pytest.approx(100 / (0.099 + 0.1))


def test_precision_and_enrichment() -> None:
    has = np.array([True, True, False, False, False, False, False, False, False, False])  # base rate 0.2
    nbrs = np.array([[1, 2], [0, 3], [4, 5]])
    out = metrics.precision_at_k(has, nbrs, np.array([0, 1, 2]))
    assert out["queries"] == 2  # query 2 lacks the code
    assert out["precision"] == pytest.approx(0.5)
    assert out["enrichment"] == pytest.approx(2.5)
    assert metrics.precision_at_k(np.zeros(4, bool), nbrs[:, :1], np.array([0]))["queries"] == 0


def test_neighbours_exclude_own_patient() -> None:
    emb = np.array([[1, 0], [1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids, _ = metrics.neighbours_excluding_patient(emb, ["a", "a", "b", "c"], 2, np.array([0]))
    assert ids.tolist() == [[2, 3]]


def test_binned_curve_means_per_similarity_bin() -> None:
    sim = np.arange(10.0)
    diff = np.array([9, 9, 7, 7, 5, 5, 3, 3, -1, 1.0])  # absolute values are taken
    curve = metrics.binned_curve(sim, diff, bins=5)
    assert [c["abs_difference_mean"] for c in curve] == [9, 7, 5, 3, 1]
    assert [c["pairs"] for c in curve] == [2] * 5
    assert metrics.binned_curve(np.array([np.nan]), np.array([1.0])) == []


@pytest.mark.parametrize("bpm", [48, 72, 110, 150])
def test_heart_rate_of_a_pulse_train(bpm: int) -> None:
    fs, seconds = 100, 10
    t = np.arange(fs * seconds) / fs
    beats = np.arange(0.3, seconds, 60 / bpm)
    x = sum(np.exp(-0.5 * ((t - b) / 0.012) ** 2) for b in beats)
    x = x + 0.3 * np.sin(2 * np.pi * 1.0 * t) + np.random.default_rng(0).normal(0, 0.02, len(t))
    assert metrics.heart_rate(x, fs) == pytest.approx(bpm, rel=0.03)


def test_heart_rate_none_without_rhythm() -> None:
    assert metrics.heart_rate(np.zeros(1000), 100) is None
    assert metrics.heart_rate(np.r_[np.zeros(500), 1.0, np.zeros(499)], 100) is None


def test_unknown_patients_are_not_one_patient() -> None:
    """Rows without a patient id exclude only themselves, not each other (no shared 'None' patient)."""
    emb = np.array([[1, 0], [1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids, _ = metrics.neighbours_excluding_patient(emb, [None, None, "b", None], 2, np.array([0]))
    assert ids.tolist() == [[1, 2]]
