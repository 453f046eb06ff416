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


def gather_on(addresses: tuple[str, ...]) -> None:
    """Gather on exactly `addresses`; an empty tuple restores aioice's own choice."""
    if not addresses:
        ice.get_host_addresses = _original_lookup
        return

    chosen = list(addresses)

    def lookup(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    ice.get_host_addresses = lookup
    logger.info("ICE gathers on %s", ", ".join(chosen))
