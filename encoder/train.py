"""The self-supervised training loop: tri-objective, checkpoints, validation on a held-out fold.

Reads top to bottom: set up (processes, seed, data, model, optimiser, resume), then per epoch train,
evaluate on the validation fold, log one JSON line, save ``last.pt`` and, when the validation metric
improves, ``best.pt``. Loss alone is a poor guide here (both contrastive terms can fall near zero while
retrieval stalls), so the kept checkpoint is the best by retrieval where the data has labels.

Two data paths: PTB-XL folds in memory (the default recipe; ``data.load_ptbxl``), or an archive of
prepared shards streamed by DataLoader workers (``--shards``; ``encoder.stream``), which is what several
processes (``torchrun``, DistributedDataParallel, NT-Xent negatives gathered across processes) and
mid-epoch checkpoints need. A checkpoint holds model, optimiser, scheduler, AMP scaler, step (the data
position: the order is a function of seed and epoch) and the RNG states of every process, so a run
resumed from it makes the same updates as one never stopped.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ecgsearch.encoder import distributed, train_data
from ecgsearch.encoder.augment import augment, three_windows, two_windows
from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.data import EcgArrays
from ecgsearch.encoder.losses import Gather, tri_objective
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


def make_deterministic(config: EncoderConfig, dev: torch.device, threads: int | None = None) -> None:
    """Seed torch and fix what else decides the weights, so one seed gives one model on a CPU.

    Data order and augmentations draw from a generator seeded separately in ``train``; the thread
    count is fixed because the result of a parallel float reduction depends on how it is split.
    On CUDA some kernels used here (linear upsampling's backward) have no deterministic version:
    there it only warns, and a GPU run is not bit-reproducible.
    """
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=dev.type != "cpu")
    torch.set_num_threads(threads or config.threads)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class _Objective(torch.nn.Module):
    """The tri-objective as a module's forward, so DistributedDataParallel sees every parameter used."""

    def __init__(
        self,
        model: SelfSupervised,
        config: EncoderConfig,
        gather: Gather | None,
        rhythm_columns: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model, self.config, self.gather = model, config, gather
        self.rhythm_columns = rhythm_columns  # the label term's rhythm statements (label_rhythm_share)

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        a_aug: torch.Tensor,
        b_aug: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        a_moved: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return tri_objective(
            self.model, a, b, a_aug, self.config, b_aug, self.gather, labels, self.rhythm_columns, a_moved
        )


def _views(
    x: torch.Tensor, config: EncoderConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(A, B, augmented A', augmented B or None, A' itself with w_steady > 0 or None) of a batch, drawn
    from ``g``."""
    if config.view_offset:
        a, b, a_shifted = three_windows(x, config.window, config.random_crop, config.view_offset, g)
    else:
        a, b = two_windows(x, config.window, config.random_crop, g)
        a_shifted = a
    a_aug = augment(a_shifted, config, g)
    b_aug = augment(b, config, g) if config.augment_pair else None
    return a, b, a_aug, b_aug, a_shifted if config.w_steady > 0 else None


def train(
    config: EncoderConfig,
    data_root: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    shards_dir: str | Path | None = None,
    workers: int = 2,
    checkpoint_every: int | None = None,
    max_steps: int | None = None,
    amp: bool | None = None,
    threads: int | None = None,
    val_records: int = 2048,
    on_step: Callable[[int], None] | None = None,
    arrays: tuple[EcgArrays, EcgArrays] | None = None,
) -> dict[str, Any]:
    """Train, checkpointing into ``out``; returns the run summary (also stored in the checkpoints).

    ``shards_dir``: stream from a prepared archive (else PTB-XL under ``data_root``, in memory) with
    ``workers`` DataLoader workers; ``checkpoint_every`` N steps a mid-epoch ``last.pt``; ``max_steps``
    stops (with a checkpoint) once the run has made that many steps, the schedule still that of the
    full run; ``amp`` (default: on CUDA) autocast to float16 with a gradient scaler; ``threads`` torch
    threads per process (default: the config's). Several processes: start under ``torchrun``.
    ``arrays``: (train, validation) PTB-XL arrays already loaded, instead of reading the config's folds.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    world = distributed.setup(dev)
    try:
        if dev.type == "cuda":
            dev = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(dev)
        return _train(
            config,
            data_root,
            out,
            world,
            dev,
            resume=resume,
            cache_dir=cache_dir,
            on_epoch=on_epoch,
            shards_dir=shards_dir,
            workers=workers,
            checkpoint_every=checkpoint_every,
            max_steps=max_steps,
            amp=dev.type == "cuda" if amp is None else amp,
            threads=threads,
            val_records=val_records,
            on_step=on_step,
            arrays=arrays,
        )
    finally:
        distributed.teardown(world)


def _train(
    config: EncoderConfig,
    data_root: str | Path,
    out: Path,
    world: distributed.World,
    dev: torch.device,
    *,
    resume: bool,
    cache_dir: str | Path | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    shards_dir: str | Path | None,
    workers: int,
    checkpoint_every: int | None,
    max_steps: int | None,
    amp: bool,
    threads: int | None,
    val_records: int,
    on_step: Callable[[int], None] | None,
    arrays: tuple[EcgArrays, EcgArrays] | None,
) -> dict[str, Any]:
    make_deterministic(config, dev, threads)
    if shards_dir is None:
        if world.distributed or checkpoint_every:
            raise ValueError("several processes and mid-epoch checkpoints need --shards (a prepared archive)")
        data: train_data.InMemory | train_data.Streamed = train_data.InMemory(
            config, data_root, cache_dir, arrays
        )
    else:
        if config.w_label > 0:
            raise ValueError("the label term (w_label > 0) trains on in-memory PTB-XL only, not --shards")
        if config.w_statement > 0:
            raise ValueError("the statement head (w_statement > 0) trains on in-memory PTB-XL only")
        data = train_data.Streamed(config, shards_dir, world, workers, dev.type == "cuda", val_records)
    if config.w_statement > 0 and isinstance(data, train_data.InMemory):
        # the head's size is the training rows' vocabulary: the checkpoint's config records it
        config = config.with_overrides(statement_vocabulary=data.statement_vocabulary)
    model = SelfSupervised(config).to(dev)  # same seed -> same weights as export.onnx.random_encoder
    val = data.val
    rhythm = data.rhythm_columns if isinstance(data, train_data.InMemory) else None
    objective: torch.nn.Module = _Objective(
        model,
        config,
        distributed.gather_with_grad if world.distributed else None,
        None if rhythm is None else rhythm.to(dev),
    )
    if world.distributed:
        ids = [dev.index] if dev.type == "cuda" else None
        objective = torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)

    steps_per_epoch = data.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total_steps, warmup=min(steps_per_epoch, total_steps // 10 + 1))
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    # augmentations: one generator per process (rank 0's is the one-process run's)
    g = torch.Generator().manual_seed(config.seed + 1_000_003 * world.rank)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": None, "history": []}
    if resume and (out / LAST).is_file():
        ckpt = torch.load(out / LAST, map_location=dev, weights_only=False)
        saved_world = ckpt.get("world_size", 1)
        if saved_world != world.size:
            raise ValueError(f"{out / LAST} was written by {saved_world} processes, not {world.size}")
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        generators = ckpt.get("generators", [ckpt["generator"]])
        g.set_state(generators[world.rank])
        if "torch_rng" in ckpt:
            torch.set_rng_state(ckpt["torch_rng"])
        state = ckpt["state"]
    else:
        if world.main:
            (out / LOG).write_text("")
        state["random_init_val"] = _validate(model, val, config, dev, world)

    def save(summary: dict[str, Any], best: bool) -> None:
        generators: list[torch.Tensor | None] = [g.get_state()]
        if world.distributed:
            generators = [None] * world.size
            dist.all_gather_object(generators, g.get_state())
        if world.main:
            ckpt = {
                "state_dict": model.state_dict(),
                "config": config.to_dict(),
                "step": state["step"],
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "generator": generators[0],
                "generators": generators,
                "torch_rng": torch.get_rng_state(),
                "world_size": world.size,
                "state": state,
                "summary": summary,
            }
            torch.save(ckpt, out / f"{LAST}.tmp")
            (out / f"{LAST}.tmp").replace(out / LAST)  # a kill while saving leaves the previous last.pt
            if best:
                torch.save(ckpt, out / BEST)

    def summarise() -> dict[str, Any]:
        return _summary(config, data.description, val, model, state, dev, world, workers)

    started = time.perf_counter() - state.get("wall_time_s", 0.0)
    stopped, first_step = False, True
    for epoch in range(state["epoch"], config.epochs):
        model.train()
        start = state["step"] - epoch * steps_per_epoch
        sums: dict[str, float] = state.pop("partial_sums", {}) if start else {}
        tick, cpu_tick = time.perf_counter(), time.process_time()
        for x, y in data.batches(epoch, start, g):
            a, b, a_aug, b_aug, a_moved = (
                v if v is None else v.to(dev, non_blocking=True) for v in _views(x, config, g)
            )
            labels = None if y is None else y.to(dev)
            with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                loss, terms = objective(a, b, a_aug, b_aug, labels, a_moved)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            state["step"] += 1
            state["trained_ecgs"] = state.get("trained_ecgs", 0) + len(x) * world.size
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            if first_step:  # this process's first step: loader start-up, allocations, warm caches
                first_step = False
                state["first_step_s"] = state.get("first_step_s", 0.0) + time.perf_counter() - tick
                state["first_step_ecgs"] = state.get("first_step_ecgs", 0) + len(x) * world.size
            end_of_epoch = state["step"] == (epoch + 1) * steps_per_epoch
            stopped = max_steps is not None and state["step"] >= max_steps and not end_of_epoch
            due = checkpoint_every and state["step"] % checkpoint_every == 0 and not end_of_epoch
            if stopped or due:
                state["train_time_s"] = state.get("train_time_s", 0.0) + time.perf_counter() - tick
                state["train_cpu_s"] = state.get("train_cpu_s", 0.0) + time.process_time() - cpu_tick
                state["wall_time_s"] = time.perf_counter() - started
                state["partial_sums"] = sums
                save(summarise(), best=False)
                del state["partial_sums"]
                tick, cpu_tick = time.perf_counter(), time.process_time()
            if on_step is not None:
                on_step(state["step"])
            if stopped:
                break
        if stopped:
            break
        state["train_time_s"] = state.get("train_time_s", 0.0) + time.perf_counter() - tick
        state["train_cpu_s"] = state.get("train_cpu_s", 0.0) + time.process_time() - cpu_tick
        done = state["step"] - epoch * steps_per_epoch
        sums = distributed.all_mean(sums, world)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": state["step"],
            "lr": sched.get_last_lr()[0],
            **{f"loss_{k}": v / max(1, done) for k, v in sums.items()},
        }
        last_epoch = epoch + 1 == config.epochs
        if (epoch + 1) % config.eval_every == 0 or last_epoch:
            record.update(_validate(model, val, config, dev, world))
        state["epoch"] = epoch + 1
        state["wall_time_s"] = time.perf_counter() - started
        record["wall_time_s"] = state["wall_time_s"]
        state["history"].append(record)
        if world.main:
            with (out / LOG).open("a") as log:
                log.write(json.dumps(record) + "\n")
        score = _score(record)
        previous = state.get("best_score", state["best"] if state["best_epoch"] else None)
        improved = score is not None and (previous is None or score > previous)
        if improved:
            state["best_score"], state["best_epoch"] = score, epoch + 1
            state["best"] = record.get("val_agreement", state["best"])
        save(summarise(), best=improved)
        if on_epoch is not None:
            on_epoch(record)
        if max_steps is not None and state["step"] >= max_steps:
            break
    summary = summarise()
    if world.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _score(record: dict[str, Any]) -> float | None:
    """Higher is better: retrieval agreement where the validation split has labels, else minus its loss."""
    if "val_agreement" in record:
        return record["val_agreement"]
    return -record["val_loss"] if "val_loss" in record else None


def _validate(
    model: SelfSupervised, val: EcgArrays, config: EncoderConfig, dev: torch.device, world: distributed.World
) -> dict[str, float]:
    """Agreement@10 on the held-out split where it has labels; else its loss and shift stability.

    Runs on the first process only; the others wait for it.
    """
    out: dict[str, float] = {}
    if world.main and len(val) > 1:
        if any(val.superclasses):
            out["val_agreement"] = validation_agreement(model.encoder, val, dev)
        else:
            out["val_loss"] = validation_loss(model, val, config, dev)
            out["val_shift16_top10_overlap"] = shift_overlap(model.encoder, val, dev)
    if world.distributed:
        dist.barrier()
    return out


@torch.no_grad()
def validation_loss(model: SelfSupervised, val: EcgArrays, config: EncoderConfig, dev: torch.device) -> float:
    """The tri-objective on the held-out split, views drawn from a fixed seed: comparable across epochs."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(config.seed)
    x = torch.from_numpy(np.ascontiguousarray(val.x))
    losses, weights = [], []
    for i in range(0, len(x) - 1, config.batch_size):
        chunk = x[i : i + config.batch_size]
        if len(chunk) < 2:
            break
        a, b, a_aug, b_aug, a_moved = _views(chunk, config, g)
        _, terms = tri_objective(
            model,
            a.to(dev),
            b.to(dev),
            a_aug.to(dev),
            config,
            None if b_aug is None else b_aug.to(dev),
            moved_a=None if a_moved is None else a_moved.to(dev),
        )
        losses.append(terms["total"])
        weights.append(len(chunk))
    model.train(was_training)
    return float(np.average(losses, weights=weights))


def shift_overlap(encoder: Encoder, val: EcgArrays, dev: torch.device, shift: int = 16, k: int = 10) -> float:
    """Mean overlap of each ECG's top-k (own patient excluded) before and after a circular shift.

    The encoder issue's stability measure, within the held-out split (16 samples = 0.16 s).
    """
    k = min(k, len(val) - 1)
    base = embed(encoder, val.x, dev).astype(np.float64)
    moved = embed(encoder, np.roll(val.x, shift, axis=2), dev).astype(np.float64)
    base /= np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
    moved /= np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
    patients = np.array(
        [hash(p) if p is not None else hash(("row", i)) for i, p in enumerate(val.patient_ids)]
    )
    same = patients[:, None] == patients[None, :]

    def top(q: np.ndarray) -> np.ndarray:
        sim = q @ base.T
        sim[same] = -np.inf
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    before, after = top(base), top(moved)
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(before, after, strict=True)]))


def _peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (a DataLoader worker)."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"process": round(self_kb / 1024, 1), "largest_worker": round(child_kb / 1024, 1)}


def _summary(
    config: EncoderConfig,
    description: dict[str, Any],
    val: EcgArrays,
    model: SelfSupervised,
    state: dict[str, Any],
    dev: torch.device,
    world: distributed.World,
    workers: int,
) -> dict[str, Any]:
    last = state["history"][-1] if state["history"] else {}
    memory = [_peak_rss_mb()]
    if world.distributed:
        memory = [{}] * world.size
        dist.all_gather_object(memory, _peak_rss_mb())
    seconds = state.get("train_time_s", 0.0)
    ecgs = state.get("trained_ecgs", 0)
    steady_s = seconds - state.get("first_step_s", 0.0)
    steady_ecgs = ecgs - state.get("first_step_ecgs", 0)
    random_init = state.get("random_init_val", {})
    return {
        "data": {
            **description,
            "train_folds": list(config.train_folds),
            "val_fold": config.val_fold,
            "n_val": len(val),
        },
        "config": config.to_dict(),
        "parameters_encoder": count_parameters(model.encoder),
        "epochs": state["epoch"],
        "steps": state["step"],
        "device": str(dev),
        "processes": world.size,
        "wall_time_s": state.get("wall_time_s", 0.0),
        "throughput": {
            "ecgs_trained": ecgs,
            "train_seconds": round(seconds, 3),
            "ecgs_per_s": round(ecgs / seconds, 1) if seconds else None,
            # without each start's first step (DataLoader start-up): the rate a long run settles at
            "ecgs_per_s_after_first_step": round(steady_ecgs / steady_s, 1)
            if steady_ecgs > 0 < steady_s
            else None,
            # CPU seconds (all threads) of this process in the loop: on a shared machine, wall time
            # depends on what else runs; ECGs per CPU second much less
            "train_cpu_seconds": round(state.get("train_cpu_s", 0.0), 3),
            "dataloader_workers": workers,
            "peak_rss_mb": memory,
        },
        "final_losses": {k.removeprefix("loss_"): v for k, v in last.items() if k.startswith("loss_")},
        "val_metric": (
            "neighbour agreement@10 on labels (superclass sets, else diagnosis codes), same patient "
            "excluded, within the validation split; without labels: tri-objective loss and top-10 "
            "overlap after a 16-sample shift"
        ),
        "val_agreement_last": last.get("val_agreement"),
        "val_agreement_best": state["best"],
        "best_epoch": state["best_epoch"],
        "val_agreement_random_init": random_init.get("val_agreement")
        if isinstance(random_init, dict)
        else random_init,
        "val_last": {k: v for k, v in last.items() if k.startswith("val_")},
    }
