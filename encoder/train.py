"""The self-supervised training loop: PTB-XL folds in memory, tri-objective, checkpoints, fold-9 retrieval.

Reads top to bottom: set up (seed, data, model, optimiser, resume), then per epoch train, evaluate
neighbour agreement on the validation fold, log one JSON line, save ``last.pt`` and, when the
validation metric improves, ``best.pt``. Loss alone is a poor guide here (both contrastive terms can
fall near zero while retrieval stalls), so the kept checkpoint is the best by retrieval.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgsearch.encoder.augment import augment, three_windows, two_windows
from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.data import EcgArrays, load_ptbxl
from ecgsearch.encoder.losses import tri_objective
from ecgsearch.encoder.model import Encoder, SelfSupervised, count_parameters
from ecgsearch.encoder.retrieval import neighbour_agreement

LAST, BEST, LOG = "last.pt", "best.pt", "log.jsonl"


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def embed(encoder: torch.nn.Module, x: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    """Embeddings (not normalised) of full prepared ECGs, in eval mode (an Encoder or what is served)."""
    was_training = encoder.training
    encoder.eval()
    chunks = [
        torch.from_numpy(np.ascontiguousarray(x[i : i + batch])).to(device) for i in range(0, len(x), batch)
    ]
    # an empty input still runs one zero row, so the result has the model's width
    out = [encoder(c).cpu().numpy() for c in chunks or [torch.zeros((1, *x.shape[1:]), device=device)]]
    encoder.train(was_training)
    return np.concatenate(out)[: len(x)].astype(np.float32, copy=False)


def validation_agreement(encoder: Encoder, val: EcgArrays, device: torch.device, k: int = 10) -> float:
    """Superclass neighbour agreement within the validation fold, same patient excluded."""
    return neighbour_agreement(embed(encoder, val.x, device), val.superclasses, val.patient_ids, k=k)


def make_deterministic(config: EncoderConfig, dev: torch.device) -> None:
    """Seed torch and fix what else decides the weights, so one seed gives one model on a CPU.

    Data order and augmentations draw from a generator seeded separately in ``train``; the thread
    count is fixed because the result of a parallel float reduction depends on how it is split.
    On CUDA some kernels used here (linear upsampling's backward) have no deterministic version:
    there it only warns, and a GPU run is not bit-reproducible.
    """
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=dev.type != "cpu")
    torch.set_num_threads(config.threads)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train(
    config: EncoderConfig,
    data_root: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train, checkpointing into ``out``; returns the run summary (also stored in the checkpoints)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    make_deterministic(config, dev)
    model = SelfSupervised(config).to(dev)  # same seed -> same weights as export.onnx.random_encoder

    cap = config.max_records
    train_set = load_ptbxl(data_root, folds=config.train_folds, max_records=cap, cache_dir=cache_dir)
    val = load_ptbxl(data_root, folds=[config.val_fold], max_records=cap, cache_dir=cache_dir)
    x_train = torch.from_numpy(train_set.x)

    steps_per_epoch = max(1, len(train_set) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total_steps, warmup=min(steps_per_epoch, total_steps // 10 + 1))
    )
    g = torch.Generator().manual_seed(config.seed)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": None, "history": []}
    if resume and (out / LAST).is_file():
        ckpt = torch.load(out / LAST, map_location=dev, weights_only=False)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        g.set_state(ckpt["generator"])
        state = ckpt["state"]
    else:
        (out / LOG).write_text("")
        state["random_init_val_agreement"] = validation_agreement(model.encoder, val, dev)

    started = time.perf_counter() - state.get("wall_time_s", 0.0)
    for epoch in range(state["epoch"], config.epochs):
        model.train()
        perm = torch.randperm(len(train_set), generator=g)
        sums: dict[str, float] = {}
        for i in range(steps_per_epoch):
            x = x_train[perm[i * config.batch_size : (i + 1) * config.batch_size]]
            if config.view_offset:
                a, b, a_shifted = three_windows(x, config.window, config.random_crop, config.view_offset, g)
            else:
                a, b = two_windows(x, config.window, config.random_crop, g)
                a_shifted = a
            a_aug = augment(a_shifted, config, g)
            b_aug = augment(b, config, g) if config.augment_pair else None
            loss, terms = tri_objective(
                model, a.to(dev), b.to(dev), a_aug.to(dev), config, None if b_aug is None else b_aug.to(dev)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            state["step"] += 1
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": state["step"],
            "lr": sched.get_last_lr()[0],
            **{f"loss_{k}": v / steps_per_epoch for k, v in sums.items()},
        }
        last_epoch = epoch + 1 == config.epochs
        if (epoch + 1) % config.eval_every == 0 or last_epoch:
            record["val_agreement"] = validation_agreement(model.encoder, val, dev)
        state["epoch"] = epoch + 1
        state["wall_time_s"] = time.perf_counter() - started
        record["wall_time_s"] = state["wall_time_s"]
        state["history"].append(record)
        with (out / LOG).open("a") as log:
            log.write(json.dumps(record) + "\n")
        improved = record.get("val_agreement", -1.0) > state["best"]
        if improved:
            state["best"], state["best_epoch"] = record["val_agreement"], epoch + 1
        summary = _summary(config, train_set, val, model, state, dev)
        ckpt = {
            "state_dict": model.state_dict(),
            "config": config.to_dict(),
            "step": state["step"],
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "generator": g.get_state(),
            "state": state,
            "summary": summary,
        }
        torch.save(ckpt, out / LAST)
        if improved:
            torch.save(ckpt, out / BEST)
        if on_epoch is not None:
            on_epoch(record)
    summary = _summary(config, train_set, val, model, state, dev)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _summary(
    config: EncoderConfig,
    train_set: EcgArrays,
    val: EcgArrays,
    model: SelfSupervised,
    state: dict[str, Any],
    dev: torch.device,
) -> dict[str, Any]:
    last = state["history"][-1] if state["history"] else {}
    return {
        "data": {
            "dataset": "PTB-XL v1.0.3 subset, records100",
            "train_folds": list(config.train_folds),
            "n_train": len(train_set),
            "val_fold": config.val_fold,
            "n_val": len(val),
        },
        "config": config.to_dict(),
        "parameters_encoder": count_parameters(model.encoder),
        "epochs": state["epoch"],
        "steps": state["step"],
        "device": str(dev),
        "wall_time_s": state.get("wall_time_s", 0.0),
        "final_losses": {k.removeprefix("loss_"): v for k, v in last.items() if k.startswith("loss_")},
        "val_metric": "superclass neighbour agreement@10, same patient excluded, within the validation fold",
        "val_agreement_last": last.get("val_agreement"),
        "val_agreement_best": state["best"],
        "best_epoch": state["best_epoch"],
        "val_agreement_random_init": state.get("random_init_val_agreement"),
    }
