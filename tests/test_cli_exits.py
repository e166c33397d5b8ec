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


# --- every command through the same failure classes ------------------------------------------------

SERVERS = {("serve",), ("web",)}  # they run until stopped: nothing to report, no --json
# Heavy to reach (torch, a store built, an evaluation run) before the failure: the second tier.
HEAVY = {"train", "export", "bench recall", "eval retrieval", "eval training"}


def _failure_cases(root: Path, ptbxl: Path) -> list[tuple[str, str, list[object], int]]:
    """(class, command, args, documented code). A file that is not what its option names: 2 where it is the
    run's input or settings (a source, a config; refused before any work), 1 where it is a model,
    checkpoint, archive or results file found unreadable when loaded. A store named to read that does not
    exist: 2 (serve and bench service, which start a server, report it as an environment problem: 1). An
    output that cannot be written (a path under a regular file: unwritable even to root): 1. Every one in
    one line on stderr, no traceback."""
    bad, config = root / "bad.bin", root / "bad.yaml"  # written by the test
    missing, blocked = root / "no-store", bad / "out"
    tiny = REPO / "configs" / "tiny.yaml"
    bad_file = {
        "ingest": (["ingest", bad, "--store", root / "s1", "-q"], exits.USAGE),
        "prepare": (["prepare", bad, "--out", root / "a1"], exits.USAGE),
        "embed": (["embed", bad], exits.USAGE),
        "bench ingest": (["bench", "ingest", bad, "--out", root / "i.json"], exits.USAGE),
        "train": (["train", "--config", config, "--out", root / "run"], exits.USAGE),
        "eval crossfit": (["eval", "crossfit", "--config", config, "--out", root / "c.json"], exits.USAGE),
        "bench train-scale": (["bench", "train-scale", bad, "--out", root / "t.json"], exits.FAILED),
        "export": (["export", "--checkpoint", bad, "--out", root / "m.onnx"], exits.FAILED),
        "eval training": (["eval", "training", "--checkpoint", bad, "--out", root / "t.json"], exits.FAILED),
        "bench encoder": (["bench", "encoder", "--model", bad, "--out", root / "e.json"], exits.FAILED),
        "bench recall": (["bench", "recall", "--merge", bad, "--out", root / "r.json"], exits.FAILED),
        "bench synthetic-archive": (["bench", "synthetic-archive", bad, "--out", root / "syn"], exits.FAILED),
        "snapshot restore": (["snapshot", "restore", bad, "--store", root / "s2"], exits.FAILED),
    }
    missing_store = {
        "collection info": (["collection", "info", "--store", missing], exits.USAGE),
        "collection get": (["collection", "get", RECORD, "--store", missing], exits.USAGE),
        "collection alias": (["collection", "alias", "x", "ecgs", "--store", missing], exits.USAGE),
        "snapshot create": (["snapshot", "create", "--store", missing], exits.USAGE),
        "snapshot list": (["snapshot", "list", "--store", missing], exits.USAGE),
        "serve": (["serve", "--store", missing, "--insecure"], exits.FAILED),
    }
    unwritable = {
        "prepare": (["prepare", ptbxl, "--limit", 2, "--out", blocked], exits.FAILED),
        "ingest": (["ingest", ptbxl, "--limit", 2, "--store", blocked, "-q"], exits.FAILED),
        "proto": (["proto", "--out", blocked], exits.FAILED),
        "bench encoder": (
            ["bench", "encoder", "--seconds", 0.01, "--batch-sizes", 1, "--out", blocked / "e.json"],
            exits.FAILED,
        ),
        "snapshot restore": (["snapshot", "restore", bad, "--store", blocked], exits.FAILED),
        "bench recall": (
            ["bench", "recall", "--sizes", 1000, "--queries", 10, "--engines", "edge", "--edge-ef", 64]
            + ["--out", blocked / "r.json"],
            exits.FAILED,
        ),
        "eval retrieval": (["eval", "retrieval", "--limit", 20, "--out", blocked / "r.json"], exits.FAILED),
        "export": (["export", "--random", "--config", tiny, "--out", blocked / "m.onnx"], exits.FAILED),
        "train": (["train", "--config", tiny, "--epochs", 1, "--out", blocked], exits.FAILED),
    }
    return [
        (kind, name, args, code)
        for kind, table in (
            ("bad input file", bad_file),
            ("missing store", missing_store),
            ("unwritable", unwritable),
        )
        for name, (args, code) in table.items()
    ]


CLASSES = [(kind, name) for kind, name, _, _ in _failure_cases(Path("/nonexistent"), Path("/nonexistent"))]


@pytest.mark.parametrize(
    ("kind", "name"),
    [pytest.param(k, n, marks=[pytest.mark.slow] if n in HEAVY else []) for k, n in CLASSES],
    ids=[f"{k}: {n}" for k, n in CLASSES],
)
def test_every_command_exits_by_the_table_in_each_failure_class(
    kind: str, name: str, tmp_path: Path, ptbxl_dir: Path
) -> None:
    (tmp_path / "bad.bin").write_bytes(b"garbage\x00\x01")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    cases = _failure_cases(tmp_path, ptbxl_dir)
    args, code = next((a, c) for k, n, a, c in cases if (k, n) == (kind, name))
    got, out, err = invoke(*args)  # an exception other than SystemExit is raised here: never an answer
    assert got == code, (kind, name, got, err)
    assert "Traceback" not in err and ("error:" in err or "Usage:" in err), err
    assert kind != "unwritable" or not any(p.is_file() for p in tmp_path.rglob("*.json")), (
        "no partial results"
    )


def test_every_command_that_reports_takes_json() -> None:
    """One grammar: every command but the two servers prints one JSON document with --json."""
    for path in _leaf_commands():
        _, help_text, _ = invoke(*path, "--help")
        assert ("--json" in help_text) == (tuple(path) not in SERVERS), path


def test_every_environment_variable_a_command_reads_is_named_in_its_help() -> None:
    """The variables its options read, those its own code names, and (serve) every ServiceSettings field."""
    import inspect
    import re

    from ecgsearch.search.serving.settings import ServiceSettings

    group = typer.main.get_command(app)
    for path in _leaf_commands():
        command = group
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        read = {
            e for p in command.params for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])
        }
        read |= set(re.findall(r"ECGSEARCH_[A-Z0-9_]+", inspect.getsource(inspect.unwrap(command.callback))))
        if path == ["serve"]:
            read |= {f"ECGSEARCH_{field.upper()}" for field in ServiceSettings.model_fields}
        if "ECGSEARCH_STORE_PATH" in read:  # without it, the store is $ECGSEARCH_HOME/store
            read.add("ECGSEARCH_HOME")
        help_text = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250"}).stdout
        assert not {e for e in read if e not in help_text}, (
            path,
            sorted(e for e in read if e not in help_text),
        )


def test_json_is_one_document_and_text_otherwise(tmp_path: Path) -> None:
    """A benchmark's --json is its results file as written, with the file's path; without, human lines."""
    args = ["bench", "encoder", "--seconds", 0.01, "--batch-sizes", 1, "--threads", 1]
    code, out, err = invoke(*args, "--out", tmp_path / "e.json", "--json")
    assert code == exits.OK, err
    document = json.loads(out)
    assert document["out"] == str(tmp_path / "e.json") and document["plot"] is None
    assert document["results"] == json.loads((tmp_path / "e.json").read_text())
    code, text, err = invoke(*args, "--out", tmp_path / "e2.json")
    assert code == exits.OK and "ECGs/s" in text and not text.lstrip().startswith("{")
    code, out, err = invoke("proto", "--out", tmp_path / "contracts", "--json")
    assert code == exits.OK and Path(json.loads(out)["out"]).is_file()


def test_a_file_the_service_cannot_read_is_bad_usage(served: str, tmp_path: Path) -> None:
    """query --file sends the file to the service (SearchByFile): INVALID_ARGUMENT, exit 2, one line."""
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"garbage\x00\x01")
    code, out, err = invoke("query", "--target", served, "--file", bad, token=TOKENS["reader"])
    assert code == exits.USAGE and "INVALID_ARGUMENT" in err and not out, (code, err)
