"""Training throughput and memory from prepared archives, 1 and several processes: train_scale.json.

Each cell is a real ``ecgsearch train --shards`` run under ``torchrun`` (a fresh set of processes, so
peak memory is that run's own) stopped after ``steps`` steps; the numbers are the run's own summary:
ECGs trained per second of training-loop time (global batch x steps / seconds, DataLoader start-up
included) and the peak resident memory of every training process and of its largest DataLoader worker.
Running the same cells on archives of different sizes shows whether memory grows with the archive.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ecgsearch.ecg import shards

REPO = Path(__file__).resolve().parents[1]


def _relative(path: Path) -> str:
    return Path(os.path.relpath(path.resolve(), REPO)).as_posix()


def _archive_bytes(archive: shards.Archive) -> int:
    return sum((archive.root / f"{s.name}.npy").stat().st_size for s in archive.shards)


def run_cell(
    archive: Path, processes: int, config: Path, steps: int, workers: int, threads: int, out: Path
) -> dict:
    """One training run of ``steps`` steps with ``processes`` processes; returns its summary."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "ecgsearch.cli.main", "train", "--config", str(config), "--shards", str(archive),
        "--out", str(out), "--max-steps", str(steps), "--workers", str(workers), "--threads", str(threads),
        "--device", "cpu", "--val-records", "256",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"training run failed ({processes} processes, {archive}): {done.stderr[-800:]}")
    return json.loads((out / "summary.json").read_text())


def train_scale(
    archives: Sequence[Path],
    processes: Sequence[int],
    config: Path,
    *,
    steps: int,
    workers: int,
    cpu_threads: int,
    runs: Path,
    log: Callable[[str], None] = print,
) -> dict:
    """Every (archive, process count) cell; ``cpu_threads`` torch threads in all, split over processes."""
    import torch

    cells = []
    for root in archives:
        archive = shards.open_archive(root)
        for p in processes:
            threads = max(1, cpu_threads // p)
            load_before = os.getloadavg()[0]
            summary = run_cell(root, p, config, steps, workers, threads, runs / f"{root.name}-p{p}")
            memory = summary["throughput"]["peak_rss_mb"]
            cell = {
                "archive": _relative(root),
                "archive_ecgs": len(archive),
                "archive_bytes": _archive_bytes(archive),
                "archive_source": archive.source,
                "processes": p,
                "threads_per_process": threads,
                "dataloader_workers_per_process": workers,
                "global_batch": summary["config"]["batch_size"],
                "steps": summary["steps"],
                "ecgs_trained": summary["throughput"]["ecgs_trained"],
                "train_seconds": summary["throughput"]["train_seconds"],
                "ecgs_per_s": summary["throughput"]["ecgs_per_s"],
                "ecgs_per_s_after_first_step": summary["throughput"]["ecgs_per_s_after_first_step"],
                "train_cpu_seconds_first_process": summary["throughput"]["train_cpu_seconds"],
                "cpu_share_first_process": round(
                    summary["throughput"]["train_cpu_seconds"]
                    / summary["throughput"]["train_seconds"]
                    / threads,
                    2,
                ),
                "peak_rss_mb_per_process": [m["process"] for m in memory],
                "peak_rss_mb_largest_worker_per_process": [m["largest_worker"] for m in memory],
                "load_avg_1min_before": round(load_before, 2),
                "load_avg_1min_after": round(os.getloadavg()[0], 2),
            }
            log(json.dumps(cell))
            cells.append(cell)
    return {
        "benchmark": "train_scale",
        "command": "ecgsearch bench train-scale",
        "config": _relative(config),
        "parameters_encoder": summary["parameters_encoder"] if cells else None,
        "device": "cpu",
        "notes": (
            "ecgs_per_s: ECGs trained per second of training-loop time over the run's steps (global batch "
            "x steps; DataLoader start-up included); ecgs_per_s_after_first_step "
            "leaves the first step out. cpu_share_first_process: CPU seconds of the first training process "
            "in the loop / (loop seconds x its threads): below 1, other jobs took the cores. "
            "peak_rss_mb: ru_maxrss of each training process and "
            "of its largest DataLoader worker (forked: shares the parent's pages, counted in both). "
            "Synthetic archives: shared PTB-XL records augmented with a fixed seed (ecgsearch bench "
            "synthetic-archive), for throughput and memory only."
        ),
        "cells": cells,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
