"""Who is calling: named callers with scopes and sites, resolved from a bearer token or a client certificate.

The tokens file holds one caller per line, never a token itself, only its SHA-256::

    # caller      scopes          sites           credential
    ward-viewer   search          site-a          sha256:<64 hex digits: SHA-256 of the token>
    ingest-bot    search,write    *               sha256:<...>
    ops           search,admin    *               sha256:<...>
    lab-gateway   search          site-a,site-b   cert:lab-gateway.hospital.example

- scopes: comma-separated, from ``search``, ``write``, ``admin`` (see ``scope_of`` in ``server.py``);
- sites: ``*`` for every site, else the comma-separated sites whose ECGs the caller may see;
- credential: ``sha256:`` and the hex SHA-256 of the bearer token, or ``cert:`` and the subject
  common name of a client certificate that the server's mutual-TLS CA signed.

A line holding a single word is the older format, a plain token: caller ``default``, scope ``search``,
every site. Tokens are compared as SHA-256 digests with ``hmac.compare_digest`` against every entry,
so the time taken does not depend on which digest (or how much of it) matched. The file is read again
when its modification time changes: callers can be added or revoked without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("search", "write", "admin")
ALL_SITES = "*"
DEFAULT_SITE = "local"
LEGACY_CALLER = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
SITE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_SITE = re.compile(SITE_PATTERN)
_DIGEST = re.compile(r"[0-9a-f]{64}")


class TokensFileError(ValueError):
    """A tokens file line that is not a valid caller; names the file and line, never a secret."""


@dataclass(frozen=True)
class Caller:
    """A resolved caller: a service account or certificate name (never a patient's), scopes, sites.

    ``sites`` is None for a caller that sees every site.
    """

    name: str
    scopes: frozenset[str]
    sites: frozenset[str] | None = None

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def sees(self, site: str | None) -> bool:
        """Whether an ECG of ``site`` is visible to this caller (no site: only to all-site callers)."""
        return self.sites is None or (site is not None and site in self.sites)


ANONYMOUS = Caller("anonymous", frozenset(SCOPES))  # a server run without authentication (--insecure)


def digest(token: str) -> bytes:
    """SHA-256 of a bearer token: what the tokens file stores and what offered tokens are compared as."""
    return hashlib.sha256(token.encode()).digest()


def check_site(site: str) -> str:
    """A site name: letters, digits, '.', '_', '-', at most 64 characters."""
    if not _SITE.fullmatch(site):
        raise ValueError(f"invalid site name {site[:70]!r}: 1-64 letters, digits, '.', '_' or '-'")
    return site


@dataclass(frozen=True)
class Callers:
    """Every credential the server accepts: token digests and certificate names, each with its caller."""

    tokens: tuple[tuple[bytes, Caller], ...] = ()
    certificates: tuple[tuple[str, Caller], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tokens or self.certificates)

    def by_token(self, token: str) -> Caller | None:
        """The caller whose token this is; every digest is compared, each in constant time."""
        offered = digest(token)
        found = None
        for stored, caller in self.tokens:
            if hmac.compare_digest(offered, stored) and found is None:
                found = caller
        return found

    def by_certificate(self, common_name: str) -> Caller | None:
        """The caller named for a verified client certificate's subject common name."""
        return next((c for cn, c in self.certificates if cn == common_name), None)


def parse(lines: Iterable[str], source: str = "tokens file") -> Callers:
    """Callers from the lines of a tokens file (format in the module doc)."""
    tokens: list[tuple[bytes, Caller]] = []
    certs: list[tuple[str, Caller]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if len(fields) == 1:  # the older format: a plain token
            tokens.append((digest(fields[0]), Caller(LEGACY_CALLER, frozenset({"search"}))))
            continue
        if len(fields) != 4:
            raise TokensFileError(
                f"{where}: expected 'name scopes sites credential' (4 fields), got {len(fields)}"
            )
        name, scopes, sites, credential = fields
        caller = Caller(_name(name, where), _scopes(scopes, where), _sites(sites, where))
        kind, _, value = credential.partition(":")
        if kind == "sha256" and _DIGEST.fullmatch(value.lower()):
            tokens.append((bytes.fromhex(value), caller))
        elif kind == "cert" and value:
            certs.append((value, caller))
        else:
            raise TokensFileError(
                f"{where}: credential must be 'sha256:<64 hex digits>' or 'cert:<certificate common name>'"
            )
    return Callers(tuple(tokens), tuple(certs))


def _name(name: str, where: str) -> str:
    if not _NAME.fullmatch(name):
        raise TokensFileError(f"{where}: caller name must be 1-64 letters, digits or '._@:-'")
    return name


def _scopes(text: str, where: str) -> frozenset[str]:
    scopes = frozenset(s for s in text.split(",") if s)
    unknown = scopes - set(SCOPES)
    if not scopes or unknown:
        raise TokensFileError(f"{where}: scopes are a comma-separated list of {', '.join(SCOPES)}")
    return scopes


def _sites(text: str, where: str) -> frozenset[str] | None:
    if text == ALL_SITES:
        return None
    sites = [s for s in text.split(",") if s]
    try:
        return frozenset(check_site(s) for s in sites) or None
    except ValueError as exc:
        raise TokensFileError(f"{where}: {exc}") from None


class CallerRegistry:
    """The callers of a tokens file (re-read when its modification time changes) plus fixed ones.

    ``fixed`` holds callers given outside the file (``ECGSEARCH_TOKENS``, tests). A file that turns
    invalid while the server runs is reported and the last valid callers stay in force.
    """

    def __init__(self, path: Path | None = None, fixed: Callers | None = None) -> None:
        self.path = path
        self._fixed = fixed or Callers()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._from_file = Callers()
        self.reload_error: str | None = None
        if path is not None:
            self._from_file = self._read()  # at start a broken file is fatal

    def _read(self) -> Callers:
        assert self.path is not None
        try:
            stat = os.stat(self.path)
            text = self.path.read_text()
        except OSError as exc:
            raise TokensFileError(f"cannot read tokens file {self.path}: {exc.strerror}") from None
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return parse(text.splitlines(), str(self.path))

    def current(self) -> Callers:
        """The callers now in force, re-reading the file first if it changed."""
        if self.path is not None:
            try:
                stat = os.stat(self.path)
                changed = (stat.st_mtime_ns, stat.st_size) != self._stamp
            except OSError:
                changed = False  # a file briefly missing (atomic replace) keeps the last callers
            if changed:
                with self._lock:
                    try:
                        self._from_file = self._read()
                        self.reload_error = None
                    except TokensFileError as exc:
                        self.reload_error = str(exc)
        files = self._from_file
        return Callers(files.tokens + self._fixed.tokens, files.certificates + self._fixed.certificates)

    def __bool__(self) -> bool:
        return bool(self.current())


def legacy(tokens: Iterable[str]) -> Callers:
    """Plain tokens (``ECGSEARCH_TOKENS``, ``run_server(token=...)``): caller ``default``, scope search."""
    return parse(t for t in tokens if t.strip())
