"""Which local addresses the server's ICE agents gather candidates on.

aioice never gathers loopback, and gathers every other interface. Tests and single-host
setups need 127.0.0.1, and a server with several interfaces may want to name the
public one. aioice has no setting for this, so the address lookup it calls is replaced
for the whole process (aioice 0.13, pinned).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from aioice import ice, stun
from aiortc import RTCPeerConnection
from aiortc.sdp import candidate_from_sdp

from ..errors import BadRequest, Unprocessable
from .feedback import is_srtcp

logger = logging.getLogger(__name__)

_original_lookup = ice.get_host_addresses
_original_data_received = ice.Connection.data_received
_original_request_received = ice.Connection.request_received
_LOOPBACK = ("127.", "::1")
_chosen: list[str] = []


def gather_on(addresses: tuple[str, ...]) -> None:
    """Gather on exactly `addresses`; an empty tuple restores aioice's own choice."""
    _chosen[:] = addresses
    if not addresses:
        ice.get_host_addresses = _original_lookup
        ice.Connection.request_received = _original_request_received
        return

    def lookup(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a for a in _chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
        ]

    ice.get_host_addresses = lookup
    ice.Connection.request_received = _loopback_checks_only
    logger.info("ICE gathers on %s", ", ".join(addresses))


def _only_loopback() -> bool:
    return bool(_chosen) and all(a.startswith(_LOOPBACK) for a in _chosen)


def _loopback_checks_only(connection, message, addr, protocol) -> None:
    """Ignore connectivity checks from non-loopback addresses on a loopback-only server.

    Dropping a peer's other candidates from its offer is not enough: libwebrtc checks
    our 127.0.0.1 candidate from its LAN address too, and aioice would learn that
    address as a peer-reflexive candidate and send media to it. Left unanswered, the
    check fails and the pair from 127.0.0.1 is chosen.
    """
    if _only_loopback() and not addr[0].startswith(_LOOPBACK):
        return
    _original_request_received(connection, message, addr, protocol)


def reachable(address: str) -> bool:
    """Whether the server may send connectivity checks to a peer's `address`.

    mDNS names (`.local`) would need a multicast lookup, and a server that gathers only
    on loopback has no business sending checks to a peer's other addresses (browsers
    offer every interface they have).
    """
    if address.endswith(".local"):
        return False
    only_loopback = _only_loopback()
    return not only_loopback or address.startswith(_LOOPBACK)


def reachable_candidates(sdp: str) -> str:
    """Drop the remote candidates the server must not or cannot try (see `reachable`)."""
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if not reachable(fields[4] if len(fields) > 4 else ""):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


# Trickle ICE over HTTP PATCH (RFC 9725 section 4.3, RFC 8840 sdpfrag bodies)


class Fragment:
    """What a trickle-ice-sdpfrag body says: credentials, candidates, their end."""

    def __init__(self) -> None:
        self.ufrag: str | None = None
        self.pwd: str | None = None
        # (the a=mid of the section it was in, the value after "a=candidate:")
        self.candidates: list[tuple[str | None, str]] = []
        self.ended = False


def parse_fragment(text: str) -> Fragment:
    fragment = Fragment()
    mid = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=ice-ufrag:"):
            fragment.ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            fragment.pwd = line[len("a=ice-pwd:") :]
        elif line.startswith("a=candidate:"):
            fragment.candidates.append((mid, line[len("a=candidate:") :]))
        elif line == "a=end-of-candidates":
            fragment.ended = True
    return fragment


async def trickle(pc: RTCPeerConnection, text: str) -> int:
    """Apply a PATCH body's candidates to `pc`; returns how many were added.

    New credentials ask for an ICE restart, which aiortc cannot do (RELAY-NOTES.md):
    that is refused with Unprocessable, and the connection carries on untouched.
    """
    fragment = parse_fragment(text)
    remote = pc.remoteDescription
    if remote is None:
        raise Unprocessable("This connection has no offer yet to add candidates to.")
    ufrag, pwd = _remote_credentials(remote.sdp)
    if (fragment.ufrag not in (None, ufrag)) or (fragment.pwd not in (None, pwd)):
        raise Unprocessable(
            "ICE restarts are not supported: end this connection and start again "
            "with a new offer."
        )

    # aiortc gives a candidate to the transport of the transceiver its mid names; under
    # BUNDLE that is the one shared transport. A candidate without a known mid goes to
    # the first transceiver's (the bundle's, in every offer WHIP clients make).
    mids = [t.mid for t in pc.getTransceivers() if t.mid is not None]
    if not mids:
        raise Unprocessable("This connection has no media to add candidates to.")
    added = 0
    for mid, value in fragment.candidates:
        candidate = _read_candidate(value)
        if not reachable(candidate.ip):
            continue
        candidate.sdpMid = mid if mid in mids else mids[0]
        await pc.addIceCandidate(candidate)
        added += 1
    if fragment.ended:
        await pc.addIceCandidate(None)
    return added


def _read_candidate(value: str):
    # foundation component transport priority address port "typ" type [extensions]
    fields = value.split()
    try:
        if len(fields) < 8 or fields[6] != "typ":
            raise ValueError(value)
        return candidate_from_sdp(value)
    except ValueError:
        raise BadRequest(
            "A candidate line in the PATCH body could not be read."
        ) from None


def _remote_credentials(sdp: str) -> tuple[str | None, str | None]:
    ufrag = pwd = None
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:") and pwd is None:
            pwd = line[len("a=ice-pwd:") :]
    return ufrag, pwd


# Consent freshness (RFC 7675). aioice asks the peer every ~5 s whether it still wants
# our packets and closes the connection after 6 unanswered checks. ffmpeg's WHIP
# muxer never answers them, so every ffmpeg show was cut after about 30 s. A peer
# whose packets keep reaching us over the pair is evidently there: checks it leaves
# unanswered count against it only when nothing else came from it either.


def _data_received(connection, data: bytes, component: int) -> None:
    connection.stage_last_data = time.monotonic()
    # A viewer's RTCP is read right here (feedback.py) instead of queued for aiortc.
    feedback = getattr(connection, "stage_feedback", None)
    if feedback is not None and is_srtcp(data) and feedback.datagram_received(data):
        return
    _original_data_received(connection, data, component)


async def _query_consent(connection) -> None:
    unanswered = 0
    while True:
        interval = ice.CONSENT_INTERVAL * random.uniform(0.8, 1.2)
        await asyncio.sleep(interval)
        heard = time.monotonic() - getattr(connection, "stage_last_data", 0.0)
        for pair in list(connection._nominated.values()):
            check = connection.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(
                    check,
                    pair.remote_addr,
                    integrity_key=connection.remote_password.encode("utf8"),
                    retransmissions=0,
                )
                unanswered = 0
            except stun.TransactionError:
                unanswered = 0 if heard < interval else unanswered + 1
        if unanswered >= ice.CONSENT_FAILURES:
            logger.info(
                "ICE consent expired: the peer answers nothing and sends nothing"
            )
            connection._query_consent_task = None
            await connection.close()
            return


ice.Connection.data_received = _data_received
ice.Connection.query_consent = _query_consent
