"""Memory sampling for the scale benchmarks: anonymous and file-backed peaks, the mapped data set."""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.bench import synthetic
from ecgsearch.bench.memory import MemoryCap, PeakSampler, status

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
MB = 1 << 20


@linux_only
def test_peak_sampler_tells_heap_from_mapped_file(tmp_path: Path) -> None:
    with PeakSampler(interval_s=0.01) as heap:
        block = np.ones(64 * MB, dtype=np.uint8)  # touched: resident anonymous pages
        time.sleep(0.1)
        del block
    assert heap.peak.anon_bytes >= 48 * MB
    assert heap.peak.file_bytes < 16 * MB
    assert heap.peak.samples >= 1

    path = tmp_path / "blob"
    path.write_bytes(b"\1" * (64 * MB))
    with PeakSampler(interval_s=0.01) as mapped, path.open("rb") as handle:
        view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        total = sum(view[i] for i in range(0, len(view), 4096))  # fault every page in
        time.sleep(0.1)  # held mapped while the sampler looks
        view.close()
    assert total == 64 * MB // 4096
    assert mapped.peak.file_bytes >= 48 * MB
    assert mapped.peak.anon_bytes < 16 * MB
    per_million = mapped.peak.per_million(2_000_000)
    assert per_million["peak_file_bytes_per_million"] == pytest.approx(mapped.peak.file_bytes / 2)


@linux_only
def test_timeline_shows_the_heap_rise_and_fall() -> None:
    with PeakSampler(interval_s=0.01, timeline_every_s=0.05) as sampler:
        time.sleep(0.1)
        block = np.ones(64 * MB, dtype=np.uint8)
        time.sleep(0.3)
        del block
        time.sleep(0.2)
    timeline = sampler.peak.timeline
    seconds = [row[0] for row in timeline]
    assert len(timeline) >= 6 and seconds == sorted(seconds)
    highest = max(range(len(timeline)), key=lambda i: timeline[i][1])
    assert timeline[highest][1] >= 48 * MB and 0 < highest < len(timeline) - 1  # risen, then freed
    assert timeline[-1][1] < 16 * MB
    assert sampler.peak.as_dict(1)["memory_timeline"][highest][1] == timeline[highest][1]


@linux_only
def test_status_reads_this_process() -> None:
    now = status()
    assert set(now) == {"VmRSS", "RssAnon", "RssFile", "VmHWM"}
    assert now["VmRSS"] >= now["RssAnon"] > 0


def test_mapped_data_set_equals_the_drawn_one_and_is_reused(tmp_path: Path) -> None:
    mix = synthetic.mixture(16, clusters=50, seed=4)
    drawn, columns = synthetic.generate(mix, 1200, chunk=synthetic.CHUNK)
    mapped, mapped_columns = synthetic.generate_mapped(mix, 1200, tmp_path)
    assert isinstance(mapped, np.memmap)
    assert not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, drawn)
    np.testing.assert_array_equal(mapped_columns.codes, columns.codes)
    np.testing.assert_array_equal(mapped_columns.age, columns.age)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["synthetic-d16-seed4-n1200.columns.npz", "synthetic-d16-seed4-n1200.npy"]
    stamp = (tmp_path / files[1]).stat().st_mtime_ns
    again, _ = synthetic.generate_mapped(mix, 1200, tmp_path)  # read back, not drawn again
    assert (tmp_path / files[1]).stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again, drawn)


def test_cap_report_reads_the_cgroup_files(tmp_path: Path) -> None:
    """The v1 and v2 file names and formats, read from a folder laid out like each."""
    (tmp_path / "memory.max_usage_in_bytes").write_text("123456\n")
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    v1 = MemoryCap(tmp_path, 1_000_000, 1).report()
    assert v1["peak_usage_bytes"] == 123456 and v1["oom_kills"] == 0 and v1["limit_bytes"] == 1_000_000
    (tmp_path / "memory.peak").write_text("777\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    v2 = MemoryCap(tmp_path, 2_000_000, 2).report()
    assert v2["peak_usage_bytes"] == 777 and v2["oom_kills"] == 1 and v2["cgroup_version"] == 2


def test_joining_a_cap_limits_this_process_or_says_why_not() -> None:
    """In a child process: where cgroups may be made, the child runs under the limit and leaves no
    cgroup behind; elsewhere joining raises CapUnavailable naming what is missing."""
    code = """
import json, os
from pathlib import Path
from ecgsearch.bench.memory import CapUnavailable, MemoryCap
try:
    cap = MemoryCap.join(512 * 2**20)
except CapUnavailable as error:
    print(json.dumps({"unavailable": str(error)}))
else:
    inside = str(cap.path.name) in Path("/proc/self/cgroup").read_text()
    report = cap.report()
    cap.leave()
    print(json.dumps({"inside": inside, "limit": report["limit_bytes"], "left": not cap.path.exists()}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    if "unavailable" in outcome:
        assert "cgroup" in outcome["unavailable"]
    else:
        assert outcome == {"inside": True, "limit": 512 * 2**20, "left": True}
