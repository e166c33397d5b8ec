"""What crosses the wire lives in ``search/api.py``: the client loads it and nothing heavy, and no module a
client or the viewer runs imports the server's domain module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Libraries only the server or training need; a client that loads one of them pays seconds and megabytes.
SERVER_ONLY = ("onnxruntime", "qdrant_client", "qdrant_edge", "scipy", "wfdb", "torch")
SERVICE = "ecgsearch.search.serving.service"


def _loaded_after(statement: str) -> list[str]:
    """sys.modules of a fresh interpreter after ``statement``."""
    code = f"{statement}; import json, sys; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.splitlines()[-1])


def test_client_loads_no_server_library() -> None:
    loaded = _loaded_after("import ecgsearch.search.client")
    heavy = sorted(m for m in loaded if m.split(".")[0] in SERVER_ONLY)
    assert not heavy, f"importing the client loads {heavy}"
    ours = {m for m in loaded if m.startswith("ecgsearch.")}
    assert SERVICE not in ours
    # Nor any signal, reader or model code: the server prepares what the client sends.
    signal_code = (
        "ecgsearch.encoder.",
        "ecgsearch.ecg.readers",
        "ecgsearch.ecg.signals",
        "ecgsearch.ecg.dsp",
    )
    assert not {m for m in ours if m.startswith(signal_code)}, sorted(ours)
    assert "ecgsearch.search.api" in ours  # the one module of request and result types


def _imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_clients_never_import_the_service_module() -> None:
    """The client, the wire conversions, the viewer and remote ingest take the wire's types from api.py."""
    paths = [REPO / "search/client.py", REPO / "search/wire.py", REPO / "ingest/remote.py"]
    paths += sorted((REPO / "web").rglob("*.py"))
    for path in paths:
        assert SERVICE not in _imports_of(path), f"{path.relative_to(REPO)} imports {SERVICE}"


def test_server_takes_only_the_service_itself_from_service_py() -> None:
    """The server builds a SearchService; every type it exchanges with callers comes from api.py."""
    for rel in ("search/serving/server.py", "search/serving/door.py", "search/serving/cost.py"):
        prefix = SERVICE + "."
        names = {m.removeprefix(prefix) for m in _imports_of(REPO / rel) if m.startswith(prefix)}
        assert names <= {"SearchService"}, f"{rel} imports {sorted(names)} from {SERVICE}"


def test_api_types_are_defined_once() -> None:
    """service.py, push.py and snapshots.py use api.py's classes, not copies of them."""
    import ecgsearch.search.api as api
    import ecgsearch.search.engine.snapshots as snapshots
    import ecgsearch.search.serving.push as push
    import ecgsearch.search.serving.service as service

    for module in (service, push, snapshots):
        tree = ast.parse(Path(module.__file__).read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
        twice = sorted(defined & set(api.__all__))
        assert not twice, f"{module.__name__} defines {twice}"
