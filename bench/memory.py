"""Process memory as Linux reports it, and its peak over a stretch of work.

Resident memory has two parts that mean different things for sizing a node: anonymous pages (heap,
the engine's graphs and in-RAM vectors) must fit in RAM, while file-backed pages (memory-mapped
vectors, segments being written) are page cache the kernel can write back and drop under pressure.
VmRSS adds them; the scale benchmarks report both, and the peak of each, sampled while the work runs
(a value read after the work misses the peak).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
TIMELINE_EVERY_S = 10.0  # a 4M build of ~1.5 hours keeps ~550 rows
READY = "sampling"  # the watcher's first line: its first sample is taken


def status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of a process in bytes (empty off Linux)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            found[key] = int(value.split()[0]) * 1024
    return found


def rss_bytes() -> int:
    """Resident set size of this process (0 off Linux)."""
    return status().get("VmRSS", 0)


@dataclass
class Peak:
    """Highest resident memory seen while sampling, each part on its own, minus the start."""

    anon_bytes: int = 0
    file_bytes: int = 0
    rss_bytes: int = 0
    samples: int = 0
    timeline: tuple[tuple[float, int, int], ...] = ()  # (seconds, anon, file growth), every so often

    def per_million(self, n: int) -> dict[str, float]:
        """The peaks as bytes per million points (what a node's sizing scales by)."""
        scale = 1e6 / n if n else 0.0
        return {
            "peak_anon_bytes_per_million": self.anon_bytes * scale,
            "peak_file_bytes_per_million": self.file_bytes * scale,
            "peak_rss_bytes_per_million": self.rss_bytes * scale,
        }

    def as_dict(self, n: int) -> dict[str, float | int | list[list[float]]]:
        return {
            "peak_anon_bytes": self.anon_bytes,
            "peak_file_bytes": self.file_bytes,
            "peak_rss_bytes": self.rss_bytes,
            "memory_samples": self.samples,
            **self.per_million(n),
            "memory_timeline": [list(row) for row in self.timeline],
        }


def watch(
    pid: int, interval_s: float, start: dict[str, int], timeline_every_s: float = TIMELINE_EVERY_S
) -> None:
    """The watcher's loop: sample ``pid`` until stdin has a line, then print the peaks as JSON, with
    the anonymous and file-backed growth every ``timeline_every_s`` (how a long build's heap rises:
    what each finished segment keeps, what building one adds).

    It runs in its own process (``python -m ecgsearch.bench.memory``): qdrant-edge's binding holds the
    watched process's GIL for most of an optimize (a thread there took 6 samples in a 55-minute 4M
    build), so a thread cannot see the peak.
    """
    peak = dict.fromkeys(start, 0)
    samples = 0
    timeline: list[tuple[float, int, int]] = []
    began = time.monotonic()
    stop = announced = False
    while True:  # a sample at the start, one per interval, and one when told to stop
        now = status(pid)
        if now:
            for key in peak:
                peak[key] = max(peak[key], now[key] - start[key])
            samples += 1
            elapsed = time.monotonic() - began
            if stop or not timeline or elapsed - timeline[-1][0] >= timeline_every_s:
                timeline.append(
                    (round(elapsed, 1), now["RssAnon"] - start["RssAnon"], now["RssFile"] - start["RssFile"])
                )
        if stop:
            break
        if not announced:  # the sampler's caller waits for this before its work starts
            print(READY, flush=True)
            announced = True
        stop = bool(select.select([sys.stdin], [], [], interval_s)[0])
    print(json.dumps({"peak": peak, "samples": samples, "timeline": timeline}))


class PeakSampler:
    """Watch this process's memory every ``interval_s`` from a child process; peaks are growth over
    the start.

    ``with PeakSampler() as peak: work()`` then read ``peak.peak``. The engine's own threads and
    allocations count, as they are this process's; a child process keeps sampling while this one's
    GIL is held by a native call.
    """

    def __init__(self, interval_s: float = 0.2, timeline_every_s: float = TIMELINE_EVERY_S) -> None:
        self.interval_s = interval_s
        self.timeline_every_s = timeline_every_s
        self.peak = Peak()
        self._watcher: subprocess.Popen[str] | None = None

    def __enter__(self) -> PeakSampler:
        start = status()
        if start:
            begin = {"RssAnon": start["RssAnon"], "RssFile": start["RssFile"], "VmRSS": start["VmRSS"]}
            self._watcher = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    str(os.getpid()),
                    str(self.interval_s),
                    json.dumps(begin),
                    str(self.timeline_every_s),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            # A watcher still starting would miss whatever the caller does first (a loaded machine
            # takes a good part of a second to start Python), so the work waits for its first sample.
            assert self._watcher.stdout is not None
            first = self._watcher.stdout.readline().strip()
            if first != READY:
                self._watcher.kill()
                raise RuntimeError(f"memory watcher did not start (said {first[:200]!r})")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._watcher is None:
            return
        out, _ = self._watcher.communicate(input="stop\n", timeout=60)
        seen = json.loads(out)
        peak = seen["peak"]
        self.peak = Peak(
            anon_bytes=max(0, peak["RssAnon"]),
            file_bytes=max(0, peak["RssFile"]),
            rss_bytes=max(0, peak["VmRSS"]),
            samples=seen["samples"],
            timeline=tuple((float(t), int(anon), int(file)) for t, anon, file in seen["timeline"]),
        )


class CapUnavailable(RuntimeError):
    """This machine offers no memory cgroup this process may create and join."""


@dataclass(frozen=True)
class MemoryCap:
    """A memory cgroup this process runs in from now on: its limit counts heap and page cache alike.

    A build that completes under the cap fits a node of that much memory, whatever RSS says (file
    pages above the limit are written back and dropped instead of counted). cgroup v2 where its memory
    controller is enabled, else v1's memory hierarchy; both need the right to create a cgroup (root
    in most containers and VMs).
    """

    path: Path
    limit_bytes: int
    version: int
    home: Path | None = None  # the cgroup this process came from, returned to by ``leave``

    @classmethod
    def join(cls, limit_bytes: int, name: str | None = None) -> MemoryCap:
        """Create the cgroup (``ecgsearch-<pid>`` unless named), set its limit, move this process in."""
        name = name or f"ecgsearch-{os.getpid()}"
        v2 = Path("/sys/fs/cgroup")
        v1 = v2 / "memory"
        if "memory" in _read(v2 / "cgroup.subtree_control").split():
            version, root, limit_file = 2, v2, "memory.max"
        elif (v1 / "memory.limit_in_bytes").is_file():
            version, root, limit_file = 1, v1, "memory.limit_in_bytes"
        else:
            raise CapUnavailable("no memory cgroup controller is mounted (neither cgroup v2 nor v1)")
        path = root / name
        home = _current(root, version)
        try:
            path.mkdir(exist_ok=True)
            (path / limit_file).write_text(str(limit_bytes))
            (path / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as error:
            raise CapUnavailable(f"cannot create or join memory cgroup {path}: {error.strerror}") from error
        return cls(path, limit_bytes, version, home)

    def leave(self) -> None:
        """Move this process back where it came from and remove the cgroup (best effort)."""
        try:
            if self.home is not None:
                (self.home / "cgroup.procs").write_text(str(os.getpid()))
            self.path.rmdir()
        except OSError:
            pass

    def report(self) -> dict[str, int | str | None]:
        """The limit, the highest usage the kernel recorded (heap + page cache) and OOM events so far."""
        peak_file = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        peak = _read(self.path / peak_file).strip()
        events = _read(self.path / ("memory.events" if self.version == 2 else "memory.oom_control"))
        oom = next((line.split()[1] for line in events.splitlines() if line.startswith("oom_kill ")), None)
        return {
            "cgroup": str(self.path),
            "cgroup_version": self.version,
            "limit_bytes": self.limit_bytes,
            "peak_usage_bytes": int(peak) if peak.isdigit() else None,
            "oom_kills": int(oom) if oom is not None and oom.isdigit() else None,
        }


def _current(root: Path, version: int) -> Path | None:
    """This process's cgroup folder under ``root`` (from /proc/self/cgroup), None if unknown."""
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, where = line.split(":", 2)
        if (version == 2 and controllers == "") or (version == 1 and "memory" in controllers.split(",")):
            return root / where.lstrip("/")
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3]), *map(float, sys.argv[4:5]))
