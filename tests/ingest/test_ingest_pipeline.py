"""`ecgsearch ingest` end to end: real records, the bundled ONNX model, a real embedded store."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
import wfdb
from typer.testing import CliRunner

from ecgsearch.encoder.ptbxl import read_table
from ecgsearch.ingest.cli import EXIT_FAILED, EXIT_OK, EXIT_REJECTS
from ecgsearch.search.schema import SearchFilter
from ecgsearch.search.store import Store, open_store

# The ingest commands alone, mounted the way the root app mounts them.
APP_SOURCE = """
import typer
from ecgsearch.ingest.cli import register
app, bench = typer.Typer(), typer.Typer()
register(app, bench, typer.Typer())
app.add_typer(bench, name="bench")
app.callback()(lambda: None)
"""


def _app() -> typer.Typer:
    scope: dict = {}
    exec(APP_SOURCE, scope)
    return scope["app"]


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(_app(), ["ingest", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _open(path: Path) -> Iterator[Store]:
    store = open_store(path=path, collection="ecgs")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Store]:
    yield from _open(tmp_path / "store")


def test_ptbxl_ingest_payloads_filter_and_rerun(tmp_path: Path, ptbxl_dir: Path) -> None:
    store = tmp_path / "store"
    args = (ptbxl_dir, "--store", store, "--limit", 40, "--batch-size", 16, "--workers", 0, "-q")
    code, out, _ = invoke(*args)
    assert code == EXIT_OK, out
    assert "ingested 40, skipped 0" in out
    code, out, _ = invoke(*args)  # rerun: idempotent, nothing re-encoded
    assert code == EXIT_OK and "ingested 0, skipped 40" in out
    rows = read_table(ptbxl_dir)[:40]
    for s in _open(store):
        assert s.count() == 40
        payload, vector = s.get("ptbxl:1")
        assert (payload.sex, payload.age, payload.superclasses, payload.patient_id) == (
            "F",
            56,
            ["NORM"],
            "15709",
        )
        assert "426783006" in payload.diagnoses and abs(float(np.linalg.norm(vector)) - 1) < 1e-4
        assert s.count(SearchFilter(sex="F")) == sum(r.sex == "F" for r in rows)
        assert s.count(SearchFilter(diagnoses_any=["426783006"])) == sum("SR" in r.scp_codes for r in rows)


def _link(record: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in record.parent.glob(record.name + ".*"):
        (folder / f.name).symlink_to(f)


def test_challenge_folder_with_bad_records(tmp_path: Path, data_dir: Path) -> None:
    source = tmp_path / "archive"
    for name in ("georgia/E00001", "georgia/E00002", "ptb/S0001"):
        _link(data_dir / "challenge" / name, source / name.split("/")[0])
    broken = source / "broken"
    broken.mkdir()
    # Truncated: a real header over the first 40% of its signal file.
    (broken / "E00003.hea").write_bytes((data_dir / "challenge/georgia/E00003.hea").read_bytes())
    (broken / "E00003.mat").write_bytes((data_dir / "challenge/georgia/E00003.mat").read_bytes()[:40_000])
    # Six leads kept of twelve, V5 and V6 among those dropped: cannot be derived.
    rec = wfdb.rdrecord(str(data_dir / "ptb-xl/records100/00000/00003_lr"))
    keep = [rec.sig_name.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4")]
    wfdb.wrsamp("six", fs=rec.fs, units=["mV"] * 6, sig_name=[rec.sig_name[i] for i in keep],
                p_signal=rec.p_signal[:, keep], fmt=["16"] * 6, write_dir=str(broken))  # fmt: skip
    rejects = tmp_path / "rejects.csv"
    code, out, err = invoke(source, "--store", tmp_path / "store", "--rejects", rejects, "--workers", 0, "-q")
    assert code == EXIT_REJECTS, out + err
    assert "ingested 3, skipped 0 (already stored), rejected 2" in out
    (report,) = tmp_path.glob("rejects-*.csv")  # named per run
    assert f"rejects report: {report}" in err
    with report.open() as handle:
        reasons = {row["record"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(reasons) == {"broken:E00003", "broken:six"}
    assert "cannot read" in reasons["broken:E00003"] and "missing leads V5, V6" in reasons["broken:six"]
    assert "rejected broken:six" in err
    for s in _open(tmp_path / "store"):
        georgia, _ = s.get("georgia:E00001")
        assert (georgia.age, georgia.sex, georgia.diagnoses, georgia.dataset) == (None, "F", [], "georgia")
        assert s.get("ptb:S0001")[0].duration_s == 38.4
        assert s.count(SearchFilter(datasets=["georgia"])) == 2
    # A second run (everything stored is skipped) writes its own report: the first one is kept.
    first = report.read_text()
    code, out, err = invoke(source, "--store", tmp_path / "store", "--rejects", rejects, "--workers", 0, "-q")
    assert code == EXIT_REJECTS and "skipped 3" in out
    assert len(list(tmp_path.glob("rejects-*.csv"))) == 2 and report.read_text() == first


def test_collection_of_another_model_is_refused(tmp_path: Path, ptbxl_dir: Path) -> None:
    for s in _open(tmp_path / "store"):
        s.create_collection(dim=256, model_version="another-model")
    code, _, err = invoke(ptbxl_dir, "--store", tmp_path / "store", "--limit", 3, "--workers", 0, "-q")
    assert code == EXIT_FAILED and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "another-model" in err


def test_index_settings_are_chosen_at_creation_and_then_fixed(tmp_path: Path, ptbxl_dir: Path) -> None:
    store = tmp_path / "store"
    base = (ptbxl_dir, "--store", store, "--limit", 3, "--workers", 0, "-q")
    code, _, _ = invoke(*base, "--hnsw-m", 8, "--search-ef", 64)  # int8: the default
    assert code == EXIT_OK
    for s in _open(store):
        made = s.manifest.settings
        assert (made.quantization, made.hnsw_m, made.search_ef, made.hnsw_ef_construct) == (True, 8, 64, 256)
        assert s.count() == 3
    assert invoke(*base)[0] == EXIT_OK  # no settings given: the collection's own are used
    code, _, err = invoke(*base, "--float32")
    assert code == EXIT_FAILED and "quantization True (asked False)" in err
    assert "new collection" in err


def test_missing_source_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = invoke(tmp_path / "nowhere", "--store", tmp_path / "store")
    assert code == 2 and "such folder or manifest" in err


def test_empty_source_is_an_error_and_creates_no_collection(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = invoke(tmp_path / "empty", "--store", tmp_path / "store")
    assert code == 2 and "nothing to ingest" in err
    assert not (tmp_path / "store").exists()


def test_deployment_spellings_of_cluster_options_still_work(tmp_path: Path, ptbxl_dir: Path) -> None:
    """deploy/k8s passes --shard-number/--replication-factor; without a server both are refused alike."""
    for args in (("--shard-number", 6, "--replication-factor", 2), ("--shards", 6, "--replicas", 2)):
        code, _, err = invoke(ptbxl_dir, "--store", tmp_path / "store", *args)
        assert code == 2 and "need --qdrant-url" in err


def test_resume_after_kill_9(tmp_path: Path, ptbxl_dir: Path) -> None:
    """Kill the process once its first batch is stored; the rerun completes with every record once."""
    store = tmp_path / "store"
    script = APP_SOURCE + "app()\n"
    args = [sys.executable, "-c", script, "ingest", str(ptbxl_dir), "--store", str(store), "--limit", "96"]
    args += ["--batch-size", "8", "--workers", "1", "--no-optimize"]
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # one plain progress line per stored batch when stderr is not a terminal
            if line.startswith("ingest:") and " 0 stored" not in line:
                os.kill(proc.pid, signal.SIGKILL)  # the ingest process only: its workers must follow
                break
        proc.wait(timeout=60)
        time.sleep(1)
        assert _session_processes(proc.pid) == [], "worker processes outlived the killed ingest"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    for s in _open(store):
        partial = s.count()
    assert 0 < partial < 96
    code, out, _ = invoke(ptbxl_dir, "--store", store, "--limit", 96, "--workers", 0, "-q")
    assert code == EXIT_OK and f"ingested {96 - partial}, skipped {partial}" in out, (partial, out)
    for s in _open(store):
        assert s.count() == 96
        wanted = [f"ptbxl:{r.ecg_id}" for r in read_table(ptbxl_dir)[:96]]
        assert s.existing(wanted) == set(wanted)


def _session_processes(session: int) -> list[int]:
    """Live processes of a session (Linux /proc), zombies excluded."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found
