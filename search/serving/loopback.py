"""Whether an address listens on this machine only: the one rule by which the service refuses plaintext
and the viewer refuses to serve without a login on an address other machines can reach."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True for the loopback names, 127.0.0.0/8 and ::1 (brackets and case ignored)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
