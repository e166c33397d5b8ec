"""A real search service and a real viewer, each in its own process on a loopback port.

The store holds the first PTB-XL records embedded with the bundled model; ``ecgsearch serve`` reads
their signals from the shared data folder (GetEcg), and the viewer talks to it with its own token.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.bench.service import wait_serving
from ecgsearch.ecg import views
from ecgsearch.ecg.schema import EcgPayload, SearchFilter
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest import sources
from ecgsearch.search.engine.store import EdgeStore, view_specs

N_RECORDS = 60
TOKEN = "viewer-secret"
START_TIMEOUT_S = 60.0

# The web command alone, mounted the way the root app mounts each part.
WEB_APP = """
import typer
from ecgsearch.web.cli import register
app, bench, evaluate = typer.Typer(), typer.Typer(), typer.Typer()
register(app, bench, evaluate)
app.callback()(lambda: None)
app()
"""


@dataclass(frozen=True)
class Service:
    target: str
    payloads: list[EcgPayload]
    token_file: Path


@dataclass(frozen=True)
class Viewer:
    url: str
    process: subprocess.Popen[str]

    def close(self) -> None:
        stop(self.process)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGSEARCH_")}
    env["ECGSEARCH_HOME"] = str(home)
    env["OMP_NUM_THREADS"] = "1"
    return env


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_viewer(target: str, home: Path, *args: str) -> Viewer:
    """``web --port 0``; the bound URL is read from its first stderr line."""
    command = [sys.executable, "-c", WEB_APP, "web", "--target", target, "--port", "0", *args]
    process = subprocess.Popen(command, env=clean_env(home), stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    line = process.stderr.readline()
    found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not found:
        stop(process)
        pytest.fail(f"the viewer did not start: {line}{process.stderr.read()}")
    return Viewer(found.group(1), process)


def start_service(
    root: Path, ptbxl_dir: Path, n_records: int, *, ecg_roots: bool = True, hospital: Path | None = None
) -> Iterator[Service]:
    """``ecgsearch serve`` over the first ``n_records`` PTB-XL ECGs, with a token; with ``ecg_roots`` it
    reads their signals from the shared data folder (GetEcg). ``hospital``: a folder of hospital
    exports added with ``ecgsearch ingest`` (their payloads carry the machine's measurements; their
    signals are archived beside the store)."""
    embedder = Embedder()
    candidates = list(sources.select(sources.enumerate_source(ptbxl_dir), limit=n_records))
    records = [sources.load(c) for c in candidates]
    store = EdgeStore(root / "store", "ecgs")
    try:
        store.create_collection(
            dim=embedder.dim,
            model_version=embedder.version,
            views=view_specs(**views.collection_layout(embedder)),
        )
        served, named = views.embed_views(embedder, np.stack([r.signal for r in records]))
        store.upsert(named.flagged([r.payload for r in records]), served, named.rows())
        store.optimize()
    finally:
        store.close()
    payloads = [r.payload for r in records]
    if hospital is not None:
        payloads += _ingest(root, hospital)
    tokens = root / "tokens"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(f"viewer search * sha256:{digest}\n")
    token_file = root / "viewer.token"
    token_file.write_text(f"{TOKEN}\n")
    port = free_port()
    command = [sys.executable, "-m", "ecgsearch.cli.main", "serve", "--store", str(root / "store")]
    command += ["--port", str(port), "--tokens-file", str(tokens)]
    command += ["--ecg-roots", str(ptbxl_dir)] if ecg_roots else []
    log = (root / "serve.log").open("w")
    process = subprocess.Popen(command, env=clean_env(root), stderr=log, stdout=log, text=True)
    target = f"127.0.0.1:{port}"
    try:
        _wait_serving(target, process, root / "serve.log")
        yield Service(target, payloads, token_file)
    finally:
        stop(process)
        log.close()


def _ingest(root: Path, folder: Path) -> list[EcgPayload]:
    """``ecgsearch ingest FOLDER`` into the fixture's store; the payloads it stored."""
    command = [
        sys.executable,
        "-m",
        "ecgsearch.cli.main",
        "ingest",
        str(folder),
        "--store",
        str(root / "store"),
    ]
    done = subprocess.run(command + ["-q"], env=clean_env(root), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    store = EdgeStore(root / "store", "ecgs")
    try:
        info = store.info()
        hits = store.search(
            np.ones(info.dim, np.float32),
            k=info.count,
            exact=True,
            filter=SearchFilter(datasets=[folder.name]),
        )
    finally:
        store.close()
    return [h.payload for h in hits]


@pytest.fixture(scope="session")
def service(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from start_service(tmp_path_factory.mktemp("web-service"), data_dir / "ptb-xl", N_RECORDS)


def _wait_serving(target: str, process: subprocess.Popen[str], log: Path) -> None:
    try:
        wait_serving(target, process, START_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"ecgsearch serve: {exc}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def launch_viewer() -> Callable[..., Viewer]:
    """``launch_viewer(target, home, *args)``: another viewer process (close it with ``.close()``)."""
    return start_viewer


@pytest.fixture(scope="session")
def launch_service() -> Callable[..., Iterator[Service]]:
    """``launch_service(root, ptbxl_dir, n, ecg_roots=...)``: a generator holding one more service."""
    return start_service


@pytest.fixture
def dead_target() -> str:
    """A loopback address where nothing listens."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def viewer(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    started = start_viewer(
        service.target, tmp_path_factory.mktemp("web-viewer"), "--token-file", str(service.token_file)
    )
    yield started
    stop(started.process)
