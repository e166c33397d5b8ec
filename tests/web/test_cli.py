"""``ecgsearch web`` refuses unsafe or broken settings in one line, before serving anything."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ecgsearch.search.serving.loopback import is_loopback
from ecgsearch.web.cli import register


def _invoke(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    register(app, typer.Typer(), typer.Typer())
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, ["web", *args])
    return result.exit_code, result.output + (result.stderr or "")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True)]
    + [("LocalHost", True), ("ip6-localhost", True), ("0.0.0.0", False), ("10.0.0.5", False)]
    + [("::", False), ("example.org", False), ("localhost.example.org", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_host_needs_allow_remote() -> None:
    code, out = _invoke("--host", "0.0.0.0")
    assert code == 2 and "not a loopback address" in out and "--allow-remote" in out


def test_token_file_must_hold_a_token(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n\n")
    code, out = _invoke("--token-file", str(empty))
    assert code == 2 and "holds no token" in out
    code, out = _invoke("--token-file", str(tmp_path / "missing"))
    assert code == 2 and "cannot read (FileNotFoundError)" in out


def test_busy_port_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, out = _invoke("--port", str(busy.getsockname()[1]))
    assert code == 1 and "cannot listen on 127.0.0.1" in out
