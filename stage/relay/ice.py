"""Which local addresses the server's ICE agents gather candidates on.

aioice never gathers loopback, and gathers every other interface. Tests and single-host
setups need 127.0.0.1, and a server with several interfaces may want to name the
public one. aioice has no setting for this, so the address lookup it calls is replaced
for the whole process (aioice 0.13, pinned).
"""

from __future__ import annotations

import logging

from aioice import ice

logger = logging.getLogger(__name__)

_original_lookup = ice.get_host_addresses
_LOOPBACK = ("127.", "::1")
_chosen: list[str] = []


def gather_on(addresses: tuple[str, ...]) -> None:
    """Gather on exactly `addresses`; an empty tuple restores aioice's own choice."""
    _chosen[:] = addresses
    if not addresses:
        ice.get_host_addresses = _original_lookup
        return

    def lookup(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a for a in _chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
        ]

    ice.get_host_addresses = lookup
    logger.info("ICE gathers on %s", ", ".join(addresses))


def reachable_candidates(sdp: str) -> str:
    """Drop remote candidates the server must not or cannot try.

    mDNS names (`.local`) would need a multicast lookup, and a server that gathers only
    on loopback has no business sending checks to a peer's other addresses (browsers
    offer every interface they have).
    """
    only_loopback = bool(_chosen) and all(a.startswith(_LOOPBACK) for a in _chosen)
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            address = fields[4] if len(fields) > 4 else ""
            if address.endswith(".local"):
                continue
            if only_loopback and not address.startswith(_LOOPBACK):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"
