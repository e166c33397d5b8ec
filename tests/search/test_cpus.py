"""ECGSEARCH_CPUS: the list is read as taskset writes it, refused when the process cannot run there, and
every thread of the serving process (those started before the pinning too) runs on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.search.serving.cpus import format_cpus, parse_cpus, usable_cpus
from ecgsearch.search.serving.settings import ServiceSettings

ONE = max(usable_cpus())


def test_lists_and_ranges_read_as_taskset_writes_them() -> None:
    every = usable_cpus()
    assert parse_cpus(str(ONE)) == {ONE}
    assert parse_cpus(f"{min(every)}-{max(every)}") == set(range(min(every), max(every) + 1)) & every
    assert parse_cpus(f" {ONE} , {ONE}") == {ONE}
    assert ServiceSettings(cpus=f"{ONE},{ONE}", store_path=Path("s")).cpus == str(ONE)
    assert ServiceSettings(cpus=" ", store_path=Path("s")).cpu_set() is None
    assert format_cpus({3, 1, 2}) == "1,2,3"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("one", "'one' is not a CPU id"),
        ("1-", "'1-' is not a CPU id"),
        ("3-1", "runs backwards"),
        (",", "'' is not a CPU id"),
        (str(ONE + 4096), f"{ONE + 4096} not among the CPUs this process may use"),
        (f"0-{10**12}", f"{max(usable_cpus()) + 1} not among the CPUs"),  # refused, never spelled out
    ],
)
def test_a_list_the_process_cannot_run_on_is_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_cpus(text)
    assert says in str(refused.value)


PINNED = """
import json, sys, threading, time
from pathlib import Path
from ecgsearch.search.serving.cpus import parse_cpus, pin_process
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
pin_process(parse_cpus(sys.argv[1]))
after = threading.Thread(target=stop.wait); after.start()
lists = {}
for task in Path("/proc/self/task").iterdir():
    for line in (task / "status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            lists[task.name] = line.split(":", 1)[1].strip()
stop.set()
print(json.dumps(lists))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to read affinities")
def test_every_thread_runs_on_the_cpus_those_started_before_and_after() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PINNED, str(ONE)], capture_output=True, text=True, check=True
    )
    lists = json.loads(done.stdout)
    assert len(lists) >= 3  # the main thread and the two others
    assert set(lists.values()) == {str(ONE)}


def test_serve_refuses_a_cpu_it_cannot_use_and_pins_before_opening_the_store(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["serve", "--store", str(tmp_path / "none"), "--insecure", "--port", "0"]
    bad = runner.invoke(app, [*base, "--cpus", str(ONE + 4096)])
    assert bad.exit_code == 2 and "not among the CPUs this process may use" in bad.output
    command = [sys.executable, "-m", "ecgsearch.cli.main", *base, "--cpus", str(ONE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert {"event": "cpus", "cpus": str(ONE)}.items() <= next(
        e for e in events if e["event"] == "cpus"
    ).items()
    assert done.returncode == 1  # then the missing store stops it, as without --cpus
