"""Encoder throughput: ECGs per second in onnxruntime (and torch when installed), per batch size.

Torch is optional: without it only onnxruntime is measured. The torch model is rebuilt from the
card's config with fresh weights; speed depends on the architecture, not the weight values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ecgsearch.bench.results import load_average, machine, relative, write_results
from ecgsearch.ecg.signals import LEADS, MODEL_SAMPLES
from ecgsearch.export.runtime import Embedder


def _rate(fn: Callable[[np.ndarray], object], x: np.ndarray, min_seconds: float) -> float:
    fn(x)  # warm-up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or n < 3:
        fn(x)
        n += 1
    return n * len(x) / elapsed


def _torch_runner(embedder: Embedder, threads: int) -> tuple[Callable[[np.ndarray], object], str] | None:
    try:
        import torch

        from ecgsearch.encoder.config import EncoderConfig
        from ecgsearch.encoder.model import Encoder
    except ImportError:
        return None
    torch.set_num_threads(threads)
    config = EncoderConfig.from_dict(embedder.card.training.get("config") or {})
    encoder = Encoder(config).eval()

    def run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return encoder(torch.from_numpy(x))

    return run, torch.__version__


def _inputs(batch_sizes: list[int] | tuple[int, ...]) -> dict[int, np.ndarray]:
    """Random prepared-shape ECGs per batch size, drawn in order from one fixed seed."""
    rng = np.random.default_rng(0)
    return {s: rng.standard_normal((s, len(LEADS), MODEL_SAMPLES)).astype(np.float32) for s in batch_sizes}


def run_benchmark(
    model: str | Path | None,
    *,
    threads: int = 2,
    batch_sizes: list[int] | tuple[int, ...] = (1, 32, 256),
    min_seconds: float = 3.0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Time both runtimes at each batch size; write and return the results dict."""
    embedder = Embedder(model, threads=threads)
    runners: list[tuple[str, Callable[[np.ndarray], object]]] = [("onnxruntime", embedder.embed)]
    torch_runner = _torch_runner(embedder, threads)
    if torch_runner is not None:
        runners.append(("torch", torch_runner[0]))
    rows = []
    for size, x in _inputs(batch_sizes).items():
        for name, fn in runners:
            rows.append({"runtime": name, "batch_size": size, "ecgs_per_s": _rate(fn, x, min_seconds)})
    result = {
        "benchmark": "encoder throughput, prepared ECGs (12 x 1000) per second",
        "model": relative(embedder.path),
        "model_version": embedder.version,
        "initialisation": embedder.card.initialisation,
        "parameters": embedder.card.model_extra.get("parameters") if embedder.card.model_extra else None,
        "threads": threads,
        "min_seconds": min_seconds,
        "results": rows,
        "machine": machine(
            load_average_at_end=load_average(),
            onnxruntime=ort.__version__,
            torch=torch_runner[1] if torch_runner else None,
        ),
    }
    if out is not None:
        write_results(out, result)
    return result


def compare_models(
    models: list[str | Path],
    *,
    threads: int = 2,
    batch_sizes: list[int] | tuple[int, ...] = (1, 32, 256),
    min_seconds: float = 3.0,
    rounds: int = 3,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Time several ONNX models in onnxruntime, taking turns within each round, in one process.

    A machine whose speed drifts between runs (a shared host) moves every model alike within a round, so
    each model's rate relative to the first, per round, is what one run can tell; the median over rounds
    is reported beside every round's rate.
    """
    if len(models) < 2 or rounds < 1:
        raise ValueError("compare needs two or more models and one or more rounds")
    embedders = [Embedder(m, threads=threads) for m in models]
    inputs = _inputs(batch_sizes)
    rates: dict[tuple[int, int], list[float]] = {(i, s): [] for i in range(len(models)) for s in batch_sizes}
    for _ in range(rounds):
        for size in batch_sizes:
            for i, embedder in enumerate(embedders):
                rates[i, size].append(_rate(embedder.embed, inputs[size], min_seconds))
    rows = []
    for i, embedder in enumerate(embedders):
        for size in batch_sizes:
            mine, first = rates[i, size], rates[0, size]
            rows.append(
                {
                    "model": relative(embedder.path),
                    "model_version": embedder.version,
                    "batch_size": size,
                    "ecgs_per_s_median": float(np.median(mine)),
                    "ecgs_per_s_rounds": mine,
                    "relative_to_first_median": float(np.median(np.array(mine) / np.array(first))),
                }
            )
    result = {
        "benchmark": "encoder throughput compared: onnxruntime, the models taking turns within each round",
        "threads": threads,
        "min_seconds": min_seconds,
        "rounds": rounds,
        "results": rows,
        "machine": machine(load_average_at_end=load_average(), onnxruntime=ort.__version__),
    }
    if out is not None:
        write_results(out, result)
    return result
