"""WHIP and WHEP protocol details (RFC 9725): trickle PATCH, ICE restarts, ICE server
links, CORS, a full server, and the DTLS role the server takes.

Real HTTP to the real app and real aiortc peers, as in test_server_contract.py.
"""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest
from aiortc import RTCCertificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from stage.appkeys import VENUE
from stage.config import Settings
from tests import test_server_contract
from tests.peers import Viewer, new_pc
from tests.test_server_contract import (
    SDP,
    UNKNOWN_VIEWER,
    assert_error,
    bearer,
    call,
    connect,
    receiving_offer,
    sending_offer,
    wait_live,
    whip,
    without_lines,
)

closing = test_server_contract.closing  # the fixture, shared

TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}
ICE_SERVERS = ("stun:127.0.0.1:9", "turn:127.0.0.1:9?transport=udp")


def candidate_lines(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


def credentials(sdp: str) -> tuple[str, str]:
    lines = sdp.splitlines()
    ufrag = next(x for x in lines if x.startswith("a=ice-ufrag:"))
    pwd = next(x for x in lines if x.startswith("a=ice-pwd:"))
    return ufrag, pwd


def fragment(sdp: str, candidates: list[str], end=True) -> str:
    """An RFC 8840 sdpfrag as WHIP clients send it: credentials, one m= section."""
    ufrag, pwd = credentials(sdp)
    mid = next(x for x in sdp.splitlines() if x.startswith("a=mid:"))
    lines = [ufrag, pwd, "m=audio 9 UDP/TLS/RTP/SAVPF 0", mid, *candidates]
    if end:
        lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"


def stripped(sdp: str) -> str:
    return without_lines(without_lines(sdp, "a=candidate"), "a=end-of-candidates")


def remote_addresses(pc) -> set[str]:
    transport = pc.getTransceivers()[0].receiver.transport.transport
    return {c.ip for c in transport.getRemoteCandidates()}


async def publishing(server, http, new_stage, closing, offer_change=stripped):
    """A stage, an aiortc publisher's offer sent (changed), the server's publisher."""
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    status, headers, answer = await whip(server, http, stage, offer_change(offer))
    assert status == 201, f"WHIP: {status} {answer!r}"
    location = headers["Location"]
    publisher_id = location.rsplit("/", 1)[-1]
    publisher = server.app[VENUE].publishers[publisher_id]
    return stage, pc, offer, answer, location, publisher


# trickle


async def test_whip_patch_with_trickled_candidates_adds_them_and_is_204(
    server, http, new_stage, closing
):
    stage, pc, offer, answer, location, publisher = await publishing(
        server, http, new_stage, closing
    )
    assert remote_addresses(publisher.pc) == set(), "the offer had no candidates"

    # What a browser trickles on a machine with a LAN address and mDNS switched on.
    loopback = candidate_lines(offer)
    assert loopback, f"the test publisher gathered no candidates: {offer}"
    others = [
        "a=candidate:9 1 udp 2122260223 192.0.2.7 50000 typ host",
        "a=candidate:8 1 udp 2122260223 4f2c-test.local 50001 typ host",
    ]
    status, headers, body = await call(
        http,
        "PATCH",
        server.base + location,
        data=fragment(offer, loopback + others),
        headers={**TRICKLE, **bearer(stage["key"])},
    )
    assert status == 204, f"PATCH with candidates: {status} {body!r}"
    assert remote_addresses(publisher.pc) == {"127.0.0.1"}, (
        "the server should hold exactly the trickled loopback candidates, "
        f"got {remote_addresses(publisher.pc)}"
    )
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])


async def test_whep_patch_with_trickled_candidates_is_204(
    server, http, new_stage, closing
):
    stage, ppc, poffer, panswer, _, _ = await publishing(
        server, http, new_stage, closing, offer_change=lambda sdp: sdp
    )
    await connect(ppc, panswer)
    await wait_live(server, http, stage["id"])

    pc = closing(new_pc())
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    status, headers, answer = await call(
        http, "POST", f"{server.base}/whep", data=stripped(offer), headers=SDP
    )
    assert status == 201, f"WHEP: {status} {answer!r}"
    viewer = server.app[VENUE].viewers[headers["Location"].rsplit("/", 1)[-1]]
    status, _, body = await call(
        http,
        "PATCH",
        server.base + headers["Location"],
        data=fragment(offer, candidate_lines(offer)),
        headers=TRICKLE,
    )
    assert status == 204, f"WHEP PATCH: {status} {body!r}"
    assert remote_addresses(viewer.pc) == {"127.0.0.1"}, remote_addresses(viewer.pc)
    await connect(pc, answer)


async def test_whip_patch_asking_for_an_ice_restart_is_422_and_the_show_goes_on(
    server, http, new_stage, closing
):
    stage, pc, offer, answer, location, publisher = await publishing(
        server, http, new_stage, closing, offer_change=lambda sdp: sdp
    )
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])

    restart = (
        "a=ice-ufrag:newfrag1\r\na=ice-pwd:aNewPasswordOf22Chars0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
    )
    status, _, body = await call(
        http,
        "PATCH",
        server.base + location,
        data=restart,
        headers={**TRICKLE, **bearer(stage["key"]), "If-Match": "*"},
    )
    assert_error(status, body, 422, "PATCH with new ICE credentials")
    await asyncio.sleep(0.5)
    assert publisher.pc.connectionState == "connected", publisher.pc.connectionState
    await wait_live(server, http, stage["id"])


async def test_whip_patch_refusals(server, http, new_stage, closing):
    stage, pc, offer, answer, location, publisher = await publishing(
        server, http, new_stage, closing
    )
    body_ok = fragment(offer, candidate_lines(offer))
    url = server.base + location
    key = bearer(stage["key"])

    cases = [
        ("as application/sdp", url, body_ok, {**SDP, **key}, 415),
        ("without a key", url, body_ok, TRICKLE, 401),
        ("with a wrong key", url, body_ok, {**TRICKLE, **bearer("nope")}, 401),
        (
            "to an unknown publisher",
            f"{server.base}/whip/{stage['id']}/publishers/{UNKNOWN_VIEWER}",
            body_ok,
            {**TRICKLE, **key},
            404,
        ),
        (
            "with a broken candidate",
            url,
            fragment(offer, ["a=candidate:1 1 udp"], end=False),
            {**TRICKLE, **key},
            400,
        ),
    ]
    for what, target, data, headers, expected in cases:
        status, _, body = await call(http, "PATCH", target, data=data, headers=headers)
        assert_error(status, body, expected, f"WHIP PATCH {what}")
    assert remote_addresses(publisher.pc) == set(), "a refused PATCH added candidates"

    status, _, body = await call(
        http,
        "PATCH",
        f"{server.base}/whep/viewers/{UNKNOWN_VIEWER}",
        data=body_ok,
        headers=TRICKLE,
    )
    assert_error(status, body, 404, "WHEP PATCH to an unknown viewer")


# ICE servers and CORS


@pytest.fixture
def settings(request, tmp_path):
    """Tests marked `with_ice_servers` get STUN/TURN URLs (a closed loopback port), and
    every test here a server that carries at most two stages."""
    marked = request.node.get_closest_marker("with_ice_servers") is not None
    return Settings(
        data=tmp_path / "data",
        ice_addresses=("127.0.0.1",),
        view_seconds=1.0,
        ice_servers=ICE_SERVERS if marked else (),
        max_stages=2,
    )


def ice_server_links(headers) -> list[str]:
    return headers.getall("Link", [])


EXPECTED_LINKS = [f'<{url}>; rel="ice-server"' for url in ICE_SERVERS]


@pytest.mark.with_ice_servers
@pytest.mark.parametrize("path", ["/whip/{id}", "/whep", "/whep/{id}"])
async def test_options_answers_cors_with_accept_post_and_ice_servers(
    server, http, new_stage, path
):
    stage = await new_stage()
    async with http.options(
        server.base + path.format(id=stage["id"]),
        headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "POST",
        },
    ) as response:
        assert response.status == 204, await response.text()
        headers = response.headers
        links = ice_server_links(response.headers)
    assert headers.get("Accept-Post") == "application/sdp", dict(headers)
    assert headers.get("Access-Control-Allow-Origin") == "*", dict(headers)
    methods = headers.get("Access-Control-Allow-Methods", "")
    assert {"POST", "PATCH", "DELETE"} <= {m.strip() for m in methods.split(",")}
    assert "Link" in headers.get("Access-Control-Expose-Headers", ""), dict(headers)
    assert links == EXPECTED_LINKS, f"OPTIONS {path} Link headers: {links}"


@pytest.mark.with_ice_servers
async def test_201_answers_carry_the_ice_servers_as_links(
    server, http, new_stage, closing
):
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    async with http.post(
        f"{server.base}/whip/{stage['id']}",
        data=offer,
        headers={**SDP, **bearer(stage["key"])},
    ) as response:
        answer = await response.text()
        assert response.status == 201, answer
        links = ice_server_links(response.headers)
    assert links == EXPECTED_LINKS, f"WHIP 201 Link headers: {links}"
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])

    async with http.post(
        f"{server.base}/whep",
        data=await receiving_offer(closing),
        headers=SDP,
    ) as response:
        assert response.status == 201, await response.text()
        links = ice_server_links(response.headers)
    assert links == EXPECTED_LINKS, f"WHEP 201 Link headers: {links}"


# a full server


async def test_whip_when_the_server_is_full_is_503_with_retry_after(
    server, http, new_stage, closing
):
    """max_stages=2 here: a third stage is refused, the two live ones may republish."""
    stages = [await new_stage(f"Band {n}") for n in range(3)]
    for stage in stages[:2]:
        pc, offer = await sending_offer(closing)
        status, _, answer = await whip(server, http, stage, offer)
        assert status == 201, answer
        await connect(pc, answer)

    pc, offer = await sending_offer(closing)
    status, headers, body = await whip(server, http, stages[2], offer)
    assert_error(status, body, 503, "WHIP past max_stages")
    assert int(headers.get("Retry-After", "0")) > 0, headers
    assert len(server.app[VENUE].publishers) == 2, "the refused publisher was kept"

    pc, offer = await sending_offer(closing)
    status, _, answer = await whip(server, http, stages[0], offer)
    assert status == 201, f"a live stage publishing again at the cap: {answer!r}"
    await connect(pc, answer)
    await wait_live(server, http, stages[0]["id"])


# DTLS role


def setup_attribute(sdp: str) -> set[str]:
    return {x for x in sdp.splitlines() if x.startswith("a=setup:")}


async def test_answer_to_actpass_is_passive_and_an_aiortc_publisher_connects(
    server, http, new_stage, closing
):
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    assert setup_attribute(offer) == {"a=setup:actpass"}, setup_attribute(offer)
    status, _, answer = await whip(server, http, stage, offer)
    assert status == 201, answer
    assert setup_attribute(answer) == {"a=setup:passive"}, (
        f"the server should take the DTLS server role: {setup_attribute(answer)}"
    )
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])

    viewer = closing(await Viewer(server.base).start())
    await viewer.wait_video(count=10, timeout=10)


@pytest.mark.parametrize("setup", ["active", "passive"])
async def test_an_offer_that_fixes_the_dtls_role_gets_the_other_one(
    server, http, new_stage, closing, setup
):
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    status, _, answer = await whip(
        server, http, stage, offer.replace("a=setup:actpass", f"a=setup:{setup}")
    )
    assert status == 201, answer
    other = {"active": "passive", "passive": "active"}[setup]
    assert setup_attribute(answer) == {f"a=setup:{other}"}, setup_attribute(answer)


def rsa_certificate() -> RTCCertificate:
    """An RSA certificate like GStreamer's webrtcbin uses (aiortc makes ECDSA ones)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa-publisher")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return RTCCertificate(key=key, cert=cert)


async def test_a_publisher_with_an_rsa_certificate_connects(
    server, http, new_stage, closing
):
    """aiortc as DTLS client offers only ECDSA suites, which an RSA peer acting as DTLS
    server cannot use; as DTLS server the relay accepts the RSA peer's certificate."""
    stage = await new_stage()
    pc = closing(new_pc())
    # The test client's own certificate, swapped before any transport is made.
    pc._RTCPeerConnection__certificates = [rsa_certificate()]
    from tests.peers import PatternTrack

    pc.addTransceiver(PatternTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    status, _, answer = await whip(server, http, stage, pc.localDescription.sdp)
    assert status == 201, answer
    started = time.monotonic()
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])
    viewer = closing(await Viewer(server.base).start())
    await viewer.wait_video(count=10, timeout=10)
    print(f"RSA publisher connected in {time.monotonic() - started:.2f} s")


async def test_signalling_refusals_are_readable_by_pages_elsewhere(
    server, http, new_stage
):
    """A player on another site must see "wrong key" or "not live, retry": every WHIP
    and WHEP response, 4xx included, allows any origin and exposes Retry-After."""
    stage = await new_stage()
    refusals = [
        ("POST", f"/whip/{stage['id']}", {"Authorization": "Bearer wrong"}, 401),
        ("POST", "/whip/nosuchstage", {}, 404),
        ("DELETE", f"/whip/{stage['id']}/publishers/gone", {}, 401),
        ("PATCH", "/whep/viewers/gone", {}, 404),
    ]
    for method, path, headers, expected in refusals:
        headers = {"Content-Type": "application/sdp", **headers}
        async with http.request(
            method, server.base + path, data="v=0\r\n", headers=headers
        ) as response:
            assert response.status == expected, (path, await response.text())
            assert (await response.json())["error"]
            assert response.headers.get("Access-Control-Allow-Origin") == "*", path
            exposed = response.headers.get("Access-Control-Expose-Headers", "")
            assert "Retry-After" in exposed, (path, exposed)
    # The rest of the site keeps to itself: the dashboard API is not opened up.
    async with http.get(f"{server.base}/api/stages") as response:
        assert "Access-Control-Allow-Origin" not in response.headers
