"""Which requests the viewer answers: a ``Host`` it is known by, and no cross-origin writes.

DNS rebinding points a name the attacker controls at the viewer's address, so a page of the attacker's
can read the viewer's pages (the browser sees one origin). The viewer therefore answers only a ``Host``
header naming it: by default the loopback names and the address it is bound to, plus each
``--allowed-host`` (the name clients or an authenticating proxy use). The port is not compared: the
name is what rebinding changes.

A cross-site form POST (CSRF) needs no reading of the answer; the browser says where a request comes
from in ``Origin`` (and ``Sec-Fetch-Site``). A POST whose ``Origin`` is not the viewer's own host and
port, or is ``null``, or that the browser marks as cross-site, is refused with 403. A request without
either header (curl, scripts) is not a browser's cross-site request and passes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*\.?")
_HOST = re.compile(r"(?P<name>\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")
DEFAULT_PORTS = {"http": 80, "https": 443}


def check_host_name(name: str) -> str:
    """An allow-list entry: a DNS name or an IP address, no port and no wildcard; lower-cased."""
    value = name.strip().lower()
    bare = value.strip("[]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if len(value) > 253 or not _NAME.fullmatch(value):
        raise ValueError(f"{name[:80]!r} is not a host name or IP address (no port, no wildcard)")
    return value.rstrip(".")


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The loopback names, the bound address (unless a wildcard) and ``extra``, each normalised."""
    names = {check_host_name(h) for h in (*LOOPBACK_HOSTS, *extra)}
    if bound.strip("[]") not in WILDCARDS:
        names.add(check_host_name(bound))
    return frozenset(names)


def split_host(header: str | None) -> tuple[str, int | None] | None:
    """``Host`` (or an origin's netloc) as (normalised name, port or None); None when malformed."""
    if not header:
        return None
    found = _HOST.fullmatch(header.strip())
    if found is None:
        return None
    port = int(found["port"]) if found["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    try:
        return check_host_name(found["name"]), port
    except ValueError:
        return None


def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a ``Host`` header names this viewer."""
    parsed = split_host(header)
    return parsed is not None and parsed[0] in allowed


def cross_origin(origin: str | None, fetch_site: str | None, host: str | None) -> bool:
    """Whether a write comes from another origin: ``Origin`` other than the request's own host and
    port (``null`` included), or ``Sec-Fetch-Site`` saying cross-site or same-site."""
    if fetch_site is not None and fetch_site.strip().lower() in ("cross-site", "same-site"):
        return True
    if origin is None:
        return False
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or parts.path or parts.query or parts.fragment:
        return True  # "null", file:, junk
    sender, own = split_host(parts.netloc), split_host(host)
    if sender is None or own is None:
        return True
    default = DEFAULT_PORTS[parts.scheme]  # behind a TLS proxy, Host has no port and Origin is https
    return (sender[0], sender[1] or default) != (own[0], own[1] or default)
