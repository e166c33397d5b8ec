"""The statement head refitted on the unit embedding and the measured rhythm (``statement_head:
refit_rhythm``).

The head trained with the network reads the conv embedding only, and a two-number rhythm kNN finds AF
neighbours better than any block built from it. One L2 logistic regression per statement of the model's
vocabulary, fitted after training on the training folds' [unit embedding | rhythm z / sqrt 2] (the
served rhythm block at weight 1), gives a statement block that reads the rhythm beside the waveform:
judged cross-fitted in docs/results.md ("The candidate blocks on the 48-epoch models"). scikit-learn
fits it (the bench extra): the export of such a model needs it, serving does not (the graph holds the
weights).
"""

from __future__ import annotations

import numpy as np

C = 1.0  # inverse L2 strength, fixed before any run (not tuned)
MAX_ITER = 2000
CONSTANT_LOGIT = 10.0  # a statement with one class in the training rows: that class, certain


def fit(inputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, f) inputs and (n, L) 0/1 labels -> weights (L, f) and biases (L,): one logistic regression
    per label (C, lbfgs). A label with one class in the rows gets zero weights and a bias of
    +-CONSTANT_LOGIT, which no regression can separate."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:  # the export of a refit head runs with the bench extra
        raise ImportError("scikit-learn fits a refitted statement head: install the bench extra") from exc

    x = np.asarray(inputs, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"inputs {x.shape} and labels {y.shape} must be (n, f) and (n, L)")
    weights = np.zeros((y.shape[1], x.shape[1]))
    bias = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        column = y[:, j]
        if column.all() or not column.any():
            bias[j] = CONSTANT_LOGIT if column.all() else -CONSTANT_LOGIT
            continue
        model = LogisticRegression(C=C, max_iter=MAX_ITER).fit(x, column)
        weights[j], bias[j] = model.coef_[0], model.intercept_[0]
    return weights, bias
