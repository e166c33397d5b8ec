"""neighbour_agreement on embeddings whose answer is worked out by hand."""

import math

import numpy as np
import pytest

from ecgsearch.encoder.retrieval import neighbour_agreement, neighbour_agreement_per_query


def angles(degrees: list[float]) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_known_answer_with_same_patient_excluded() -> None:
    # rows 0..4 on a circle; row 1 is row 0's patient, so row 0's neighbours are 2 (10 deg), 3 (20), 4 (90)
    emb = angles([0, 1, 10, 20, 90])
    labels = [{"A"}, {"A"}, {"B"}, {"A", "C"}, {"A"}]
    patients = [7, 7, 8, 9, 10]
    per_query = neighbour_agreement_per_query(emb, labels, patients, k=2)
    assert per_query[0] == pytest.approx(0.5)  # 2 (B) miss, 3 (A,C) hit
    # row 1: neighbours 2 (9 deg), 3 (19 deg): same as row 0
    assert per_query[1] == pytest.approx(0.5)
    # row 2: nearest 1 (9), 3 (10): both share? 1 has A (no: B vs A), 3 has A,C (no)
    assert per_query[2] == pytest.approx(0.0)
    mean = neighbour_agreement(emb, labels, patients, k=2)
    assert mean == pytest.approx(np.mean(per_query))


def test_empty_label_sets_are_not_queries_but_stay_neighbours() -> None:
    emb = angles([0, 5, 50])
    labels = [{"A"}, set(), {"A"}]
    per_query = neighbour_agreement_per_query(emb, labels, [1, 2, 3], k=1)
    assert math.isnan(per_query[1])
    assert per_query[0] == 0.0  # nearest is the unlabelled row 1
    assert neighbour_agreement(emb, labels, [1, 2, 3], k=1) == pytest.approx(0.0)


def test_query_mask_and_none_patients() -> None:
    emb = angles([0, 1, 2])
    labels = [{"A"}, {"A"}, {"B"}]
    # None patients match nobody, so row 1 is row 0's neighbour
    assert neighbour_agreement(emb, labels, [None, None, None], k=1, query_mask=[True, False, False]) == 1.0
    # same patient: row 0 must skip row 1 and land on row 2 (B)
    assert neighbour_agreement(emb, labels, [5, 5, 6], k=1, query_mask=[True, False, False]) == 0.0


def test_cosine_ignores_scale_and_fewer_candidates_than_k() -> None:
    emb = angles([0, 10, 170]) * np.array([[1.0], [100.0], [0.01]])
    labels = [{"A"}, {"A"}, {"B"}]
    assert neighbour_agreement_per_query(emb, labels, [1, 2, 3], k=10)[0] == pytest.approx(0.5)
