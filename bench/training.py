"""The training report: a trained checkpoint against the random-init encoder of its config and seed.

Written by ``ecgsearch eval training``. Everything in it is computed here from the checkpoints
and PTB-XL folds 1-9 (fold 10 stays held out): training wall time, per-term final losses and the
best epoch from the run's checkpoints, then fold-9 agreement@10 and a fold-9 linear probe for the
trained and the random-init encoder (see ``ecgsearch.encoder.report``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ecgsearch.bench.results import relative
from ecgsearch.encoder.data import load_ptbxl
from ecgsearch.encoder.report import fold9_report
from ecgsearch.export.onnx import load_checkpoint, random_encoder, serving_module

METRIC = (
    "superclass neighbour agreement@10: fraction of the 10 nearest (cosine) that share a PTB-XL superclass "
    "with the query; the query's own patient excluded; queries without a superclass skipped"
)
PROBE = (
    "linear probe: one logistic regression (C=1) per superclass on standardised embeddings of folds 1-8, "
    "macro ROC-AUC over the superclasses on fold 9"
)


def training_report(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    cache_dir: str | Path | None = None,
    exported: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Report for ``checkpoint`` (normally best.pt); the run's last.pt beside it supplies the full log."""
    checkpoint = Path(checkpoint)
    encoder, config, ckpt = load_checkpoint(checkpoint)
    last_path = checkpoint.with_name("last.pt")
    last = torch.load(last_path, map_location="cpu", weights_only=False) if last_path.is_file() else ckpt
    summary, state = last.get("summary") or {}, last.get("state") or {}
    folds = range(1, config.val_fold + 1)
    data = load_ptbxl(data_root, folds=folds, max_records=config.max_records, cache_dir=cache_dir)
    dev = torch.device("cpu")
    served = serving_module(encoder, config, data_root, cache_dir)[0]  # what the export serves
    trained = fold9_report(served, data, dev, val_fold=config.val_fold)
    served_random = serving_module(random_encoder(config), config, data_root, cache_dir)[0]
    random = fold9_report(served_random, data, dev, val_fold=config.val_fold)
    return {
        "metric": METRIC,
        "probe": PROBE,
        "fold9": {"trained": trained, "random_init": random},
        "training": {
            "wall_time_s": summary.get("wall_time_s"),
            "epochs": summary.get("epochs"),
            "steps": summary.get("steps"),
            "best_epoch": summary.get("best_epoch"),
            "exported_epoch": (ckpt.get("state") or {}).get("epoch"),
            "final_losses": summary.get("final_losses"),
            "val_agreement_best": summary.get("val_agreement_best"),
            "val_agreement_last": summary.get("val_agreement_last"),
            "val_agreement_random_init": summary.get("val_agreement_random_init"),
            "parameters_encoder": summary.get("parameters_encoder"),
            "data": summary.get("data"),
            "device": summary.get("device"),
            "config": config.to_dict(),
            "log": state.get("history", []),
        },
        "exported_checkpoint": relative(checkpoint),
        **({"export": exported} if exported else {}),
        **({"command": command} if command else {}),
    }
