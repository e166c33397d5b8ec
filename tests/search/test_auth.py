"""Named callers, scopes and sites against a real server on 127.0.0.1 over real PTB-XL records."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from sited import TOKENS, Sited, auth, build, sha, tokens_file

from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.serving import server as server_module
from ecgsearch.search.serving.auth import Caller, CallerRegistry, TokensFileError, digest, parse, plain_tokens
from ecgsearch.search.serving.server import run_server
from ecgsearch.search.serving.settings import ServiceSettings


@pytest.fixture(scope="module")
def sited(ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sited]:
    built = build(ptbxl_dir, tmp_path_factory.mktemp("sited"))
    yield built
    built.store.close()


@pytest.fixture
def served(sited: Sited, tmp_path: Path) -> Iterator[tuple[pb_grpc.EcgSearchServiceStub, Path]]:
    """A server reading the callers file in tmp_path; yields its stub and the file (to rewrite)."""
    path = tokens_file(tmp_path / "tokens")
    with (
        run_server(store=sited.store, embedder=sited.embedder, port=0, tokens_file=path) as (_, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield pb_grpc.EcgSearchServiceStub(channel), path


def _code(call, request, metadata) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=metadata, timeout=30)
    return info.value.code()


def _vector_search(sited: Sited, row: int) -> pb.SearchByVectorRequest:
    return pb.SearchByVectorRequest(
        vector=sited.vectors[row].tolist(), options=pb.SearchOptions(k=len(sited.payloads))
    )


def test_caller_without_the_scope_is_refused(
    served: tuple[pb_grpc.EcgSearchServiceStub, Path], sited: Sited, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, _ = served
    request = _vector_search(sited, 0)
    assert _code(stub.SearchByVector, request, auth("pusher")) == grpc.StatusCode.PERMISSION_DENIED
    assert len(stub.SearchByVector(request, metadata=auth("ingest")).hits) == len(sited.payloads)
    monkeypatch.setattr(server_module, "ADMIN_METHODS", {"ServerStats"})
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert _code(stub.ServerStats, pb.ServerStatsRequest(), auth("ingest")) == denied
    assert stub.ServerStats(pb.ServerStatsRequest(), metadata=auth("ops")).uptime_s > 0
    wrong = (("authorization", "Bearer " + sha(TOKENS["ops"])),)  # the digest itself is no token
    assert _code(stub.CollectionInfo, pb.CollectionInfoRequest(), wrong) == grpc.StatusCode.UNAUTHENTICATED


def test_site_restricted_caller_sees_only_its_site(
    served: tuple[pb_grpc.EcgSearchServiceStub, Path], sited: Sited
) -> None:
    stub, _ = served
    own, other = sited.of_site("site-a"), sited.of_site("site-b")
    assert own and other
    for row in (0, 1):  # a query ECG of either site
        hits = stub.SearchByVector(_vector_search(sited, row), metadata=auth("ward-a")).hits
        assert sorted(h.record_id for h in hits) == sorted(own)
    everyone = stub.SearchByVector(_vector_search(sited, 1), metadata=auth("ops")).hits
    assert sorted(h.record_id for h in everyone) == sorted(own + other)

    by_own = stub.SearchByRecord(
        pb.SearchByRecordRequest(record_id=own[0], options=pb.SearchOptions(k=50), include_same_patient=True),
        metadata=auth("ward-a"),
    )
    assert {h.record_id for h in by_own.hits} == set(own) - {own[0]}
    not_found = grpc.StatusCode.NOT_FOUND
    by_other = pb.SearchByRecordRequest(record_id=other[0])
    assert _code(stub.SearchByRecord, by_other, auth("ward-a")) == not_found
    assert _code(stub.GetRecord, pb.GetRecordRequest(record_id=other[0]), auth("ward-a")) == not_found
    assert _code(stub.GetEcg, pb.GetEcgRequest(record_id=other[0]), auth("ward-a")) == not_found
    batch = pb.BatchSearchRequest(queries=[pb.Query(record_id=own[1]), pb.Query(record_id=other[1])])
    assert _code(stub.BatchSearch, batch, auth("ward-a")) == not_found
    assert stub.GetRecord(pb.GetRecordRequest(record_id=own[0]), metadata=auth("ward-a")).payload.record_id
    assert stub.GetRecord(pb.GetRecordRequest(record_id=other[0]), metadata=auth("ops")).payload.record_id


def test_tokens_file_is_reloaded_when_it_changes(
    served: tuple[pb_grpc.EcgSearchServiceStub, Path], sited: Sited
) -> None:
    stub, path = served
    request = pb.CollectionInfoRequest()
    newcomer = (("authorization", "Bearer tok-new"),)
    assert _code(stub.CollectionInfo, request, newcomer) == grpc.StatusCode.UNAUTHENTICATED
    text = path.read_text()
    path.write_text(text + f"newcomer search * sha256:{sha('tok-new')}\n")
    assert stub.CollectionInfo(request, metadata=newcomer).count == len(sited.payloads)
    path.write_text("".join(line + "\n" for line in text.splitlines() if not line.startswith("ward-a")))
    assert _code(stub.CollectionInfo, request, auth("ward-a")) == grpc.StatusCode.UNAUTHENTICATED
    path.write_text("not a valid line\n")  # a broken file keeps the last valid callers
    assert stub.CollectionInfo(request, metadata=auth("ops")).count == len(sited.payloads)


def test_a_rewrite_with_the_same_size_and_mtime_is_read_again(
    served: tuple[pb_grpc.EcgSearchServiceStub, Path], sited: Sited
) -> None:
    """Revocation by swapping one digest for another: same size, modification time put back."""
    stub, path = served
    request = pb.CollectionInfoRequest()
    own = len(sited.of_site("site-a"))  # a site-a caller's CollectionInfo counts its site
    assert stub.CollectionInfo(request, metadata=auth("ward-a")).count == own
    before = path.stat()
    revoked = path.read_text().replace(sha(TOKENS["ward-a"]), sha("tok-replacement"))
    path.write_text(revoked)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert _code(stub.CollectionInfo, request, auth("ward-a")) == grpc.StatusCode.UNAUTHENTICATED
    replacement = (("authorization", "Bearer tok-replacement"),)
    assert stub.CollectionInfo(request, metadata=replacement).count == own


class _Collected(logging.Handler):
    """The records the callers registry logs (attached to its logger: whatever propagation is set)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.lines.append(record.getMessage())


def test_a_broken_file_while_serving_keeps_the_last_valid_callers(
    served: tuple[pb_grpc.EcgSearchServiceStub, Path], sited: Sited
) -> None:
    """Non-UTF-8 bytes, a ',' sites field, a bare digest: each is logged and none changes who may call."""
    stub, path = served
    valid = path.read_bytes()
    ward_line = f"ward-a  search  site-a  sha256:{sha(TOKENS['ward-a'])}"
    bare = f"sha256:{sha('tok-bare')}"
    breakages = {
        "line 6: not UTF-8": valid + b"late  search  *  sha256:\xff\xfe\n",
        "line 2: sites": valid.replace(ward_line.encode(), ward_line.replace("site-a", ",").encode()),
        "line 6: one field": valid + bare.encode() + b"\n",
    }
    ops, ward = auth("ops"), auth("ward-a")
    own = set(sited.of_site("site-a"))
    logger = logging.getLogger("ecgsearch.auth")
    for reason, content in breakages.items():
        collected = _Collected()
        logger.addHandler(collected)
        try:
            path.write_bytes(content)
            for _ in range(3):  # logged once, not once per call
                assert stub.CollectionInfo(pb.CollectionInfoRequest(), metadata=ops, timeout=30).count
            hits = stub.SearchByVector(_vector_search(sited, 1), metadata=ward, timeout=30).hits
            assert {h.record_id for h in hits} == own, reason  # still site-a only
            for token in ("Bearer tok-bare", "Bearer " + bare):
                refused = _code(stub.CollectionInfo, pb.CollectionInfoRequest(), (("authorization", token),))
                assert refused == grpc.StatusCode.UNAUTHENTICATED
        finally:
            logger.removeHandler(collected)
        assert len(collected.lines) == 1, collected.lines
        assert reason in collected.lines[0] and "last valid callers" in collected.lines[0]
        assert sha("tok-bare") not in collected.lines[0] and "tok-" not in collected.lines[0]
    path.write_bytes(valid + f"newcomer search * sha256:{sha('tok-new')}\n".encode())
    newcomer = (("authorization", "Bearer tok-new"),)
    assert stub.CollectionInfo(pb.CollectionInfoRequest(), metadata=newcomer, timeout=30).count


def test_a_broken_file_at_start_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "callers"
    path.write_bytes(b"# callers\nops search * sha256:" + b"0" * 63 + b"\xff\n")
    with pytest.raises(TokensFileError, match="line 2: not UTF-8"):
        CallerRegistry(path)
    path.write_text(f"# callers\nsha256:{sha('tok-bare')}\n")
    with pytest.raises(TokensFileError, match="line 2: one field") as info:
        CallerRegistry(path)
    assert sha("tok-bare") not in str(info.value)


def test_plain_tokens_are_default_search_callers_outside_the_file() -> None:
    callers = plain_tokens(["secret-one", " ", ""])
    assert callers.by_token("secret-one") == Caller("default", frozenset({"search"}))
    assert callers.by_token("secret-two") is None
    with pytest.raises(TokensFileError, match="line 2: one field"):
        parse(["# plain", "secret-one", ""])


def test_certificate_names_map_to_callers() -> None:
    callers = parse(["gateway search,write site-a,site-b cert:lab-gateway.example"])
    found = callers.by_certificate("lab-gateway.example")
    assert found == Caller("gateway", frozenset({"search", "write"}), frozenset({"site-a", "site-b"}))
    assert callers.by_certificate("someone-else") is None
    assert callers.by_token("lab-gateway.example") is None


ZEROS = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("ops search,root * " + ZEROS, "scopes"),
        ("ops search, * " + ZEROS, "scopes is a comma-separated list without empty items"),
        ("ops , * " + ZEROS, "scopes"),
        ("ops search * sha256:abc", "credential"),
        ("ops search * tok-in-the-clear", "credential"),
        ("ops search", "4 fields"),
        ("ops search bad/site " + ZEROS, "site"),
        ("ops search , " + ZEROS, "sites"),
        ("ops search site-a, " + ZEROS, "sites"),
        ("ops search site-a,,site-b " + ZEROS, "sites"),
        ("ops search *,site-a " + ZEROS, "stands alone"),
        ("o p s search * " + ZEROS, "4 fields"),
        ("tok-in-the-clear", "one field"),
        (ZEROS, "one field"),
        ("0" * 64, "one field"),
    ],
)
def test_bad_lines_are_named_without_their_secret(line: str, named: str) -> None:
    with pytest.raises(TokensFileError, match=named) as info:
        parse(["# header", line], "tokens")
    assert "tokens line 2" in str(info.value)
    assert "tok-in-the-clear" not in str(info.value) and "0" * 64 not in str(info.value)


def test_a_credential_given_twice_is_refused() -> None:
    lines = [
        f"a search site-a sha256:{sha('t')}",
        "b search * cert:gw",
        f"c search * sha256:{sha('t').upper()}",
    ]
    with pytest.raises(TokensFileError, match="line 3: this credential is already given"):
        parse(lines, "tokens")
    with pytest.raises(TokensFileError, match="line 2: this credential"):
        parse(["b search * cert:gw", "c admin * cert:gw"], "tokens")


def test_digest_is_sha256() -> None:
    assert digest("abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert np.frombuffer(digest("x"), dtype=np.uint8).size == 32


def _signed(tmp_path: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """Key and certificate with subject CN=name for 127.0.0.1: self-signed, or signed by ``ca``."""
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subject = ["-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"]
    if ca is None:
        command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject]
        subprocess.run([*command, "-keyout", key, "-out", cert], check=True, capture_output=True)
        return cert, key
    csr = tmp_path / f"{name}.csr"
    request = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, *subject[:2]]
    subprocess.run(request, check=True, capture_output=True)
    sign = ["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial"]
    subprocess.run([*sign, "-days", "1", "-out", cert], check=True, capture_output=True)
    return cert, key


def test_client_certificate_names_a_site_restricted_caller(sited: Sited, tmp_path: Path) -> None:
    server_cert, server_key = _signed(tmp_path, "server")
    ca = _signed(tmp_path, "ca")
    gateway, stranger = _signed(tmp_path, "gateway", ca), _signed(tmp_path, "stranger", ca)
    callers = tmp_path / "tokens"
    callers.write_text("lab-gateway search site-b cert:gateway\n")
    settings = ServiceSettings.model_construct(
        tls_cert=server_cert, tls_key=server_key, tls_client_ca=ca[0], tokens_file=callers
    ).model_copy(update={"port": 0})
    with run_server(settings, store=sited.store, embedder=sited.embedder) as (_, port):

        def search(cert: tuple[Path, Path]) -> list[str]:
            credentials = grpc.ssl_channel_credentials(
                server_cert.read_bytes(), cert[1].read_bytes(), cert[0].read_bytes()
            )
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                stub = pb_grpc.EcgSearchServiceStub(channel)
                return [h.record_id for h in stub.SearchByVector(_vector_search(sited, 0), timeout=30).hits]

        assert sorted(search(gateway)) == sorted(sited.of_site("site-b"))
        with pytest.raises(grpc.RpcError) as refused:
            search(stranger)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_ingest_sets_the_site_and_refuses_a_bad_one(ptbxl_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ecgsearch.cli.main import app
    from ecgsearch.ecg.schema import SearchFilter
    from ecgsearch.search.engine.store import open_store

    store = tmp_path / "store"
    args = ["ingest", str(ptbxl_dir), "--store", str(store), "--limit", "4", "--quiet"]
    bad = CliRunner().invoke(app, [*args, "--site", "ward/3"])
    assert bad.exit_code == 2 and "invalid site name" in bad.output
    done = CliRunner().invoke(app, [*args, "--site", "ward-3"])
    assert done.exit_code == 0, done.output
    with open_store(path=store) as opened:
        assert opened.count(SearchFilter(sites=["ward-3"])) == opened.count() == 4
        assert opened.count(SearchFilter(sites=["local"])) == 0
