"""Who is calling: named callers with scopes and sites, resolved from a bearer token or a client certificate.

The callers file (``--tokens-file``) holds one caller per line, never a token itself, only its SHA-256::

    # caller      scopes          sites           credential
    ward-viewer   search          site-a          sha256:<64 hex digits: SHA-256 of the token>
    ingest-bot    search,write    *               sha256:<...>
    ops           search,admin    *               sha256:<...>
    lab-gateway   search          site-a,site-b   cert:lab-gateway.hospital.example

- scopes: comma-separated, from ``search``, ``write``, ``admin`` (see ``scope_of`` in ``server.py``);
- sites: ``*`` alone for every site, else the comma-separated sites whose ECGs the caller may see;
- credential: ``sha256:`` and the hex SHA-256 of the bearer token, or ``cert:`` and the subject
  common name of a client certificate that the server's mutual-TLS CA signed.

The grammar is strict: exactly four fields, no empty list item (a sites field of ``,`` or ``a,,b`` is
refused, never read as "every site"), ``*`` only alone, one line per credential. A line of one field
(a plain token, or a digest without caller, scopes and sites) is refused: anyone who can read the file
could use its literal text. Errors name the file and the line number, never the line's text.

Tokens are compared as SHA-256 digests with ``hmac.compare_digest`` against every entry, so the time
taken does not depend on which digest (or how much of it) matched. The file is read on every call
and re-parsed when its content's SHA-256 changes (whatever its size and modification time say):
callers can be added or revoked without a restart. A file that turns unreadable or invalid while
the server runs is logged and the last valid callers stay in force.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ecgsearch.ecg.schema import SITE_PATTERN

SCOPES = ("search", "write", "admin")
ALL_SITES = "*"
DEFAULT_SITE = "local"
PLAIN_CALLER = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
_SITE = re.compile(SITE_PATTERN)
_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_FILE_BYTES = 1 << 20  # a callers file of thousands of callers is far below this
log = logging.getLogger("ecgsearch.auth")


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


def parse(lines: Iterable[str], source: str = "callers file") -> Callers:
    """Callers from the lines of a callers file (strict grammar: the module doc); TokensFileError names
    the first bad line by number, never by its text."""
    tokens: list[tuple[bytes, Caller]] = []
    certs: list[tuple[str, Caller]] = []
    seen: set[str] = set()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if len(fields) == 1:
            raise TokensFileError(
                f"{where}: one field is not a caller (plain tokens and bare digests are refused: anyone who "
                "reads the file could use them); write 'name scopes sites sha256:<SHA-256 of the token>'"
            )
        if len(fields) != 4:
            raise TokensFileError(
                f"{where}: expected 'name scopes sites credential' (4 fields), got {len(fields)}"
            )
        name, scopes, sites, credential = fields
        caller = Caller(_name(name, where), _scopes(scopes, where), _sites(sites, where))
        kind, _, value = credential.partition(":")
        if kind == "sha256" and _DIGEST.fullmatch(value.lower()):
            key = "sha256:" + value.lower()
            tokens.append((bytes.fromhex(value), caller))
        elif kind == "cert" and value:
            key = "cert:" + value
            certs.append((value, caller))
        else:
            raise TokensFileError(
                f"{where}: credential must be 'sha256:<64 hex digits>' or 'cert:<certificate common name>'"
            )
        if key in seen:
            raise TokensFileError(f"{where}: this credential is already given to a caller on an earlier line")
        seen.add(key)
    return Callers(tuple(tokens), tuple(certs))


def _name(name: str, where: str) -> str:
    if not _NAME.fullmatch(name):
        raise TokensFileError(f"{where}: caller name must be 1-64 letters, digits or '._@:-'")
    return name


def _items(text: str, what: str, where: str) -> list[str]:
    """A comma-separated list with no empty item (``,``, ``a,``, ``a,,b`` are refused)."""
    items = text.split(",")
    if not all(items):
        raise TokensFileError(f"{where}: {what} is a comma-separated list without empty items")
    return items


def _scopes(text: str, where: str) -> frozenset[str]:
    scopes = frozenset(_items(text, "scopes", where))
    if scopes - set(SCOPES):
        raise TokensFileError(f"{where}: scopes are a comma-separated list of {', '.join(SCOPES)}")
    return scopes


def _sites(text: str, where: str) -> frozenset[str] | None:
    if text == ALL_SITES:
        return None
    sites = _items(text, "sites ('*' alone for every site)", where)
    if ALL_SITES in sites:
        raise TokensFileError(f"{where}: sites: '*' (every site) stands alone, never in a list")
    try:
        return frozenset(check_site(s) for s in sites)
    except ValueError:
        raise TokensFileError(f"{where}: site names are 1-64 letters, digits, '.', '_' or '-'") from None


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TokensFileError(f"cannot read callers file {path}: {reason}") from None


def _callers_of(content: bytes, path: Path) -> Callers:
    """Callers from a file's bytes: at most MAX_FILE_BYTES, UTF-8, the grammar (module doc)."""
    if len(content) > MAX_FILE_BYTES:
        raise TokensFileError(f"callers file {path} is over {MAX_FILE_BYTES} bytes")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        raise TokensFileError(f"{path} line {line}: not UTF-8 (byte {exc.start} of the file)") from None
    return parse(text.splitlines(), str(path))


class CallerRegistry:
    """The callers of a callers file (re-parsed when its content changes) plus fixed ones.

    ``fixed`` holds callers given outside the file (``ECGSEARCH_TOKENS``, tests). The file is read on
    every ``current()`` (a few kilobytes: microseconds) and parsed again only when its SHA-256 differs
    from the last one seen, so a rewrite that keeps size and modification time still counts. At start a
    broken file is fatal; later, an unreadable or invalid file is logged (once per distinct content)
    and the last valid callers stay in force.
    """

    def __init__(self, path: Path | None = None, fixed: Callers | None = None) -> None:
        self.path = path
        self._fixed = fixed or Callers()
        self._lock = threading.Lock()
        self._seen: bytes | None = None  # SHA-256 of the content last read, valid or not
        self._from_file = Callers()
        self.reload_error: str | None = None
        if path is not None:
            content = _read(path)
            self._from_file = _callers_of(content, path)  # at start a broken file is fatal
            self._seen = hashlib.sha256(content).digest()

    def _refresh(self, path: Path) -> None:
        try:
            content = _read(path)
        except TokensFileError as exc:  # e.g. briefly missing during an atomic replace
            self._failed(b"", str(exc))
            return
        seen = hashlib.sha256(content).digest()
        if seen == self._seen:
            return
        with self._lock:
            if seen == self._seen:
                return
            try:
                callers = _callers_of(content, path)
            except TokensFileError as exc:
                self._failed(seen, str(exc))
                return
            self._from_file, self._seen, self.reload_error = callers, seen, None
        count = len(callers.tokens) + len(callers.certificates)
        log.info("callers file %s reloaded: %d credentials", path, count)

    def _failed(self, seen: bytes, reason: str) -> None:
        """Keep the last valid callers; log why once per distinct broken content."""
        if self._seen == seen and self.reload_error is not None:
            return
        self._seen, self.reload_error = seen, reason
        log.error("%s; the last valid callers stay in force", reason)

    def current(self) -> Callers:
        """The callers now in force, re-parsing the file first if its content changed."""
        if self.path is not None:
            self._refresh(self.path)
        files = self._from_file
        return Callers(files.tokens + self._fixed.tokens, files.certificates + self._fixed.certificates)

    def __bool__(self) -> bool:
        return bool(self.current())


def plain_tokens(tokens: Iterable[str]) -> Callers:
    """Plain tokens (``ECGSEARCH_TOKENS``, ``run_server(token=...)``): caller ``default``, scope search."""
    caller = Caller(PLAIN_CALLER, frozenset({"search"}))
    return Callers(tuple((digest(t.strip()), caller) for t in tokens if t.strip()))
