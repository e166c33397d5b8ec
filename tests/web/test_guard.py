"""The viewer answers only a Host naming it (DNS rebinding) and refuses cross-origin POSTs (CSRF); its
probes (/healthz, /readyz) answer any Host and readiness follows the search service.

Requests go to a real viewer process (waitress) over loopback with ``http.client``, which sends the
Host and Origin headers a rebinding or cross-site page would make a browser send.
"""

from __future__ import annotations

import http.client
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import Service, Viewer, start_viewer, stop

from ecgsearch.web import guard
from ecgsearch.web.cli import register

SAMPLE = "muse_braveheart_example1.xml"
GUARD_400 = "not known by that Host name"


def _request(
    viewer: Viewer, method: str, path: str, headers: dict[str, str | None], body: bytes = b""
) -> tuple[int, dict[str, str], str]:
    """One request with exactly these headers; a None Host sends none at all."""
    url = urlsplit(viewer.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            if value is not None:
                connection.putheader(name, value)
        if body:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode(errors="replace")
    finally:
        connection.close()


def _upload(data_dir: Path) -> tuple[dict[str, str], bytes]:
    """A multipart form POST of a real hospital file, as the upload form sends it."""
    boundary = uuid.uuid4().hex
    content = (data_dir / "hospital" / SAMPLE).read_bytes()
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="ecg"; filename="{SAMPLE}"\r\n'
        "Content-Type: application/xml\r\n\r\n"
    ).encode()
    field = 'Content-Disposition: form-data; name="k"'
    body += content + f"\r\n--{boundary}\r\n{field}\r\n\r\n10\r\n--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


@pytest.fixture(scope="module")
def lone_viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    """A viewer with one extra name, pointed at a loopback port where no service listens: the guard
    answers before any call to the service."""
    started = start_viewer(
        "127.0.0.1:9", tmp_path_factory.mktemp("guarded"), "--allowed-host", "ecg-viewer.hospital.example"
    )
    yield started
    stop(started.process)


def _port(viewer: Viewer) -> int:
    port = urlsplit(viewer.url).port
    assert port is not None
    return port


@pytest.mark.parametrize(
    "host",
    ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "10.0.0.1", "", None, "a b", "[::1"],
)
def test_a_host_that_does_not_name_the_viewer_is_refused(lone_viewer: Viewer, host: str | None) -> None:
    shown = None if host is None else (f"{host}:{_port(lone_viewer)}" if host else host)
    for path in ("/", "/search?record_id=x", "/ecg/x", "/static/viewer.css"):
        status, headers, body = _request(lone_viewer, "GET", path, {"Host": shown})
        assert status == 400 and GUARD_400 in body, (host, path, status)
        assert "evil" not in body and headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "LOCALHOST", "[::1]", "ecg-viewer.hospital.example"]
)
def test_the_viewer_answers_the_names_it_is_known_by(lone_viewer: Viewer, host: str) -> None:
    status, _, body = _request(lone_viewer, "GET", "/", {"Host": f"{host}:{_port(lone_viewer)}"})
    assert GUARD_400 not in body and status not in (400, 403)
    assert "127.0.0.1:9" in body  # the index page, saying the service cannot be reached


def test_a_cross_origin_post_is_refused_and_a_same_origin_one_is_read(
    lone_viewer: Viewer, data_dir: Path
) -> None:
    own = f"127.0.0.1:{_port(lone_viewer)}"
    form, body = _upload(data_dir)
    refused = {
        "another site": {"Origin": "http://evil.example"},
        "another port": {"Origin": f"http://127.0.0.1:{_port(lone_viewer) + 1}"},
        "null": {"Origin": "null"},
        "file": {"Origin": "file://"},
        "the viewer's name on another port": {"Origin": "http://localhost:1"},
        "browser says cross-site": {"Sec-Fetch-Site": "cross-site", "Origin": f"http://{own}"},
        "browser says same-site": {"Sec-Fetch-Site": "same-site"},
    }
    for why, extra in refused.items():
        status, _, text = _request(lone_viewer, "POST", "/upload", {"Host": own, **form, **extra}, body)
        assert status == 403 and "another origin" in text, why
    accepted = {
        "same origin": {"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"},
        "no Origin (a script, not a browser)": {},
        "behind a TLS proxy": {"Origin": "https://ecg-viewer.hospital.example"},
    }
    for why, extra in accepted.items():
        host = "ecg-viewer.hospital.example" if "proxy" in why else own
        status, headers, text = _request(
            lone_viewer, "POST", "/upload", {"Host": host, **form, **extra}, body
        )
        assert status == 303 and "/search?" in headers["Location"], (why, status, text[:300])


def test_allow_lists_are_normalised_and_junk_is_refused() -> None:
    assert guard.allowed_hosts("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert guard.allowed_hosts("0.0.0.0", ["Viewer.Example."]) == {
        "localhost",
        "127.0.0.1",
        "::1",
        "viewer.example",
    }
    assert "10.1.2.3" in guard.allowed_hosts("10.1.2.3")
    for junk in ("*", "*.example", "viewer.example:8080", "a/b", "", "x" * 300):
        with pytest.raises(ValueError):
            guard.check_host_name(junk)
    allowed = guard.allowed_hosts("127.0.0.1")
    assert guard.host_allowed("[::1]:8080", allowed) and guard.host_allowed("127.0.0.1", allowed)
    assert not guard.host_allowed("127.0.0.1:99999", allowed) and not guard.host_allowed(None, allowed)


def _invoke(*args: str) -> tuple[int, str]:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    register(app, typer.Typer(), typer.Typer())
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, ["web", *args])
    return result.exit_code, result.output + (result.stderr or "")


def test_a_wildcard_address_needs_the_name_users_reach_it_by() -> None:
    code, out = _invoke("--host", "0.0.0.0", "--allow-remote")
    assert code == 2 and "--allowed-host" in out
    code, out = _invoke("--allowed-host", "*")
    assert code == 2 and "not a host name" in out


@pytest.mark.slow
def test_the_guarded_viewer_still_searches_a_real_service(service: Service, viewer: Viewer) -> None:
    """The fixtures' service (its callers file in the strict format) and viewer: a search by record
    answers with neighbours for the viewer's own name, and 400 for a rebinding name."""
    record_id = service.payloads[0].record_id
    path = f"/search?record_id={record_id}&k=5"
    status, _, body = _request(viewer, "GET", path, {"Host": urlsplit(viewer.url).netloc})
    assert status == 200 and record_id in body and "neighbour" in body.lower()
    status, _, body = _request(viewer, "GET", path, {"Host": f"rebound.example:{_port(viewer)}"})
    assert status == 400 and record_id not in body


def test_probes_answer_any_host_and_say_nothing_clinical(lone_viewer: Viewer) -> None:
    """A kubelet probes with the pod's IP as Host: /healthz and /readyz answer it, the pages do not.
    This viewer's service is not there: live, not ready."""
    pod_ip = f"10.1.2.3:{_port(lone_viewer)}"
    status, headers, body = _request(lone_viewer, "GET", "/healthz", {"Host": pod_ip})
    assert (status, body) == (200, "ok\n") and headers["Content-Type"].startswith("text/plain")
    status, _, body = _request(lone_viewer, "GET", "/readyz", {"Host": pod_ip})
    assert status == 503 and "127.0.0.1:9" not in body
    assert _request(lone_viewer, "GET", "/", {"Host": pod_ip})[0] == 400
    assert _request(lone_viewer, "POST", "/healthz", {"Host": pod_ip})[0] == 400


@pytest.mark.slow
def test_readiness_follows_the_search_service_and_liveness_does_not(
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    launch_service: Callable[..., Iterator[Service]],
) -> None:
    """A real `ecgsearch serve` and a real viewer: /readyz 200 while the service answers its health
    check, 503 once it is stopped; /healthz 200 throughout."""
    root = tmp_path_factory.mktemp("ready")
    service = launch_service(root, data_dir / "ptb-xl", 5, ecg_roots=False)
    served = next(service)
    viewer = start_viewer(
        served.target, root / "home", "--token-file", str(served.token_file), "--timeout", "3"
    )
    try:
        host = {"Host": urlsplit(viewer.url).netloc}
        assert _request(viewer, "GET", "/healthz", host)[:1] == (200,)
        assert _request(viewer, "GET", "/readyz", host)[0] == 200
        service.close()  # stops `ecgsearch serve`
        started = time.monotonic()
        assert _request(viewer, "GET", "/readyz", host)[0] == 503
        assert time.monotonic() - started < 10, "readiness answers within its own short deadline"
        assert _request(viewer, "GET", "/healthz", host)[0] == 200
    finally:
        viewer.close()
        service.close()
