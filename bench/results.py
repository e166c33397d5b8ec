"""The one way a benchmark writes its results: strict JSON, repository-relative paths, machine facts.

Every results file under results/ is written by ``write_results``, describes the machine with
``machine()`` and reports latencies with ``percentiles()``, so files from different benchmarks can be
compared field by field.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def relative(path: str | Path | None) -> str | None:
    """``path`` relative to the repository (``../shared/data`` outside it): no machine's absolute paths."""
    if path is None:
        return None
    return Path(os.path.relpath(Path(path).resolve(), REPO)).as_posix()


def finite(value: object) -> object:
    """NaN and infinities as null, numpy scalars as Python ones, paths as strings: strict JSON."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        return relative(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_results(path: str | Path, result: dict) -> Path:
    """Write ``result`` as indented strict JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(finite(result), indent=2) + "\n")
    tmp.replace(path)
    return path


def machine(**extra: object) -> dict:
    """Enough about the machine to compare numbers across runs; ``extra`` adds library versions."""
    cpu = _proc_field("/proc/cpuinfo", "model name")
    mem = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu": cpu or platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "memory_bytes": int(mem.split()[0]) * 1024 if mem else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def load_average() -> float | None:
    """One-minute load average now (shared machines: read beside every timing)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def percentiles(seconds: Sequence[float] | np.ndarray, qs: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Latency percentiles in milliseconds, keyed ``p50`` ...; empty input gives an empty dict."""
    if len(seconds) == 0:
        return {}
    values = np.percentile(np.asarray(seconds, dtype=np.float64) * 1e3, list(qs))
    return {f"p{q}": round(float(v), 3) for q, v in zip(qs, values, strict=True)}


def _proc_field(path: str, key: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")
