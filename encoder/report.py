"""Fold-9 evaluation of an encoder for the training report: retrieval agreement and a linear probe.

Only folds 1-9 are read: fold 10 is held out for the final evaluation. Agreement is superclass
neighbour agreement@10 (same patient excluded) for fold-9 queries, searching fold 9 alone and
searching folds 1-9. The probe is a logistic regression per superclass on standardised folds 1-8
embeddings, scored by macro ROC-AUC on fold 9 (needs scikit-learn; skipped without it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ecgsearch.encoder.data import EcgArrays
from ecgsearch.encoder.model import Encoder
from ecgsearch.encoder.probe import linear_probe_auc
from ecgsearch.encoder.retrieval import neighbour_agreement
from ecgsearch.encoder.train import embed


def fold9_report(
    encoder: Encoder, data: EcgArrays, device: torch.device, val_fold: int = 9
) -> dict[str, Any]:
    """Agreement@10 of fold-9 queries (within fold 9; searching folds 1-9) and the probe's macro-AUC."""
    data = data.select(data.folds <= val_fold)
    emb = embed(encoder, data.x, device)
    is_val = data.folds == val_fold
    val = data.select(is_val)
    out: dict[str, Any] = {
        "fold9_within_fold9": neighbour_agreement(emb[is_val], val.superclasses, val.patient_ids),
        "fold9_queries_folds1to9": neighbour_agreement(
            emb, data.superclasses, data.patient_ids, query_mask=is_val
        ),
        "n_fold9_queries": int(sum(1 for s in val.superclasses if s)),
        "n_searched": len(data),
    }
    train = ~is_val
    has_label = np.array([len(s) > 0 for s in data.superclasses])
    try:
        probe = linear_probe_auc(
            emb[train & has_label],
            [s for s, m in zip(data.superclasses, train & has_label, strict=True) if m],
            emb[is_val & has_label],
            [s for s, m in zip(data.superclasses, is_val & has_label, strict=True) if m],
        )
    except ImportError:
        probe = {"macro_auc": None, "note": "scikit-learn not installed"}
    out["probe"] = probe
    return out
