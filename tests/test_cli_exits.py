"""One CLI grammar: every command exits by one table (ecgsearch.cli.exits), takes its token from a file or
the environment, and prints one JSON document with --json. Walked with a real store made by `ingest`, a
real gRPC server over it with named callers, and a port where nothing listens."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from ecgsearch.cli import exits
from ecgsearch.cli.main import app

REPO = Path(__file__).resolve().parents[1]
TOKENS = {"reader": "tok-reader", "writer": "tok-writer", "ops": "tok-ops"}
SCOPES = {"reader": "search", "writer": "search,write", "ops": "search,admin"}
RECORD = "grammar:00001_lr"  # a record of the small source below, stored by the fixture


def invoke(*args: object, token: str | None = None) -> tuple[int, str, str]:
    """Run the real CLI in-process; the token, when given, comes from the environment as documented."""
    env = {"ECGSEARCH_TOKEN": token} if token is not None else {}
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is never an answer
    return result.exit_code, result.stdout, " ".join(result.stderr.replace("│", " ").split())


@pytest.fixture(scope="module")
def source(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two PTB-XL WFDB records and one broken header: a run over it stores two and rejects one."""
    folder = tmp_path_factory.mktemp("source")
    for name in ("00001_lr", "00002_lr"):
        for part in (data_dir / "ptb-xl" / "records100" / "00000").glob(f"{name}.*"):
            shutil.copy(part, folder / part.name)
    (folder / "broken.hea").write_text("broken 12 100 1000\ngarbage\n")
    return folder


@pytest.fixture(scope="module")
def store(source: Path, ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """12 PTB-XL records (with diagnoses), then the small source with --json: (store, its JSON document)."""
    path = tmp_path_factory.mktemp("grammar") / "store"
    code, out, err = invoke("ingest", ptbxl_dir, "--store", path, "--limit", 12, "--workers", 0, "-q")
    assert code == exits.OK, err
    code, out, err = invoke(
        "ingest", source, "--store", path, "--dataset", "grammar", "--workers", 0, "-q", "--json"
    )
    assert code == exits.REJECTS, err
    return path, json.loads(out)  # the whole of stdout is one document


@pytest.fixture(scope="module")
def served(store: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real gRPC server over the store; callers reader (search), writer (+write), ops (+admin)."""
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.store import open_store
    from ecgsearch.search.serving.server import run_server

    callers = tmp_path_factory.mktemp("callers") / "tokens"
    callers.write_text(
        "".join(
            f"{name} {SCOPES[name]} * sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"
            for name, token in TOKENS.items()
        )
    )
    opened = open_store(path=store[0], collection="ecgs")
    try:
        with run_server(store=opened, embedder=Embedder(threads=1), port=0, tokens_file=callers) as (_, port):
            yield f"127.0.0.1:{port}"
    finally:
        opened.close()


@pytest.fixture(scope="module")
def nowhere() -> str:
    """host:port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def service_commands(target: str, source: Path) -> dict[str, list[object]]:
    """Every command that calls the service, pointed at ``target``."""
    return {
        "query": ["query", "--target", target, "--record-id", RECORD, "--timeout", 5],
        "stats": ["stats", "--target", target, "--timeout", 5],
        "collection info": ["collection", "info", "--target", target],
        "collection get": ["collection", "get", RECORD, "--target", target],
        "snapshot list": ["snapshot", "list", "--target", target],
        "snapshot create": ["snapshot", "create", "--target", target],
        "ingest --service": ["ingest", source, "--service", target, "--dataset", "grammar", "-q"],
    }


def _leaf_commands() -> list[list[str]]:
    group = typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        found += [[name, sub] for sub in subcommands] if subcommands else [[name]]
    return found


def test_the_table_is_declared_once_and_documented() -> None:
    codes = [code for code, _ in exits.TABLE]
    assert codes == sorted(set(codes)) == list(range(7))
    assert exits.markdown() in (REPO / "docs" / "commands.md").read_text()
    assert set(exits.STATUS.values()) <= set(codes)
    assert exits.for_status("INTERNAL") == exits.FAILED
    from ecgsearch.search import client  # the table is the commands': the client keeps no copy of it

    assert not hasattr(client, "EXIT_CODES")


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_bad_usage_exits_2_everywhere(path: list[str]) -> None:
    code, _, err = invoke(*path, "--no-such-option")
    assert code == exits.USAGE and "no-such-option" in err


def test_bad_usage_of_each_kind_exits_2(tmp_path: Path, source: Path) -> None:
    cases = [
        ["query", "--k", 5],  # neither a record nor a file
        ["ingest", tmp_path / "nowhere"],
        ["prepare", tmp_path / "nowhere", "--out", tmp_path / "archive"],
        ["stats", "--timeout", 0],
        ["snapshot", "create", "--store", tmp_path, "--qdrant-url", "http://x:6333"],
        ["web", "--token-file", tmp_path / "no-token-file"],
    ]
    for args in cases:
        code, _, err = invoke(*args)
        assert code == exits.USAGE and "Traceback" not in err, (args, code, err)


def test_an_unreadable_token_file_is_bad_usage(nowhere: str, source: Path, tmp_path: Path) -> None:
    for name, args in service_commands(nowhere, source).items():
        code, _, err = invoke(*args, "--token-file", tmp_path / "missing")
        assert code == exits.USAGE and "--token-file" in err, (name, code, err)


def test_an_unreachable_service_exits_6(nowhere: str, source: Path) -> None:
    for name, args in service_commands(nowhere, source).items():
        code, out, err = invoke(*args, token=TOKENS["ops"])
        assert code == exits.UNAVAILABLE and "UNAVAILABLE" in err and not out, (name, code, err)


def test_a_wrong_token_exits_4(served: str, source: Path) -> None:
    for name, args in service_commands(served, source).items():
        code, out, err = invoke(*args, token="not-a-token")
        assert code == exits.DENIED and "UNAUTHENTICATED" in err and not out, (name, code, err)
        code, out, err = invoke(*args)  # no token at all
        assert code == exits.DENIED and "UNAUTHENTICATED" in err, (name, code, err)


def test_a_caller_without_the_scope_exits_4(served: str, source: Path) -> None:
    commands = service_commands(served, source)
    for name in ("snapshot create", "snapshot list", "ingest --service"):  # admin, admin, write
        code, _, err = invoke(*commands[name], token=TOKENS["reader"])
        assert code == exits.DENIED and "PERMISSION_DENIED" in err, (name, code, err)


def test_an_unknown_record_exits_5(served: str) -> None:
    code, _, err = invoke("query", "--target", served, "--record-id", "grammar:nope", token=TOKENS["reader"])
    assert code == exits.NOT_FOUND and "NOT_FOUND" in err
    code, _, err = invoke("collection", "get", "grammar:nope", "--target", served, token=TOKENS["reader"])
    assert code == exits.NOT_FOUND and "grammar:nope" in err


def test_tokens_come_from_a_file_or_the_environment_never_argv(served: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"\n{TOKENS['reader']}\n")
    args = ["query", "--target", served, "--record-id", RECORD, "--k", 2, "--json"]
    by_file, by_env = invoke(*args, "--token-file", token_file), invoke(*args, token=TOKENS["reader"])
    assert by_file[0] == by_env[0] == exits.OK and json.loads(by_file[1]) == json.loads(by_env[1])
    code, _, err = invoke(*args, "--token", TOKENS["reader"])
    assert code == exits.USAGE and "No such option: --token" in err
    for name in ("query", "stats", "ingest", "web", "collection info", "snapshot create"):
        code, help_text, _ = invoke(*name.split(), "--help")
        assert "--token-file" in help_text and "ECGSEARCH_TOKEN" in help_text, name
        assert "--token " not in help_text, name  # the argv flag is not offered
    code, help_text, _ = invoke("serve", "--help")  # the service's plain tokens: documented, env only
    words = " ".join(help_text.split())
    assert code == exits.OK and "ECGSEARCH_TOKENS (comma-separated plain tokens" in words


def test_ingest_json_is_one_document(store: tuple[Path, dict]) -> None:
    path, document = store
    assert document["collection"] == "ecgs" and document["service"] is None
    assert (document["stored"], document["skipped"], document["rejected"]) == (2, 0, 1)
    assert document["ok"] is False and document["rejects"][0]["record"] == "grammar:broken"
    report = Path(document["rejects_report"])
    assert report.parent == path and "grammar:broken" in report.read_text()
    assert document["elapsed_s"] >= 0 and document["model_version"]


def test_ingest_json_through_the_service(served: str, source: Path, tmp_path: Path) -> None:
    args = ["ingest", source, "--service", served, "--dataset", "grammar", "-q", "--json"]
    code, out, err = invoke(*args, "--rejects", tmp_path / "rejects.csv", token=TOKENS["writer"])
    assert code == exits.REJECTS, err
    document = json.loads(out)
    assert document["service"] == served and document["collection"] == "ecgs"
    assert document["stored"] + document["skipped"] == 2 and document["rejected"] == 1
    assert Path(document["rejects_report"]).parent == tmp_path


def test_prepare_json_is_one_document(source: Path, tmp_path: Path) -> None:
    code, out, err = invoke("prepare", source, "--out", tmp_path / "archive", "--workers", 0, "--json")
    assert code == exits.REJECTS, err
    document = json.loads(out)
    assert (document["rows"], document["rejected"], document["ok"]) == (2, 1, False)


def test_summary_table_shows_the_evidence_rule_with_whole_headers(served: str) -> None:
    from ecgsearch.search.summary import evidence

    args = ["query", "--target", served, "--record-id", "ptbxl:1", "--k", 8, "--summary"]
    code, out, err = invoke(*args, "--json", token=TOKENS["reader"])
    assert code == exits.OK, err
    summary = json.loads(out)["summary"]
    code, table, err = invoke(*args, token=TOKENS["reader"])
    assert code == exits.OK, err
    for header in ("code", "description", "count", "base rate", "ratio (95%)", "in query"):
        assert header in table, header
    assert "…" not in table.split("Diagnoses among")[1].splitlines()[2]  # the header row is whole
    rows = summary["diagnoses"]
    assert rows
    marked = 0
    for row in rows:
        e = evidence(SimpleNamespace(**row), summary["n_neighbours"])
        assert f"{e.count}/{e.n}" in table and f"({e.low:.1f}–{e.high:.1f})" in table
        marked += e.highlighted
    body = table.split("Diagnoses among")[1].split("A ratio is highlighted")[0]
    assert body.count(" *") == marked, table


def test_flags_are_shown_as_flags() -> None:
    """An on/off flag shows no value type in rich help (typer's own rendering gives it ``<bool>``)."""
    for path in _leaf_commands():
        code, help_text, _ = invoke(*path, "--help")
        assert code == exits.OK and "<bool>" not in help_text, path
    assert "<int range>" in invoke("ingest", "--help")[1]  # options that take a value keep their type
