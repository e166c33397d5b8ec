"""What CI can check of deploy/ without a container engine: the files parse and agree with the code.

The validators (kubernetes-validate, checkov, hadolint, compose config, buf) run in deploy/validate.sh.
These tests check what no validator knows: env names are settings the code reads, secrets are mounted
where the env points, policies select the pods they are meant for, and the entrypoint and health probe work.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.search.serving.auth import CallerRegistry, digest
from ecgsearch.search.serving.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
IMAGE = "ecgsearch:0.1.0"
UID = 10001
# Read by deploy/entrypoint.sh (the image entrypoint), not by ServiceSettings.
ENTRYPOINT_ENV = {"ECGSEARCH_QDRANT_API_KEY_FILE"}
INGEST_ENV = {"ECGSEARCH_SITE_SECRET_FILE"}  # an `ecgsearch ingest` option's variable (checked below)
SETTINGS_ENV = {f"ECGSEARCH_{name.upper()}" for name in ServiceSettings.model_fields}
QDRANT_PORTS = {6333, 6334}
QDRANT_LABELS = {"app.kubernetes.io/name": "qdrant", "app.kubernetes.io/instance": "qdrant"}


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(kind: str) -> list[dict]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in _docs(path)
        if doc.get("kind") == kind
    ]


def _workloads() -> list[dict]:
    return _kind("Deployment") + _kind("Job")


def _deployment(name: str = "ecgsearch") -> dict:
    """One Deployment by name: "ecgsearch" (the search service) or "ecgsearch-web" (the viewer)."""
    (found,) = [d for d in _kind("Deployment") if d["metadata"]["name"] == name]
    return found


def _web_env_names() -> set[str]:
    """The environment variables `ecgsearch web` reads (its options' envvars)."""
    import typer

    command = typer.main.get_command(app).commands["web"]  # type: ignore[attr-defined]
    return {
        name
        for param in command.params
        for name in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
    }


def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict) -> dict:
    (container,) = _pod(workload)["containers"]
    return container


def _values() -> dict:
    return _docs(DEPLOY / "k8s" / "qdrant-values.yaml")[0]


def _compose() -> dict:
    return _docs(DEPLOY / "compose.yaml")[0]


SECRETS = {
    "qdrant-read-only-key/api-key": "qdrant-read-only-test-key",
    "qdrant-admin-key/api-key": "qdrant-admin-test-key",
    "ecgsearch-tokens/tokens": (
        f"app search * sha256:{digest('tok-a').hex()}\nops search,admin * sha256:{digest('tok-b').hex()}\n"
    ),
    "ecgsearch-site-secret/site-secret": "site-secret-for-tests-0123456789",
    "ecgsearch-web-token/token": "tok-viewer\n",
}
SECRETS["ecgsearch-tokens/tokens"] += f"viewer search * sha256:{digest('tok-viewer').hex()}\n"
VIEWER_PORT = 8080  # deploy/web-entrypoint.sh: --port 8080


def _mounted_secrets(workload: dict) -> dict[str, str]:
    """Path inside the container -> 'secret/key' for every file a Secret volume puts there."""
    volumes = {v["name"]: v for v in _pod(workload).get("volumes", [])}
    files = {}
    for mount in _container(workload).get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret:
            for item in secret["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = f"{secret['secretName']}/{item['key']}"
    return files


def _env(workload: dict, root: Path) -> dict[str, str]:
    """Container env with Secret files written under ``root`` (test values) and paths rewritten to them."""
    files = _mounted_secrets(workload)
    env = {}
    for item in _container(workload).get("env", []):
        assert "valueFrom" not in item, f"{item['name']}: secrets are mounted as files, not env values"
        value = str(item["value"])
        if value in files:
            local = root / value.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(SECRETS[files[value]])
            value = str(local)
        env[item["name"]] = value
    return env


def test_every_file_parses() -> None:
    for path in [*DEPLOY.glob("*.yaml"), *(DEPLOY / "k8s").glob("*.yaml")]:
        assert _docs(path), path
    assert (DEPLOY / "Dockerfile").is_file()


def test_one_image_everywhere() -> None:
    images = {_container(w)["image"] for w in _workloads()}
    compose = _compose()["services"]
    images |= {svc["image"] for name, svc in compose.items() if name != "qdrant"}
    assert images == {IMAGE}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "[train]" not in dockerfile and "torch" not in dockerfile.split("#", 1)[-1].replace("(torch)", "")
    assert f"EXPOSE {ServiceSettings.model_fields['port'].default}" in dockerfile


def test_dockerfile_user_workdir_entrypoint_and_healthcheck() -> None:
    """Numeric non-root USER that the manifests run as, a WORKDIR it owns, and COPY sources that exist."""
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    (user,) = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user == f"{UID}:{UID}"
    for workload in _workloads():
        assert _pod(workload)["securityContext"]["runAsUser"] == UID
    workdir = next(line.split()[1] for line in final if line.startswith("WORKDIR "))
    assert final.index(next(x for x in final if x.startswith("WORKDIR "))) > final.index(f"USER {user}")
    assert any(f"--uid {UID}" in line and f"--home-dir {workdir}" in line for line in final), workdir
    copied = {
        parts[-2]: parts[-1]
        for line in final
        if line.startswith("COPY ") and "--from" not in line
        for parts in [line.split()]
    }
    for source in copied:
        assert (REPO / source).is_file(), source
    assert copied["deploy/entrypoint.sh"].endswith("/ecgsearch-entrypoint")
    assert os.access(DEPLOY / "entrypoint.sh", os.X_OK)
    assert any(
        line.startswith("ENTRYPOINT") and '"ecgsearch-entrypoint", "ecgsearch"' in line for line in final
    )
    health = " ".join(final[next(i for i, x in enumerate(final) if x.startswith("HEALTHCHECK")) :][:2])
    assert copied["deploy/healthcheck.py"] in health


def test_service_env_names_ports_probes_and_services_match_the_code(tmp_path: Path) -> None:
    deployment = _deployment()
    container = _container(deployment)
    env = _env(deployment, tmp_path)
    assert set(env) <= SETTINGS_ENV | ENTRYPOINT_ENV, set(env) - SETTINGS_ENV - ENTRYPOINT_ENV
    settings = ServiceSettings(
        **{k.removeprefix("ECGSEARCH_").lower(): v for k, v in env.items() if k in SETTINGS_ENV}
    )
    port, metrics = container["ports"]
    assert (port["containerPort"], metrics["containerPort"]) == (settings.port, settings.metrics_port)
    assert settings.audit_log == "-"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == settings.port, probe
    callers = CallerRegistry(settings.tokens_file).current()
    assert [callers.by_token(t).name for t in ("tok-a", "tok-b")] == ["app", "ops"]
    assert settings.tokens is None, "tokens come from the mounted file only"
    assert settings.host == "0.0.0.0"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s["spec"] for s in _kind("Service")}
    assert set(services) == {"ecgsearch", "ecgsearch-headless", "ecgsearch-web"}
    assert services["ecgsearch-headless"]["clusterIP"] == "None"
    for spec in (services["ecgsearch"], services["ecgsearch-headless"]):
        assert spec["ports"][0]["targetPort"] == port["name"]
        assert spec["selector"].items() <= labels.items()


def test_compose_env_names_secrets_and_ports(tmp_path: Path) -> None:
    compose = _compose()
    services, secrets = compose["services"], compose["secrets"]
    for name in ("search", "ingest"):
        service = services[name]
        assert set(service["environment"]) <= SETTINGS_ENV | ENTRYPOINT_ENV | INGEST_ENV, name
        assert "build" in service, f"{name}: `docker compose up --build` must be able to build the image"
        mounted = {f"/run/secrets/{s}" for s in service.get("secrets", [])}
        for key, value in service["environment"].items():
            if key.endswith("_FILE"):
                assert value in mounted, f"{name}: {key}={value} is not a mounted secret"
    search = services["search"]
    assert search["ports"] == [
        f"{ServiceSettings.model_fields['port'].default}:{search['environment']['ECGSEARCH_PORT']}"
    ]
    assert services["ingest"]["entrypoint"][:3] == ["ecgsearch-entrypoint", "ecgsearch", "ingest"]
    # Only ingest holds Qdrant's admin key; Qdrant gets both keys through its local.yaml.
    holders = {n for n, s in services.items() for x in s.get("secrets", []) if x == "qdrant-admin-key"}
    assert holders == {"ingest"}
    (qdrant_secret,) = services["qdrant"]["secrets"]
    assert qdrant_secret["target"] == "/qdrant/config/local.yaml"
    # Every secret file is one make-secrets.sh writes.
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(tmp_path)], check=True, capture_output=True)
    for name, spec in secrets.items():
        assert (tmp_path / Path(spec["file"]).name).is_file(), name


def test_make_secrets_writes_keys_qdrant_reads_and_tokens_the_service_accepts(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(out)], check=True, capture_output=True)
    admin, read_only = ((out / f).read_text().strip() for f in ("qdrant-admin-key", "qdrant-read-only-key"))
    assert len(admin) == len(read_only) == 64 and admin != read_only
    local = yaml.safe_load((out / "qdrant-local.yaml").read_text())
    assert local == {"service": {"api_key": admin, "read_only_api_key": read_only}}
    token = (out / "client-token").read_text().strip()
    assert len(token) == 48 and token not in (out / "tokens").read_text()
    caller = CallerRegistry(ServiceSettings(tokens_file=out / "tokens").tokens_file).current().by_token(token)
    assert caller is not None and caller.scopes == {"search"} and caller.sites is None
    assert (out.stat().st_mode & 0o777) == 0o700
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(out)], check=True, capture_output=True)
    assert (out / "qdrant-admin-key").read_text().strip() == admin, "a rerun keeps existing keys"


def test_indexed_ingest_job_uses_real_flags_and_covers_every_shard(tmp_path: Path) -> None:
    (job,) = _kind("Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    script = " ".join(_container(job)["args"])
    assert script.startswith("exec ecgsearch-entrypoint ecgsearch ingest ")
    shard = re.search(r'--shard "\$\(\(JOB_COMPLETION_INDEX \+ 1\)\)/(\d+)"', script)
    assert shard, script
    assert int(shard.group(1)) == spec["completions"]
    help_text = (
        CliRunner().invoke(app, ["ingest", "--help"], env={"TYPER_USE_RICH": "0", "COLUMNS": "200"}).output
    )
    for flag in re.findall(r"(--[a-z][a-z-]+)", script):
        assert flag in help_text, f"ingest job passes {flag}, which `ecgsearch ingest` does not accept"
    rejects = re.search(r"--rejects (\S+)", script).group(1)
    writable = {m["mountPath"] for m in _container(job)["volumeMounts"] if m["name"] == "tmp"}
    assert any(rejects.startswith(path + "/") for path in writable), "rejects must go to a writable volume"
    env = _env(job, tmp_path)
    assert set(env) == {"ECGSEARCH_QDRANT_URL", "ECGSEARCH_QDRANT_API_KEY_FILE", "ECGSEARCH_SITE_SECRET_FILE"}
    raw = {item["name"]: item["value"] for item in _container(job)["env"]}
    assert _mounted_secrets(job)[raw["ECGSEARCH_SITE_SECRET_FILE"]] == "ecgsearch-site-secret/site-secret"
    for name in INGEST_ENV:
        assert name in help_text, f"{name} is not an `ecgsearch ingest` option's variable"
    deployment = _deployment()
    assert env["ECGSEARCH_QDRANT_URL"] == _env(deployment, tmp_path / "d")["ECGSEARCH_QDRANT_URL"]


def test_admin_key_only_for_ingest_and_read_only_key_for_search() -> None:
    deployment = _deployment()
    (job,) = _kind("Job")
    key_file = "/var/run/secrets/ecgsearch/qdrant/api-key"
    assert _mounted_secrets(job)[key_file] == "qdrant-admin-key/api-key"
    assert _mounted_secrets(deployment)[key_file] == "qdrant-read-only-key/api-key"
    for workload in (deployment, job):
        env = {e["name"]: e.get("value") for e in _container(workload)["env"]}
        assert env["ECGSEARCH_QDRANT_API_KEY_FILE"] == key_file
    # Qdrant itself reads both keys from its own Secret, not from the chart's lookup-generated one.
    values = _values()
    assert values["apiKey"] is False and values["readOnlyApiKey"] is False
    (mount,) = values["additionalVolumeMounts"]
    (volume,) = values["additionalVolumes"]
    assert mount["mountPath"] == "/qdrant/config/local.yaml" and mount["name"] == volume["name"]
    assert volume["secret"]["secretName"] == "qdrant-config"


def _restricted(pod: dict, container_ctx: dict, where: str) -> None:
    """Pod Security 'restricted' plus a read-only root filesystem, as checkov and the namespace demand."""
    assert pod["runAsNonRoot"] is True and isinstance(pod["runAsUser"], int), where
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert container_ctx["allowPrivilegeEscalation"] is False, where
    assert container_ctx["capabilities"] == {"drop": ["ALL"]}, where
    assert container_ctx["readOnlyRootFilesystem"] is True, where
    assert container_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where


def test_every_pod_is_restricted_with_no_token_and_a_writable_tmp() -> None:
    for workload in _workloads():
        name = workload["metadata"]["name"]
        pod = _pod(workload)
        assert pod["automountServiceAccountToken"] is False, name
        _restricted(pod["securityContext"], _container(workload)["securityContext"], name)
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = [m for m in _container(workload)["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], name
        resources = _container(workload)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
            resources["limits"]
        )
    values = _values()
    _restricted(values["podSecurityContext"], values["containerSecurityContext"], "qdrant")
    assert values["image"]["useUnprivilegedImage"] is True, (
        "the root chown init container breaks 'restricted'"
    )
    (namespace,) = _kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _selects(selector: dict, labels: dict) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_network_policies_let_only_search_and_ingest_reach_qdrant() -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in _kind("NetworkPolicy")}
    deny = policies.pop("default-deny")
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    dns = policies.pop("dns")
    assert dns["policyTypes"] == ["Egress"] and {p["port"] for p in dns["egress"][0]["ports"]} == {53}
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in _workloads()}
    search, ingest = pods["ecgsearch"], pods["ecgsearch-ingest"]
    (qdrant_policy,) = [p for p in policies.values() if _selects(p["podSelector"], QDRANT_LABELS)]
    api_rules = [r for r in qdrant_policy["ingress"] if {p["port"] for p in r["ports"]} & QDRANT_PORTS]
    (api_rule,) = api_rules
    assert {p["port"] for p in api_rule["ports"]} == QDRANT_PORTS
    allowed = [peer["podSelector"] for peer in api_rule["from"]]
    assert all(set(peer) == {"podSelector"} for peer in api_rule["from"]), "no namespace-wide peers"
    assert [any(_selects(s, labels) for s in allowed) for labels in (search, ingest)] == [True, True]
    assert not any(_selects(s, QDRANT_LABELS) for s in allowed)
    # Qdrant's peers reach each other on the p2p port only.
    (p2p,) = [r for r in qdrant_policy["ingress"] if r is not api_rule]
    assert {p["port"] for p in p2p["ports"]} == {_values()["config"]["cluster"]["p2p"]["port"]}
    # Search pods are reachable on their gRPC port only, and both clients may reach Qdrant's API ports.
    deployment = _deployment()
    (search_policy,) = [p for p in policies.values() if _selects(p["podSelector"], search)]
    rule, scrape = search_policy["ingress"]
    grpc_port, metrics_port = (p["containerPort"] for p in _container(deployment)["ports"])
    assert "from" not in rule and [p["port"] for p in rule["ports"]] == [grpc_port]
    assert [p["port"] for p in scrape["ports"]] == [metrics_port]
    assert [set(peer) for peer in scrape["from"]] == [{"namespaceSelector"}], "only Prometheus' namespace"
    for labels in (search, ingest):
        (policy,) = [p for p in policies.values() if _selects(p["podSelector"], labels)]
        (egress,) = policy["egress"]
        assert _selects(egress["to"][0]["podSelector"], QDRANT_LABELS)
        assert {p["port"] for p in egress["ports"]} == QDRANT_PORTS


def test_disruption_budgets_and_spread_keep_one_node_loss_survivable() -> None:
    deployment = _deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (pdb,) = _kind("PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"], labels)
    assert 0 < pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    spread = _pod(deployment)["topologySpreadConstraints"]
    by_host = [c for c in spread if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_host and by_host[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert _selects(by_host[0]["labelSelector"], labels)
    values = _values()
    assert values["podDisruptionBudget"] == {"enabled": True, "maxUnavailable": 1}
    (anti,) = values["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == QDRANT_LABELS
    assert values["replicaCount"] >= 3


def test_qdrant_chart_image_and_client_versions_agree() -> None:
    """Chart, image (Helm values and compose) on one release; the client within one minor of it."""
    values = _values()
    tag = values["image"]["tag"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), tag
    header = (DEPLOY / "k8s" / "qdrant-values.yaml").read_text()
    assert f"--version {tag[1:]} " in header, "pin the chart version in the install command"
    assert _compose()["services"]["qdrant"]["image"] == f"qdrant/qdrant:{tag}-unprivileged"
    server_minor = int(tag.split(".")[1])
    client_major, client_minor = (int(x) for x in version("qdrant-client").split(".")[:2])
    assert client_major == 1 and abs(client_minor - server_minor) <= 1, version("qdrant-client")


def _entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh"), *command],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_entrypoint_reads_the_qdrant_key_file(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("s3cret-key\n")
    show = (
        "sh",
        "-c",
        'printf "%s|%s" "$ECGSEARCH_QDRANT_API_KEY" "${ECGSEARCH_QDRANT_API_KEY_FILE:-unset}"',
    )
    done = _entrypoint({"ECGSEARCH_QDRANT_API_KEY_FILE": str(key)}, *show)
    assert (done.returncode, done.stdout) == (0, "s3cret-key|unset")
    assert _entrypoint({"ECGSEARCH_QDRANT_API_KEY": "plain"}, *show).stdout == "plain|unset"
    missing = _entrypoint({"ECGSEARCH_QDRANT_API_KEY_FILE": str(tmp_path / "nope")}, *show)
    assert missing.returncode == 2 and "ECGSEARCH_QDRANT_API_KEY_FILE" in missing.stderr
    assert "s3cret" not in missing.stderr
    both = _entrypoint({"ECGSEARCH_QDRANT_API_KEY_FILE": str(key), "ECGSEARCH_QDRANT_API_KEY": "x"}, *show)
    assert both.returncode == 2 and "not both" in both.stderr
    (tmp_path / "empty").write_text("\n")
    empty = _entrypoint({"ECGSEARCH_QDRANT_API_KEY_FILE": str(tmp_path / "empty")}, *show)
    assert empty.returncode == 2 and "empty" in empty.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def small_store(tmp_path: Path, ptbxl_dir: Path) -> Path:
    """An embedded store with a few real records, made by ingest's own code with the bundled model."""
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.ingest import pipeline, sources
    from ecgsearch.search.engine.store import open_store

    candidates = list(sources.enumerate_source(ptbxl_dir))[:5]
    store = open_store(path=tmp_path / "store")
    try:
        assert pipeline.ingest(candidates, store, Embedder(threads=1), workers=0).ingested == 5
    finally:
        store.close()
    return tmp_path / "store"


def _healthcheck(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py")],
        env={**os.environ, "ECGSEARCH_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextlib.contextmanager
def _served_from_manifest(store: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, int]]:
    """`ecgsearch serve` with the search Deployment's env and mounted secret files, through the image
    entrypoint (store swapped for an embedded one, as no Qdrant server runs here), once SERVING:
    (process, gRPC port, metrics port). Killed on exit if still running."""
    env = _env(_deployment(), tmp_path / "secrets")
    del env["ECGSEARCH_QDRANT_URL"]
    port = _free_port()
    metrics_port = next(p for p in iter(_free_port, None) if p != port)
    env |= {
        "ECGSEARCH_STORE_PATH": str(store),
        "ECGSEARCH_PORT": str(port),
        "ECGSEARCH_HOST": "127.0.0.1",
        "ECGSEARCH_METRICS_PORT": str(metrics_port),
    }
    proc = subprocess.Popen(
        ["sh", str(DEPLOY / "entrypoint.sh"), sys.executable, "-m", "ecgsearch.cli.main", "serve"],
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
        yield proc, port, metrics_port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_service_starts_with_the_manifest_settings_and_passes_the_image_healthcheck(
    small_store: Path, tmp_path: Path
) -> None:
    """The Deployment's env and mounted secrets: SERVING, the HEALTHCHECK script agrees, SIGTERM exits 0."""
    with _served_from_manifest(small_store, tmp_path) as (proc, port, metrics_port):
        probe = _healthcheck(port)
        assert probe.returncode == 0, probe.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as scraped:
            assert b"ecgsearch_build_info{" in scraped.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        down = _healthcheck(port)
        assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_snapshot_cronjob_uses_real_flags_the_admin_key_and_may_reach_qdrant() -> None:
    (cron,) = _kind("CronJob")
    template = cron["spec"]["jobTemplate"]["spec"]["template"]
    pod, (container,) = template["spec"], template["spec"]["containers"]
    script = " ".join(container["args"])
    assert "ecgsearch-entrypoint ecgsearch snapshot create" in script
    replicas = _values()["replicaCount"]
    assert re.search(r"for i in ([0-9 ]+);", script).group(1).split() == [str(i) for i in range(replicas)]
    help_text = (
        CliRunner()
        .invoke(app, ["snapshot", "create", "--help"], env={"TYPER_USE_RICH": "0", "COLUMNS": "200"})
        .output
    )
    for flag in re.findall(r"(--[a-z][a-z-]+)", script):
        assert flag in help_text, (
            f"the snapshot CronJob passes {flag}, which `snapshot create` does not accept"
        )
    volumes = {v["name"]: v for v in pod["volumes"]}
    (key_mount,) = [m for m in container["volumeMounts"] if m["name"] == "qdrant-key"]
    assert volumes["qdrant-key"]["secret"]["secretName"] == "qdrant-admin-key"
    (env,) = container["env"]
    assert env["value"].startswith(key_mount["mountPath"] + "/")
    assert pod["automountServiceAccountToken"] is False
    _restricted(pod["securityContext"], container["securityContext"], "snapshot")
    labels = template["metadata"]["labels"]
    policies = [p["spec"] for p in _kind("NetworkPolicy") if p["spec"]["podSelector"]]
    (qdrant_policy,) = [p for p in policies if _selects(p["podSelector"], QDRANT_LABELS)]
    peers = [peer["podSelector"] for r in qdrant_policy["ingress"] for peer in r["from"]]
    assert any(_selects(s, labels) for s in peers)
    (own,) = [p for p in policies if _selects(p["podSelector"], labels)]
    assert {p["port"] for p in own["egress"][0]["ports"]} == QDRANT_PORTS


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_viewer_deployment_runs_the_web_entrypoint_with_web_settings_and_a_mounted_token(
    tmp_path: Path,
) -> None:
    web = _deployment("ecgsearch-web")
    container = _container(web)
    assert container["command"] == ["ecgsearch-web"] and "args" not in container
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY --chmod=0755 deploy/web-entrypoint.sh /usr/local/bin/ecgsearch-web" in dockerfile
    assert os.access(DEPLOY / "web-entrypoint.sh", os.X_OK)
    assert f"--port {VIEWER_PORT}" in (DEPLOY / "web-entrypoint.sh").read_text()
    # The image installs the web extra's lock (serve + flask + waitress).
    assert "-r requirements/web.txt" in dockerfile and "requirements/serve.txt" not in dockerfile
    lock = (REPO / "requirements" / "web.txt").read_text()
    assert all(f"\n{name}==" in lock for name in ("flask", "waitress"))
    env = _env(web, tmp_path)
    assert set(env) <= _web_env_names(), set(env) - _web_env_names()
    assert "ECGSEARCH_TOKEN" not in env, "the token comes from the mounted file only"
    assert _mounted_secrets(web)[container["env"][1]["value"]] == "ecgsearch-web-token/token"
    assert Path(env["ECGSEARCH_TOKEN_FILE"]).read_text().strip() == "tok-viewer"
    # It talks to the search Service on the search pods' gRPC port.
    search_port = _container(_deployment())["ports"][0]["containerPort"]
    host, port = env["ECGSEARCH_TARGET"].rsplit(":", 1)
    assert host.split(".")[:2] == ["ecgsearch", "ecgsearch"] and int(port) == search_port
    # Probes: liveness /healthz, readiness /readyz, on the port it listens on; its Service targets that port.
    (http,) = container["ports"]
    assert http["containerPort"] == VIEWER_PORT
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": http["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": http["name"]}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    (service,) = [s["spec"] for s in _kind("Service") if s["metadata"]["name"] == "ecgsearch-web"]
    assert service["ports"][0]["targetPort"] == http["name"]
    assert service["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()
    assert "type" not in service, "ClusterIP only: users reach the viewer through an authenticating proxy"
    # A caller of that token exists in the service's callers file, with scope search.
    caller = CallerRegistry(_env(_deployment(), tmp_path / "s")["ECGSEARCH_TOKENS_FILE"]).current()
    assert caller.by_token("tok-viewer").scopes == {"search"}


def test_viewer_network_policy_allows_only_its_port_in_and_the_search_service_out() -> None:
    web_labels = _deployment("ecgsearch-web")["spec"]["template"]["metadata"]["labels"]
    search_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    search_port = _container(_deployment())["ports"][0]["containerPort"]
    policies = {p["metadata"]["name"]: p["spec"] for p in _kind("NetworkPolicy")}
    (own,) = [p for n, p in policies.items() if p["podSelector"] and _selects(p["podSelector"], web_labels)]
    assert set(own["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = own["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [VIEWER_PORT]
    (egress,) = own["egress"]
    assert [p["port"] for p in egress["ports"]] == [search_port]
    (peer,) = egress["to"]
    assert set(peer) == {"podSelector"} and _selects(peer["podSelector"], search_labels)
    assert not _selects(peer["podSelector"], QDRANT_LABELS)
    # DNS: the namespace-wide policy; and the search pods admit it on their gRPC port (from anywhere).
    assert policies["dns"]["podSelector"] == {}
    (search_policy,) = [
        p for p in policies.values() if p["podSelector"] and _selects(p["podSelector"], search_labels)
    ]
    assert any(
        "from" not in r and [p["port"] for p in r["ports"]] == [search_port] for r in search_policy["ingress"]
    )
    # Nothing else selects the viewer's pods with a wider rule.
    assert [
        n for n, p in policies.items() if p["podSelector"] and _selects(p["podSelector"], web_labels)
    ] == ["ecgsearch-web"]


def test_compose_viewer_runs_the_web_entrypoint_on_loopback_with_its_token_file(tmp_path: Path) -> None:
    compose = _compose()
    web, search = compose["services"]["web"], compose["services"]["search"]
    assert web["entrypoint"] == ["ecgsearch-web"] and web["image"] == IMAGE and "build" in web
    assert set(web["environment"]) <= _web_env_names()
    mounted = {f"/run/secrets/{s}" for s in web["secrets"]}
    assert web["environment"]["ECGSEARCH_TOKEN_FILE"] in mounted
    assert web["environment"]["ECGSEARCH_TARGET"] == f"search:{search['environment']['ECGSEARCH_PORT']}"
    assert web["ports"] == [f"127.0.0.1:{VIEWER_PORT}:{VIEWER_PORT}"], "no login: published on loopback only"
    assert web["healthcheck"]["test"][-1] == f"http://127.0.0.1:{VIEWER_PORT}/healthz"
    assert web["read_only"] is True and web["cap_drop"] == ["ALL"]
    # make-secrets.sh writes the viewer's token, readable by the container's user, named in the callers file.
    out = tmp_path / "secrets"
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(out)], check=True, capture_output=True)
    token = (out / "viewer-token").read_text().strip()
    assert (out / "viewer-token").stat().st_mode & 0o004
    caller = CallerRegistry(ServiceSettings(tokens_file=out / "tokens").tokens_file).current().by_token(token)
    assert caller is not None and caller.name == "viewer" and caller.scopes == {"search"}
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(out)], check=True, capture_output=True)
    assert (out / "tokens").read_text().count("viewer ") == 1, "a rerun adds the viewer once"


def test_viewer_starts_with_the_manifest_settings_and_its_probes_follow_the_service(
    small_store: Path, tmp_path: Path
) -> None:
    """The viewer Deployment's env and mounted token, through deploy/web-entrypoint.sh (on a loopback port),
    against a service started from the search Deployment's settings: /healthz and /readyz 200, the
    container healthcheck agrees; the service stopped, /readyz 503 and /healthz still 200."""
    with _served_from_manifest(small_store, tmp_path) as (service, port, _):
        env = _env(_deployment("ecgsearch-web"), tmp_path / "web-secrets")
        env["ECGSEARCH_TARGET"] = f"127.0.0.1:{port}"
        web_port = _free_port()
        viewer = subprocess.Popen(
            ["sh", str(DEPLOY / "web-entrypoint.sh"), "--host", "127.0.0.1", "--port", str(web_port)],
            env={k: v for k, v in os.environ.items() if not k.startswith("ECGSEARCH_")}
            | {
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
            }  # `ecgsearch` as in the image
            | env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = viewer.stderr.readline()
            assert f":{web_port}/" in line, line + viewer.stderr.read()
            base = f"http://127.0.0.1:{web_port}"
            assert (_http_status(base + "/healthz"), _http_status(base + "/readyz")) == (200, 200)
            probe = subprocess.run(
                [sys.executable, str(DEPLOY / "healthcheck.py"), base + "/healthz"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert probe.returncode == 0, probe.stderr
            # The viewer's token is one the service accepts: a page that asks the service renders.
            assert _http_status(base + "/") == 200
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=30) == 0
            assert (_http_status(base + "/healthz"), _http_status(base + "/readyz")) == (200, 503)
            down = subprocess.run(
                [sys.executable, str(DEPLOY / "healthcheck.py"), base + "/readyz"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert down.returncode == 1 and "HTTP 503" in down.stderr
        finally:
            viewer.terminate()
            viewer.wait(timeout=30)
