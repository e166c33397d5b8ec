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

from ecgsearch.ecg.identity import Pseudonymizer, read_secret
from ecgsearch.ecg.ptbxl import read_table
from ecgsearch.ecg.schema import SearchFilter
from ecgsearch.ingest.cli import EXIT_FAILED, EXIT_OK, EXIT_REJECTS
from ecgsearch.ingest.sources import enumerate_source, hash_of, read
from ecgsearch.search.engine.store import Store, open_store

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
    site = Pseudonymizer(read_secret(store / "site-secret"))  # generated beside the store on first use
    first = next(iter(enumerate_source(ptbxl_dir)))
    for s in _open(store):
        assert s.count() == 40
        payload, vector = s.get("ptbxl:1")
        assert (payload.sex, payload.age, payload.superclasses, payload.patient_id) == (
            "F",
            56,
            ["NORM"],
            site.patient("ptbxl", "15709"),
        )
        assert payload.content_hash == hash_of(read(first))
        assert payload.source_path == "records100/00000/00001_lr" and payload.duplicate_of is None
        assert "426783006" in payload.diagnoses and abs(float(np.linalg.norm(vector)) - 1) < 1e-4
        # Patient 13619's eight ECGs share one pseudonym, which is neither the raw id nor another's.
        of_13619 = {s.get(f"ptbxl:{r.ecg_id}")[0].patient_id for r in rows if r.patient_id == 13619}
        assert of_13619 == {site.patient("ptbxl", "13619")}
        assert len({s.get(f"ptbxl:{r.ecg_id}")[0].patient_id for r in rows}) == len(
            {r.patient_id for r in rows}
        )
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
    (broken / "E00004.hea").write_text("")  # an empty header beside a sound signal file
    (broken / "E00004.mat").symlink_to(data_dir / "challenge/georgia/E00004.mat")
    # Six leads kept of twelve, V5 and V6 among those dropped: cannot be derived.
    rec = wfdb.rdrecord(str(data_dir / "ptb-xl/records100/00000/00003_lr"))
    keep = [rec.sig_name.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4")]
    wfdb.wrsamp("six", fs=rec.fs, units=["mV"] * 6, sig_name=[rec.sig_name[i] for i in keep],
                p_signal=rec.p_signal[:, keep], fmt=["16"] * 6, write_dir=str(broken))  # fmt: skip
    rejects = tmp_path / "rejects.csv"
    code, out, err = invoke(source, "--store", tmp_path / "store", "--rejects", rejects, "--workers", 0, "-q")
    assert code == EXIT_REJECTS, out + err
    assert "ingested 3, skipped 0 (already stored), rejected 3" in out
    (report,) = tmp_path.glob("rejects-*.csv")  # named per run
    assert f"rejects report: {report}" in err
    with report.open() as handle:
        reasons = {row["record"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(reasons) == {"broken:E00003", "broken:E00004", "broken:six"}
    assert reasons["broken:E00003"] == "truncated signal: expected 60000 samples, file has 19980"
    assert reasons["broken:E00004"] == "empty header"
    assert "missing leads V5, V6" in reasons["broken:six"]
    assert "rejected broken:six" in err
    for s in _open(tmp_path / "store"):
        georgia, _ = s.get("georgia:E00001")
        assert (georgia.age, georgia.sex, georgia.diagnoses, georgia.dataset) == (None, "F", [], "georgia")
        # No patient id in the Challenge headers: each ECG is a patient of its own, never "unknown".
        pseudonyms = {s.get(r)[0].patient_id for r in ("georgia:E00001", "georgia:E00002", "ptb:S0001")}
        assert len(pseudonyms) == 3 and None not in pseudonyms
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


def test_cluster_options_need_a_server_and_no_earlier_spelling_is_taken(
    tmp_path: Path, ptbxl_dir: Path
) -> None:
    """--shards/--replicas lay out a collection on a Qdrant cluster; the spellings of earlier releases
    (--shard-number, --replication-factor, --int8, --hnsw-ef-construct) are gone, not hidden."""
    code, _, err = invoke(ptbxl_dir, "--store", tmp_path / "store", "--shards", 6, "--replicas", 2)
    assert code == 2 and "need --qdrant-url" in err
    for gone in ("--shard-number", "--replication-factor", "--int8", "--hnsw-ef-construct"):
        code, _, err = invoke(
            ptbxl_dir, "--store", tmp_path / "store", gone, *([] if gone == "--int8" else [6])
        )
        assert code == 2 and f"No such option: {gone}" in err, gone
    assert not (tmp_path / "store").exists()


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


def _impostor(data_dir: Path, folder: Path) -> None:
    """A different ECG (E00002's signal, age 33, Dx 59118001) named georgia/E00001: finding 5's case."""
    folder.mkdir(parents=True, exist_ok=True)
    header = (data_dir / "challenge/georgia/E00002.hea").read_text().replace("E00002", "E00001")
    header = header.replace("#Age: NaN", "#Age: 33").replace("#Dx: ", "#Dx: 59118001")
    (folder / "E00001.hea").write_text(header)
    (folder / "E00001.mat").symlink_to(data_dir / "challenge/georgia/E00002.mat")


def test_a_different_ecg_under_a_stored_id_is_a_collision(tmp_path: Path, data_dir: Path) -> None:
    """Same folder and record names from another source path: reported, exit 3, stored ECG kept."""
    store, rejects = tmp_path / "store", tmp_path / "rejects.csv"
    _link(data_dir / "challenge/georgia/E00001", tmp_path / "site-a" / "georgia")
    assert invoke(tmp_path / "site-a", "--store", store, "--workers", 0, "-q")[0] == EXIT_OK
    for s in _open(store):
        before = s.get("georgia:E00001")
    _impostor(data_dir, tmp_path / "site-b" / "georgia")
    code, out, err = invoke(tmp_path / "site-b", "--store", store, "--rejects", rejects, "--workers", 0, "-q")
    assert code == EXIT_REJECTS, out + err
    assert "ingested 0, skipped 0 (already stored), rejected 1 (1 id collisions)" in out
    (report,) = tmp_path.glob("rejects-*.csv")  # each run names its own report
    with report.open() as handle:
        (row,) = csv.DictReader(handle)
    assert row["record"] == "georgia:E00001" and row["path"] == "georgia/E00001"
    assert row["reason"].startswith("id collision: a different ECG is already stored as georgia:E00001")
    assert "the stored one is kept" in row["reason"] and "rejected georgia:E00001: id collision" in err
    for s in _open(store):
        payload, vector = s.get("georgia:E00001")
        assert payload == before[0] and np.array_equal(vector, before[1])
        assert (payload.age, payload.diagnoses) == (None, [])  # not the impostor's 33 / 59118001
    code, out, _ = invoke(tmp_path / "site-a", "--store", store, "--workers", 0, "-q")  # the true rerun
    assert code == EXIT_OK and "ingested 0, skipped 1" in out


@pytest.mark.parametrize("batch_size", [1, 8])
def test_one_id_twice_in_one_run(tmp_path: Path, data_dir: Path, batch_size: int) -> None:
    """Two folders of one source give one id: checked against the first whether it is stored already
    (batch size 1: the second batch sees it) or in the same batch (batch size 8)."""
    source = tmp_path / "source"
    _link(data_dir / "challenge/georgia/E00001", source / "a" / "georgia")
    _link(data_dir / "challenge/georgia/E00001", source / "b" / "georgia")  # a true copy: skipped
    _impostor(data_dir, source / "c" / "georgia")  # another ECG: a collision
    rejects = tmp_path / "rejects.csv"
    args = (source, "--store", tmp_path / "store", "--rejects", rejects, "--batch-size", batch_size)
    code, out, err = invoke(*args, "--workers", 0, "-q")
    assert code == EXIT_REJECTS, out + err
    assert "ingested 1, skipped 1 (already stored), rejected 1 (1 id collisions)" in out
    (report,) = tmp_path.glob("rejects-*.csv")  # each run names its own report
    with report.open() as handle:
        (row,) = csv.DictReader(handle)
    assert row["path"] == "c/georgia/E00001" and row["reason"].startswith("id collision")
    for s in _open(tmp_path / "store"):
        assert s.count() == 1 and s.get("georgia:E00001")[0].source_path == "a/georgia/E00001"


def test_copies_across_datasets_are_marked_duplicate_of(
    tmp_path: Path, ptbxl_dir: Path, data_dir: Path
) -> None:
    """The Challenge's copies of PTB-XL ECGs (read at the same rate) point at their originals."""
    store = tmp_path / "store"
    code, _, _ = invoke(ptbxl_dir, "--store", store, "--limit", 10, "--prefer-hr", "--workers", 0, "-q")
    assert code == EXIT_OK
    code, out, err = invoke(data_dir / "challenge" / "ptb_xl", "--store", store, "--workers", 0, "-q")
    assert code == EXIT_OK, out + err
    assert "10 marked duplicate_of a stored ECG" in out
    for s in _open(store):
        for n in range(1, 11):
            copy, _ = s.get(f"ptb_xl:HR{n:05d}")
            assert copy.duplicate_of == f"ptbxl:{n}" and copy.dataset == "ptb_xl"
        assert s.get("ptb_xl:HR00599")[0].duplicate_of is None  # its original is not in this store
        assert s.get("ptbxl:1")[0].duplicate_of is None
        # Different ECGs of one patient are no copies of each other.
        assert s.count() == 10 + len(list(enumerate_source(data_dir / "challenge" / "ptb_xl")))
    code, out, _ = invoke(ptbxl_dir, "--store", store, "--limit", 40, "--prefer-hr", "--workers", 0, "-q")
    assert code == EXIT_OK and "0 marked duplicate_of" in out  # patient 13619's eight ECGs among them
    for s in _open(store):
        assert s.count(SearchFilter(datasets=["ptbxl"])) == 40


def test_kill_9_during_start_up_leaves_no_process(tmp_path: Path, ptbxl_dir: Path) -> None:
    """Finding 6: kill -9 as soon as the ingest has started its workers, while they are still starting
    up: every worker (and the resource tracker) must end by itself."""
    script = APP_SOURCE + "app()\n"
    args = [sys.executable, "-c", script, "ingest", str(ptbxl_dir), "--store", str(tmp_path / "store")]
    args += ["--workers", "2", "--batch-size", "8", "--no-optimize", "-q"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        children: list[int] = []
        deadline = time.monotonic() + 120
        while len(children) < 2 and proc.poll() is None and time.monotonic() < deadline:
            children = [p for p in _session_processes(proc.pid) if p != proc.pid]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert len(children) >= 2, "the ingest ended before starting its workers"
        deadline = time.monotonic() + 120  # generous: a worker may be mid-import when its parent dies
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _session_processes(proc.pid) == [], "processes outlived the killed ingest"
    finally:
        for pid in _session_processes(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_lock_error_names_serve_or_ingest(tmp_path: Path, ptbxl_dir: Path) -> None:
    store = tmp_path / "store"
    assert invoke(ptbxl_dir, "--store", store, "--limit", 2, "--workers", 0, "-q")[0] == EXIT_OK
    for _ in _open(store):  # this process holds the store, as a running serve or ingest would
        code, _, err = invoke(ptbxl_dir, "--store", store, "--limit", 2, "--workers", 0, "-q")
    assert code == EXIT_FAILED and "another ecgsearch process (serve or ingest)" in err


def test_site_secret_file_keys_pseudonyms_across_stores(tmp_path: Path, ptbxl_dir: Path) -> None:
    secret = tmp_path / "site-secret"
    secret.write_text("an operator's secret, shared by every ingest of the site\n")
    for name in ("one", "two", "own"):
        given = () if name == "own" else ("--site-secret-file", secret)
        code, _, _ = invoke(ptbxl_dir, "--store", tmp_path / name, "--limit", 2, "--workers", 0, "-q", *given)
        assert code == EXIT_OK
    ids = {}
    for name in ("one", "two", "own"):
        for s in _open(tmp_path / name):
            ids[name] = s.get("ptbxl:1")[0].patient_id
    assert ids["one"] == ids["two"] == Pseudonymizer(read_secret(secret)).patient("ptbxl", "15709")
    assert ids["own"] != ids["one"]  # the default secret beside that store is another key
    assert not (tmp_path / "one" / "site-secret").exists()


def test_a_qdrant_server_needs_the_site_secret(tmp_path: Path, ptbxl_dir: Path) -> None:
    code, _, err = invoke(ptbxl_dir, "--qdrant-url", "http://127.0.0.1:9", "--limit", 1, "-q")
    assert code == EXIT_FAILED and "--site-secret-file" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("local", [False, True], ids=["edge", "server-local"])
def test_rerun_and_collision_on_both_backends(tmp_path: Path, data_dir: Path, local: bool) -> None:
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.ingest.pipeline import ingest

    _link(data_dir / "challenge/georgia/E00001", tmp_path / "site-a" / "georgia")
    _impostor(data_dir, tmp_path / "site-b" / "georgia")
    original, impostor = (next(iter(enumerate_source(tmp_path / s))) for s in ("site-a", "site-b"))
    store = open_store(path=None if local else tmp_path / "store", local=local, collection="ecgs")
    embedder, keys = Embedder(threads=1), Pseudonymizer(b"k" * 32)
    try:
        run = lambda c: ingest([c], store, embedder, workers=0, pseudonyms=keys, optimize=False)  # noqa: E731
        assert run(original).ingested == 1
        again = run(original)
        assert (again.ingested, again.skipped, again.rejected) == (0, 1, 0)
        clash = run(impostor)
        assert (clash.ingested, clash.skipped, clash.rejected, clash.collisions) == (0, 0, 1, 1)
        assert store.content_hashes(["georgia:E00001", "georgia:E09999"]) == {
            "georgia:E00001": hash_of(read(original))
        }
        assert store.get("georgia:E00001")[0].patient_id == keys.lone_ecg("georgia:E00001")
    finally:
        store.close()


def test_ingest_runs_numpy_on_one_blas_thread_unless_told_otherwise() -> None:
    """What `ecgsearch ingest` does first, in a fresh process (and so in its spawned workers): numpy's
    BLAS on one thread; a value the caller set is kept."""
    pytest.importorskip("threadpoolctl")
    code = (
        "from ecgsearch.ingest.threads import one_blas_thread; one_blas_thread(); "
        "import numpy, threadpoolctl; "
        "print(max(p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "1"
    if (os.cpu_count() or 1) >= 2:
        chosen = {**env, "OPENBLAS_NUM_THREADS": "2"}
        run = subprocess.run(
            [sys.executable, "-c", code], env=chosen, capture_output=True, text=True, check=True
        )
        assert run.stdout.strip() == "2"
