"""What CI can check of deploy/ without a container engine: the files parse and agree with the code."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.search.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
IMAGE = "ecgsearch:0.1.0"


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(kind: str) -> list[dict]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in _docs(path)
        if doc.get("kind") == kind
    ]


def _container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict, secrets: dict[str, str]) -> dict[str, str]:
    """Container env with secretKeyRefs replaced by the given test values."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[f"{ref['name']}/{ref['key']}"]
    return env


SECRETS = {"qdrant-apikey/api-key": "qdrant-test-key", "ecgsearch-tokens/tokens": "tok-a,tok-b"}


def test_every_file_parses() -> None:
    for path in [*DEPLOY.glob("*.yaml"), *(DEPLOY / "k8s").glob("*.yaml")]:
        assert _docs(path), path
    assert (DEPLOY / "Dockerfile").is_file()


def test_one_image_everywhere() -> None:
    images = {_container(w)["image"] for w in _kind("Deployment") + _kind("Job")}
    compose = _docs(DEPLOY / "compose.yaml")[0]["services"]
    images |= {svc["image"] for name, svc in compose.items() if name != "qdrant"}
    assert images == {IMAGE}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "[train]" not in dockerfile and "torch" not in dockerfile.split("#", 1)[-1].replace("(torch)", "")
    assert f"EXPOSE {ServiceSettings.model_fields['port'].default}" in dockerfile


def test_service_env_names_ports_and_probes_match_the_code() -> None:
    (deployment,) = _kind("Deployment")
    container = _container(deployment)
    env = _env(container, SECRETS)
    fields = {f"ECGSEARCH_{name.upper()}" for name in ServiceSettings.model_fields}
    assert set(env) <= fields, set(env) - fields
    settings = ServiceSettings(**{k.removeprefix("ECGSEARCH_").lower(): v for k, v in env.items()})
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == settings.port, probe
    assert settings.token_list() == ["tok-a", "tok-b"]
    assert settings.host == "0.0.0.0"
    (service,) = _kind("Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


def test_compose_env_names_are_settings() -> None:
    fields = {f"ECGSEARCH_{name.upper()}" for name in ServiceSettings.model_fields}
    search = _docs(DEPLOY / "compose.yaml")[0]["services"]["search"]
    assert set(search["environment"]) <= fields
    assert search["ports"] == [
        f"{ServiceSettings.model_fields['port'].default}:{search['environment']['ECGSEARCH_PORT']}"
    ]


def test_indexed_ingest_job_uses_real_flags_and_covers_every_shard() -> None:
    (job,) = _kind("Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    script = " ".join(_container(job)["args"])
    shard = re.search(r'--shard "\$\(\(JOB_COMPLETION_INDEX \+ 1\)\)/(\d+)"', script)
    assert shard, script
    assert int(shard.group(1)) == spec["completions"]
    help_text = (
        CliRunner().invoke(app, ["ingest", "--help"], env={"TYPER_USE_RICH": "0", "COLUMNS": "200"}).output
    )
    for flag in re.findall(r"(--[a-z][a-z-]+)", script):
        assert flag in help_text, f"ingest job passes {flag}, which `ecgsearch ingest` does not accept"
    env = _env(_container(job), SECRETS)
    assert set(env) == {"ECGSEARCH_QDRANT_URL", "ECGSEARCH_QDRANT_API_KEY", "ECGSEARCH_SITE_SECRET_FILE"}
    secret_mounts = {v["name"] for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in _container(job)["volumeMounts"]}
    assert any(env["ECGSEARCH_SITE_SECRET_FILE"].startswith(mounts[n] + "/") for n in secret_mounts)
    assert (
        env["ECGSEARCH_QDRANT_URL"]
        == _env(_container(_kind("Deployment")[0]), SECRETS)["ECGSEARCH_QDRANT_URL"]
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def small_store(tmp_path: Path, ptbxl_dir: Path) -> Path:
    """An embedded store with a few real records, made with the bundled model."""
    from ecgsearch.encoder import ptbxl, signals
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.schema import EcgPayload
    from ecgsearch.search.store import open_store

    embedder = Embedder(threads=1)
    rows = ptbxl.read_table(ptbxl_dir)[:5]
    vectors = embedder.embed([signals.load(row.path()) for row in rows])
    payloads = [
        EcgPayload(
            record_id=f"ptbxl:{r.ecg_id}", dataset="ptbxl", sampling_rate_hz=100, source_path=r.filename_lr
        )
        for r in rows
    ]
    store = open_store(path=tmp_path / "store")
    store.create_collection(dim=embedder.dim, model_version=embedder.version)
    store.upsert(payloads, vectors)
    store.close()
    return tmp_path / "store"


def test_service_starts_with_the_manifest_settings(small_store: Path) -> None:
    """`ecgsearch serve` with the Deployment's env (store swapped for an embedded one) reports SERVING."""
    env = _env(_container(_kind("Deployment")[0]), SECRETS)
    del env["ECGSEARCH_QDRANT_URL"], env["ECGSEARCH_QDRANT_API_KEY"]  # no Qdrant server can run here
    port = _free_port()
    env |= {
        "ECGSEARCH_STORE_PATH": str(small_store),
        "ECGSEARCH_PORT": str(port),
        "ECGSEARCH_HOST": "127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecgsearch.cli.main", "serve"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    time.sleep(0.3)
        assert status == health_pb2.HealthCheckResponse.SERVING, proc.stdout.read() if proc.poll() else status
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
