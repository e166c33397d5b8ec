"""Service settings, read once at the edge (``serve``, containers) and passed down as one object."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ecgsearch.search.serving.cpus import format_cpus, parse_cpus

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ServiceSettings(BaseSettings):
    """How the gRPC service is configured. Every field reads the environment variable ``ECGSEARCH_<NAME>``.

    Deployment files rely on these names; keep them stable.

    - ``ECGSEARCH_STORE_PATH``: directory of an embedded (on-disk) store (default ``$ECGSEARCH_HOME/store``,
      home ``~/.ecgsearch``); or
    - ``ECGSEARCH_QDRANT_URL`` (+ ``ECGSEARCH_QDRANT_API_KEY``): a Qdrant server or cluster.
    - ``ECGSEARCH_COLLECTION``: collection name (default ``ecgs``).
    - ``ECGSEARCH_MODEL``: ONNX model path (default: the bundled model).
    - ``ECGSEARCH_HOST`` / ``ECGSEARCH_PORT``: listen address (default 127.0.0.1:50051;
      containers set 0.0.0.0).
    - ``ECGSEARCH_TOKENS_FILE``: the callers file, one ``name scopes sites sha256:<digest>`` (or
      ``cert:<common name>``) per line, re-read when it changes (format: ``ecgsearch.search.serving.auth``,
      docs/deploy.md); a line of one word is a plain token of caller ``default`` with scope search.
      ``ECGSEARCH_TOKENS``: comma-separated plain tokens, each such a ``default`` caller.
    - ``ECGSEARCH_INSECURE``: allow no tokens at all (local use only; the server refuses to start otherwise).
    - ``ECGSEARCH_TLS_CERT`` / ``ECGSEARCH_TLS_KEY``: PEM files to serve TLS; with ``ECGSEARCH_TLS_CLIENT_CA``
      clients must present a certificate signed by that CA (mutual TLS).
    - ``ECGSEARCH_MAX_MESSAGE_MB``: largest request or response in MiB (default 16).
    - ``ECGSEARCH_MAX_WORKERS``: request threads (default: MAX_CONCURRENT_RPCS and an eighth more, at
      least 4: every admitted call has a thread, so a light call never queues behind heavy ones waiting
      for the heavy budget, and the calls refused past the limit are answered at once).
    - ``ECGSEARCH_MAX_CONCURRENT_RPCS``: calls in progress before new ones get RESOURCE_EXHAUSTED
      (default 64); at most half of them may be heavy calls waiting for the heavy budget.
    - ``ECGSEARCH_HEAVY_BUDGET_MB``: MiB of estimated replies, raw samples (4 bytes each), file bytes and
      prepared ECGs that heavy calls (over 1 MiB of such work) may handle at once; more wait their turn
      in arrival order (default: twice MAX_MESSAGE_MB).
    - ``ECGSEARCH_ALLOW_INSECURE_REMOTE``: with INSECURE, allow a non-loopback HOST (default: refused).
    - ``ECGSEARCH_ECG_ROOTS``: folders, separated by ``:``, where stored records' source paths resolve,
      for ``GetEcg`` (default: none; GetEcg then answers FAILED_PRECONDITION).
    - ``ECGSEARCH_SITE_SECRET_FILE``: the site secret that keys patient pseudonyms of pushed ECGs
      (UpsertEcgs), the same file ingest uses; an embedded store's default secret when unset.
    - ``ECGSEARCH_ARCHIVE_PATH``: where pushed ECGs' signals are kept for GetEcg (default:
      ``<store>/archive`` for an embedded store; a Qdrant server needs it for pushes).
    - ``ECGSEARCH_STATS_REFRESH_S``: seconds between background reads of the collection's count and
      per-code counts (default 30); requests never wait for them.
    - ``ECGSEARCH_GRACE_S``: seconds in-flight requests get to finish on shutdown (default 10).
    - ``ECGSEARCH_LOG_LEVEL``: DEBUG, INFO (default), WARNING or ERROR.
    - ``ECGSEARCH_AUDIT_LOG``: file to append one JSON audit line per request to, ``-`` for stdout
      (default: no audit trail). A call whose line cannot be written is refused (UNAVAILABLE) and
      health reports NOT_SERVING until lines can be written again.
    - ``ECGSEARCH_AUDIT_FAIL_OPEN``: answer calls even when their audit line cannot be written (each
      lost line is logged) (default: off).
    - ``ECGSEARCH_METRICS_PORT``: serve Prometheus text at ``http://HOST:PORT/metrics`` (default: off).
    - ``ECGSEARCH_CPUS``: the CPUs the serving process runs on, as ``taskset -c`` lists them (``1``,
      ``0-3``); default: every CPU it may use. One core answers an embedded store's searches sooner
      (``search/serving/cpus.py`` says why and what it costs).
    """

    model_config = SettingsConfigDict(env_prefix="ECGSEARCH_", extra="ignore")

    home: Path | None = None
    store_path: Path | None = None
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    collection: str = "ecgs"
    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    tokens: str | None = None
    tokens_file: Path | None = None
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_message_mb: float = Field(default=16, gt=0)
    max_workers: int | None = Field(default=None, ge=1)
    max_concurrent_rpcs: int = Field(default=64, ge=1)
    heavy_budget_mb: float | None = Field(default=None, gt=0)
    allow_insecure_remote: bool = False
    ecg_roots: str | None = None
    site_secret_file: Path | None = None
    archive_path: Path | None = None
    stats_refresh_s: float = Field(default=30.0, gt=0)
    grace_s: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"
    audit_log: str | None = None
    audit_fail_open: bool = False
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    cpus: str | None = None

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("cpus")
    @classmethod
    def _usable_cpus(cls, value: str | None) -> str | None:
        """A list the process can run on, written back in one form (``0,1,2``)."""
        if value is None or not value.strip():
            return None
        return format_cpus(parse_cpus(value))

    def cpu_set(self) -> frozenset[int] | None:
        """CPUS as CPU ids; None: every CPU the process may use."""
        return parse_cpus(self.cpus) if self.cpus else None

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSettings:
        if self.store_path and self.qdrant_url:
            raise ValueError("set either STORE_PATH or QDRANT_URL, not both")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS_CERT and TLS_KEY go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("TLS_CLIENT_CA (mutual TLS) needs TLS_CERT and TLS_KEY")
        if not self.store_path and not self.qdrant_url:
            from ecgsearch.search.engine.store import default_store_path

            self.store_path = default_store_path(self.home)
        return self

    def ecg_root_list(self) -> list[Path]:
        """ECG_ROOTS as paths (``os.pathsep``-separated, blanks skipped)."""
        return [Path(p) for p in (self.ecg_roots or "").split(os.pathsep) if p.strip()]

    def token_list(self) -> list[str]:
        """Plain bearer tokens: TOKENS and TOKENS_FILE's one-word lines (blank and '#' lines skipped).

        TOKENS_FILE's caller lines hold digests, not tokens: ``ecgsearch.search.serving.auth`` reads them.
        """
        found = [t.strip() for t in (self.tokens or "").split(",")]
        if self.tokens_file:
            lines = self.tokens_file.read_text().splitlines()
            found += [
                line.strip() for line in lines if not line.strip().startswith("#") and len(line.split()) == 1
            ]
        return [t for t in found if t]
