"""What the documents promise is exercised: their links resolve, the Quickstart runs exactly as written."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from ecgsearch.bench.service import wait_serving

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, re.M)}


def section(path: Path, heading: str) -> str:
    """The first fenced block under ``## heading``."""
    text = path.read_text()
    start = text.index(f"## {heading}\n")
    return _FENCE.search(text, start).group(1)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_resolve(document: Path) -> None:
    text = _FENCE.sub("", document.read_text())
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # an address outside the repository
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        assert path.exists(), f"{document.name} links to missing {path_part}"
        if anchor:
            assert anchor in anchors(path), f"{document.name} links to {target}: no such heading"


def test_changelog_has_a_section_for_the_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert re.search(rf"^## {re.escape(version)}\b", (REPO / "CHANGELOG.md").read_text(), re.M)


def _wait_for_port(port: int, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the Quickstart's server exited with {server.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"the Quickstart's server did not listen on {port} within {seconds} s")


@pytest.mark.slow
def test_quickstart_and_grpcurl_example_run_as_written(tmp_path: Path, data_dir: Path) -> None:
    """Every Quickstart line, in order, from the repository root (where ../shared/data is), then the
    grpcurl example of docs/deploy.md against the same server; each must exit 0."""
    if data_dir.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip("the Quickstart reads ../shared/data beside the checkout")
    env = {**os.environ, "ECGSEARCH_HOME": str(tmp_path / "home"), "PATH": f"{Path(sys.executable).parent}:"}
    env["PATH"] += os.environ["PATH"]
    lines = [
        line
        for line in section(REPO / "README.md", "Quickstart").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    grpcurl = section(REPO / "docs" / "deploy.md", "grpcurl").replace("\\\n", " ")
    server = None
    try:
        for line in lines:
            if line.rstrip().endswith("&"):
                command = line.rstrip()[:-1]
                server = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=env, start_new_session=True)
                _wait_for_port(50051, server)
                # Listening is not ready: the store and model open after the port (calls meanwhile get
                # UNAVAILABLE "starting"); health says SERVING once both are open, as a script should wait.
                wait_serving("127.0.0.1:50051", server)
                continue
            done = subprocess.run(["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{line}\n-> exit {done.returncode}\n{done.stderr[-3000:]}"
        assert server is not None, "the Quickstart starts no server"
        for command in (c for c in grpcurl.splitlines() if c.strip() and not c.startswith("#")):
            done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{command}\n-> exit {done.returncode}\n{done.stderr[-3000:]}"
            assert '"hits"' in done.stdout, shlex.quote(done.stdout[:500])
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def test_screenshot_captions_name_the_model_that_made_it() -> None:
    """docs/images/viewer.png is written with results/web_render.json (tests/web/test_browser.py, with
    ECGSEARCH_WEB_ARTIFACTS set); every caption names that file's model, so a new model means a new shot."""
    import json

    model = json.loads((REPO / "results" / "web_render.json").read_text())["model"]
    for document in (REPO / "README.md", REPO / "docs" / "viewer.md"):
        captions = re.findall(r"!\[([^\]]*)\]\([^)]*viewer\.png\)", document.read_text())
        assert captions and all(f"model {model}" in c for c in captions), document.name
