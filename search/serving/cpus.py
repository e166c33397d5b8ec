"""The CPUs a serving process runs on (``ECGSEARCH_CPUS``): a list as ``taskset -c`` writes it.

Why a serving process may want fewer CPUs than the machine has: gRPC-Python hands every call from its
polling thread to a worker thread and the reply back, and the embedded store's binding holds the GIL
while it searches, so the process searches on one core at a time whatever it is given. Kept on one
core, those hand-offs stay in one core's caches instead of waking a thread on another: measured on
2 cores, one client's searches answered 0.59 ms sooner at the median and 16 clients got 0.78 of the
bare store's QPS instead of 0.50 (results/service_load_pinned.json beside results/service_load.json).
What it costs: pushes and searches by ECG or file encode on those CPUs only.
"""

from __future__ import annotations

import os


def parse_cpus(text: str) -> frozenset[int]:
    """``'1'``, ``'0-3'``, ``'0,2,4-5'`` as a set of CPU ids; ValueError naming what is wrong."""
    allowed = usable_cpus()
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{part[:40]!r} is not a CPU id or a range like 0-3 (give e.g. '1' or '0,2-3')")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"the range {part[:40]!r} runs backwards")
        # checked before the range is spelled out: '0-99999999' names no CPU this process may use
        cpus.update(range(low, min(high, max(low, max(allowed) + 1)) + 1))
    if not cpus <= allowed:
        raise ValueError(
            f"CPU {format_cpus(cpus - allowed)[:80]} not among the CPUs this process may use "
            f"({format_cpus(allowed)})"
        )
    return frozenset(cpus)


def format_cpus(cpus: set[int] | frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on (every CPU where the platform cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def pin_process(cpus: frozenset[int]) -> None:
    """Run every thread of this process, and every thread it starts later, on ``cpus`` only."""
    if not hasattr(os, "sched_setaffinity"):
        raise OSError("this platform cannot restrict a process to CPUs: leave ECGSEARCH_CPUS (--cpus) unset")
    threads = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for thread in threads:  # threads started before this call (gRPC's, the runtime's) too
        try:
            os.sched_setaffinity(int(thread), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
