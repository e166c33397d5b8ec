"""The one linear probe: a logistic regression per PTB-XL superclass on standardised embeddings.

Used by the training report (C=1, folds 1-8 -> fold 9) and the retrieval evaluation (C chosen on
fold 9, scored on fold 10). Torch-free; scikit-learn is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ecgsearch.ecg.ptbxl import SUPERCLASSES


def superclass_matrix(labels: Sequence[Iterable[str]]) -> np.ndarray:
    """(n, len(SUPERCLASSES)) 0/1 matrix: row i has a 1 for each superclass of record i."""
    sets = [set(s) for s in labels]
    return np.array([[c in s for c in SUPERCLASSES] for s in sets], dtype=int).reshape(len(sets), -1)


def probe_scores(emb: np.ndarray, y: np.ndarray, train: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Decision scores for every row; a superclass with one value on the training rows stays NaN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit(emb[train]).transform(emb)
    scores = np.full(y.shape, np.nan)
    for j in range(y.shape[1]):
        if len(set(y[train, j])) < 2:
            continue
        clf = LogisticRegression(C=c, max_iter=2000).fit(z[train], y[train, j])
        scores[:, j] = clf.decision_function(z)
    return scores


def macro_auc(scores: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[float, dict[str, float]]:
    """ROC-AUC per superclass over ``rows`` (classes present both ways and scored) and their mean."""
    from sklearn.metrics import roc_auc_score

    per: dict[str, float] = {}
    for j, name in enumerate(SUPERCLASSES):
        if np.isfinite(scores[rows, j]).all() and len(set(y[rows, j])) == 2:
            per[name] = float(roc_auc_score(y[rows, j], scores[rows, j]))
    return (float(np.mean(list(per.values()))) if per else float("nan")), per


def linear_probe_auc(
    train_emb: np.ndarray,
    train_labels: Sequence[Iterable[str]],
    test_emb: np.ndarray,
    test_labels: Sequence[Iterable[str]],
    c: float = 1.0,
) -> dict[str, Any]:
    """Fit on the training rows, score the test rows: macro ROC-AUC and AUC per superclass."""
    emb = np.concatenate([train_emb, test_emb])
    y = superclass_matrix([*train_labels, *test_labels])
    train = np.arange(len(emb)) < len(train_emb)
    macro, per_class = macro_auc(probe_scores(emb, y, train, c), y, ~train)
    return {"macro_auc": macro, "per_class_auc": per_class}
