"""The public HTTP contract and bad input: real HTTP to the real app, real aiortc peers.

Every rejected request is followed by a look at what the server kept: no stage row,
no publisher, no viewer, no live stage. Scenarios from FIELD-FAILURES.md are named
where they apply (B29, B33, B35, B36, B37, B39, B40, B42).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time

import pytest
from aiohttp import ClientSession, CookieJar
from aiortc import RTCPeerConnection, RTCSessionDescription

from stage.appkeys import VENUE
from stage.server import create_app
from tests.peers import (
    PatternTrack,
    Publisher,
    ToneTrack,
    Viewer,
    new_pc,
    wait_connected,
)

UNKNOWN_STAGE = "000000000000"
UNKNOWN_VIEWER = "0123456789abcdef"
SDP = {"Content-Type": "application/sdp"}


# helpers


@pytest.fixture
async def closing(server):
    """Peer connections and peers to close at the end, even when a test fails.

    Depends on `server` so that the clients go before the server does.
    """
    items: list = []

    def keep(item):
        items.append(item)
        return item

    yield keep
    for item in reversed(items):
        try:
            if isinstance(item, RTCPeerConnection):
                await item.close()
            else:
                await item.stop(say_goodbye=False)
        except Exception:
            pass


def stage_rows(settings) -> int:
    db = sqlite3.connect(settings.database)
    try:
        return db.execute("SELECT COUNT(*) FROM stages").fetchone()[0]
    finally:
        db.close()


async def call(http, method, url, **kwargs) -> tuple[int, dict, object]:
    """One request; the body as JSON when it is JSON, else as text."""
    async with http.request(method, url, **kwargs) as response:
        if response.content_type == "application/json":
            body = await response.json()
        else:
            body = await response.text()
        return response.status, dict(response.headers), body


def assert_error(status, body, expected, what):
    expected = expected if isinstance(expected, tuple | set) else (expected,)
    assert status in expected, f"{what}: got {status} {body!r}, expected {expected}"
    assert isinstance(body, dict) and isinstance(body.get("error"), str), (
        f"{what}: the error is not JSON {{'error': ...}}: {body!r}"
    )
    message = body["error"]
    assert message.strip() and "Traceback" not in message and len(message) < 500, (
        f"{what}: the error is not a short sentence for a person: {message!r}"
    )


async def live_ids(server, http) -> list[str]:
    status, _, body = await call(http, "GET", f"{server.base}/api/stages")
    assert status == 200, f"GET /api/stages stopped working: {status} {body!r}"
    return [s["id"] for s in body["stages"]]


async def wait_live(server, http, stage_id, live=True, timeout=5.0) -> None:
    deadline = time.monotonic() + timeout
    while (stage_id in await live_ids(server, http)) != live:
        assert time.monotonic() < deadline, (
            f"stage {stage_id} is {'not ' if live else ''}live after {timeout} s"
        )
        await asyncio.sleep(0.05)


async def stage_info(server, http, stage_id) -> dict:
    status, _, body = await call(http, "GET", f"{server.base}/api/stages/{stage_id}")
    assert status == 200, f"GET /api/stages/{stage_id}: {status} {body!r}"
    return body


async def performances(server, http, stage) -> list[dict]:
    status, _, body = await call(
        http,
        "GET",
        f"{server.base}/api/stages/{stage['id']}/performances",
        headers={"Authorization": f"Bearer {stage['key']}"},
    )
    assert status == 200, f"performances: {status} {body!r}"
    return body["performances"]


async def assert_nothing_left(server, http, stage_id=None, what=""):
    venue = server.app[VENUE]
    # A rejected offer must not leave a half-built connection behind (B29), even one
    # that is only registered a moment later.
    await asyncio.sleep(0.05)
    assert venue.publishers == {}, (
        f"{what}: leftover publishers {list(venue.publishers)}"
    )
    assert venue.hubs == {}, f"{what}: leftover live hubs {list(venue.hubs)}"
    assert venue.viewers == {}, f"{what}: leftover viewers {list(venue.viewers)}"
    assert await live_ids(server, http) == [], f"{what}: a stage is listed as live"
    if stage_id is not None:
        info = await stage_info(server, http, stage_id)
        assert info["live"] is False, f"{what}: the stage is live: {info}"


async def sending_offer(
    closing, audio=True, video=True
) -> tuple[RTCPeerConnection, str]:
    """A real aiortc publisher's offer (tracks that send), its pc kept open."""
    pc = closing(new_pc())
    if audio:
        pc.addTransceiver(ToneTrack(), direction="sendonly")
    if video:
        pc.addTransceiver(PatternTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def receiving_offer(closing, audio=True, video=True) -> str:
    pc = closing(new_pc())
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    if video:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


def bearer(key) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def whip(server, http, stage, sdp, headers=None, query=""):
    return await call(
        http,
        "POST",
        f"{server.base}/whip/{stage['id']}{query}",
        data=sdp,
        headers={**SDP, **bearer(stage["key"]), **(headers or {})},
    )


async def connect(pc, answer) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await wait_connected(pc)


def without_lines(sdp: str, prefix: str) -> str:
    return "".join(
        line + "\r\n" for line in sdp.splitlines() if not line.startswith(prefix)
    )


def with_codecs_renamed(sdp: str) -> str:
    """Every audio and video codec the relay takes renamed to one it does not."""
    names = {"opus": "XOPUS", "VP8": "H265", "H264": "AV1X"}
    lines = []
    for line in sdp.splitlines():
        match = re.match(r"(a=rtpmap:\d+ )([\w-]+)(/.*)", line)
        if match and match.group(2) in names:
            line = match.group(1) + names[match.group(2)] + match.group(3)
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


# POST /api/stages


async def test_create_stage_returns_id_name_key_and_the_key_publishes(
    server, http, settings, closing
):
    status, headers, body = await call(
        http, "POST", f"{server.base}/api/stages", json={"name": "  The   Band "}
    )
    assert status == 201, f"create: {status} {body!r}"
    assert set(body) >= {"id", "name", "key"}, f"create answered {body!r}"
    assert body["name"] == "The Band", f"name not tidied: {body['name']!r}"
    assert stage_rows(settings) == 1

    pc, offer = await sending_offer(closing)
    status, headers, answer = await whip(server, http, body, offer)
    assert status == 201, f"the key from create did not publish: {status} {answer!r}"
    await connect(pc, answer)
    await wait_live(server, http, body["id"])


async def test_a_name_of_exactly_80_characters_is_accepted(server, http, settings):
    status, _, body = await call(
        http, "POST", f"{server.base}/api/stages", json={"name": "n" * 80}
    )
    assert status == 201, f"80-character name: {status} {body!r}"
    assert stage_rows(settings) == 1


BAD_STAGE_BODIES = {
    "empty name": dict(json={"name": ""}),
    "whitespace-only name": dict(json={"name": " \t\n  "}),
    "81-character name": dict(json={"name": "n" * 81}),
    "10000-character name": dict(json={"name": "n" * 10_000}),
    "control characters in name": dict(json={"name": "a\x00b\x07c"}),
    "no name": dict(json={"tags": ["x"]}),
    "name as number": dict(json={"name": 42}),
    "name as null": dict(json={"name": None}),
    "name as list": dict(json={"name": ["a"]}),
    "invalid JSON": dict(
        data=b'{"name": "x"', headers={"Content-Type": "application/json"}
    ),
    "empty body": dict(data=b"", headers={"Content-Type": "application/json"}),
    "JSON array": dict(data=b'["x"]', headers={"Content-Type": "application/json"}),
    "JSON string": dict(data=b'"x"', headers={"Content-Type": "application/json"}),
    "JSON null": dict(data=b"null", headers={"Content-Type": "application/json"}),
    "not UTF-8": dict(
        data=b'{"name": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    ),
    # 16,000 bytes, under the size limit: deep nesting must be a 400, not a crash.
    "deeply nested JSON array": dict(
        data=b"[" * 8000 + b"]" * 8000, headers={"Content-Type": "application/json"}
    ),
    "deeply nested JSON object": dict(
        data=b'{"a":' * 2500 + b"1" + b"}" * 2500,
        headers={"Content-Type": "application/json"},
    ),
}


@pytest.mark.parametrize("case", list(BAD_STAGE_BODIES))
async def test_bad_create_is_400_and_creates_nothing(server, http, settings, case):
    status, _, body = await call(
        http, "POST", f"{server.base}/api/stages", **BAD_STAGE_BODIES[case]
    )
    assert_error(status, body, 400, f"POST /api/stages with {case}")
    assert stage_rows(settings) == 0, f"{case}: a stage row was created"
    assert await live_ids(server, http) == []


async def test_create_with_wrong_content_type_is_refused(server, http, settings):
    status, _, body = await call(
        http,
        "POST",
        f"{server.base}/api/stages",
        data='{"name": "x"}',
        headers={"Content-Type": "text/plain"},
    )
    assert_error(status, body, (400, 415), "POST /api/stages as text/plain")
    assert stage_rows(settings) == 0
    assert await live_ids(server, http) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_create_with_10_mb_body_is_413(server, http, settings, chunked):
    payload = b'{"name": "' + b"x" * (10 * 1024 * 1024) + b'"}'

    async def body():
        for start in range(0, len(payload), 256 * 1024):
            yield payload[start : start + 256 * 1024]

    status, _, answer = await call(
        http,
        "POST",
        f"{server.base}/api/stages",
        data=body() if chunked else payload,
        headers={"Content-Type": "application/json"},
    )
    assert_error(
        status, answer, 413, f"10 MB JSON body ({'chunked' if chunked else 'sized'})"
    )
    assert stage_rows(settings) == 0
    assert await live_ids(server, http) == []


# HTTP that cannot be parsed: answered 400 by aiohttp, logged by Stage in one line

MALFORMED = {
    "content-length-not-a-number": (
        b"POST /api/stages HTTP/1.1\r\nHost: stage\r\nContent-Length: abc\r\n\r\n"
    ),
    "request-line-of-20000-bytes": (
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: stage\r\n\r\n"
    ),
}


async def status_of_raw(host: str, port: int, request: bytes) -> bytes:
    """Send `request` as it is on a new connection; the status line that came back."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_http_is_400_and_one_log_line_without_traceback(
    server, case
):
    """A client's broken request is the client's error: no ERROR, no traceback."""
    # Collected by hand: `.ci/run` runs pytest without its logging plugin (caplog).
    root, collect = logging.getLogger(), Collect()
    records: list[logging.LogRecord] = []
    collect.emit = records.append
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(collect)
    try:
        status = await status_of_raw(server.host, server.port, MALFORMED[case])
    finally:
        root.removeHandler(collect)
        root.setLevel(level)
    assert status.split()[1:2] == [b"400"], (case, status)

    said = [(r.name, r.levelname, r.getMessage()) for r in records]
    loud = [
        (r.name, r.levelname, r.getMessage())
        for r in records
        if r.levelno >= logging.WARNING or r.exc_info
    ]
    assert loud == [], f"{case}: logged loud or with a traceback: {loud}"
    brief = [m for _, _, m in said if m.startswith("malformed request from")]
    assert len(brief) == 1 and "\n" not in brief[0], (case, said)


async def test_an_unexpected_error_still_logs_its_traceback(aiohttp_server, settings):
    """The brief line is for clients' protocol errors only: a handler that fails is
    a 500 and an ERROR with its traceback, as before."""

    async def broken(request):
        raise RuntimeError("a bug in a handler")

    app = create_app(settings)
    app.router.add_get("/broken", broken)
    srv = await aiohttp_server(app, host="127.0.0.1")
    root, collect = logging.getLogger(), Collect()
    errors: list[logging.LogRecord] = []
    collect.emit = errors.append
    root.addHandler(collect)
    try:
        status = await status_of_raw(
            srv.host, srv.port, b"GET /broken HTTP/1.1\r\nHost: stage\r\n\r\n"
        )
    finally:
        root.removeHandler(collect)
    assert status.split()[1:2] == [b"500"], status
    failed = [r for r in errors if r.levelno >= logging.ERROR and r.exc_info]
    assert failed and failed[0].exc_info[0] is RuntimeError, errors


# GET stages and performances


async def test_unknown_stage_is_404_json(server, http):
    status, _, body = await call(
        http, "GET", f"{server.base}/api/stages/{UNKNOWN_STAGE}"
    )
    assert_error(status, body, 404, "GET /api/stages/{unknown}")


async def test_unknown_stage_page_is_404(server, http):
    status, _, body = await call(http, "GET", f"{server.base}/stages/{UNKNOWN_STAGE}")
    assert status == 404, f"GET /stages/{{unknown}}: {status} {str(body)[:200]!r}"
    # A page for a person, not raw JSON.
    assert "<html" in str(body) and "There is no stage with this id" in str(body), body


@pytest.mark.parametrize("path", ["/nope/nope", "/static/../README.md", "/watch/x"])
async def test_a_mistyped_link_gets_the_sites_not_found_page(server, http, path):
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    async with http.get(server.base + path, headers=browser) as response:
        page = await response.text()
        assert response.status == 404, (response.status, page[:200])
        assert response.content_type == "text/html", response.content_type
    assert "There is no page here." in page and 'href="/watch"' in page, page[:500]
    # A script asking for anything still gets a short answer, and the API JSON.
    async with http.get(server.base + path, headers={"Accept": "*/*"}) as response:
        assert response.status == 404 and "<html" not in await response.text()
    status, _, body = await call(http, "GET", f"{server.base}/api/nope")
    assert_error(status, body, 404, "GET /api/nope")


async def test_performances_need_the_right_key(server, http, new_stage):
    stage = await new_stage()
    url = f"{server.base}/api/stages/{stage['id']}/performances"
    # A fresh session: creating the stage set the dashboard cookie on `http`.
    async with ClientSession() as stranger:
        status, _, body = await call(stranger, "GET", url)
        assert_error(status, body, 401, "performances without a key")
        status, _, body = await call(stranger, "GET", url, headers=bearer("wrong"))
        assert_error(status, body, 401, "performances with a wrong key")
        status, _, body = await call(stranger, "GET", url, headers=bearer(stage["key"]))
        assert status == 200, f"performances with the key: {status} {body!r}"
        assert body == {"performances": []}, body
        status, _, body = await call(
            stranger, "GET", f"{server.base}/api/stages/{UNKNOWN_STAGE}/performances"
        )
        assert_error(status, body, 404, "performances of an unknown stage")


# WHIP: refusals


async def test_whip_without_authorization_is_401(server, http, new_stage, closing):
    stage = await new_stage()
    _, offer = await sending_offer(closing)
    status, _, body = await call(
        http, "POST", f"{server.base}/whip/{stage['id']}", data=offer, headers=SDP
    )
    assert_error(status, body, 401, "WHIP without a key")
    await assert_nothing_left(server, http, stage["id"], "WHIP without a key")


@pytest.mark.parametrize(
    "headers,query",
    [
        ({"Authorization": "Bearer wrong-key"}, ""),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, ""),
        ({}, "?token=wrong-key"),
    ],
    ids=["wrong-bearer", "basic-scheme", "wrong-token-in-query"],
)
async def test_whip_with_wrong_key_is_401(
    server, http, new_stage, closing, headers, query
):
    stage = await new_stage()
    _, offer = await sending_offer(closing)
    status, _, body = await call(
        http,
        "POST",
        f"{server.base}/whip/{stage['id']}{query}",
        data=offer,
        headers={**SDP, **headers},
    )
    assert_error(status, body, 401, f"WHIP with {headers or query}")
    await assert_nothing_left(server, http, stage["id"], "WHIP with a wrong key")


async def test_whip_token_in_query_string_publishes(server, http, new_stage, closing):
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    status, headers, answer = await call(
        http,
        "POST",
        f"{server.base}/whip/{stage['id']}?token={stage['key']}",
        data=offer,
        headers=SDP,
    )
    assert status == 201, f"WHIP with ?token=: {status} {answer!r}"
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


async def test_whip_key_never_reaches_the_log_above_debug(
    server, http, new_stage, closing
):
    """B39: the key may come in the query string; INFO logs (the access log among
    them, as `python -m stage` runs at INFO) must not show it."""
    stage = await new_stage()
    root = logging.getLogger()
    collect, level = Collect(), root.level
    root.addHandler(collect)
    root.setLevel(logging.INFO)
    try:
        pc, offer = await sending_offer(closing)
        async with ClientSession() as encoder:  # a new connection, like OBS's
            status, _, answer = await call(
                encoder,
                "POST",
                f"{server.base}/whip/{stage['id']}?token={stage['key']}",
                data=offer,
                headers=SDP,
            )
        assert status == 201, answer
        await connect(pc, answer)
        pc2, offer2 = await sending_offer(closing)
        async with ClientSession() as encoder:
            status, _, answer2 = await whip(server, encoder, stage, offer2)
        assert status == 201, answer2
        await asyncio.sleep(0.2)
    finally:
        root.removeHandler(collect)
        root.setLevel(level)
    leaked = [line for line in collect.lines if stage["key"] in line]
    assert collect.lines, "nothing was logged at INFO: the check saw nothing"
    assert leaked == [], f"the stage key is in the log: {leaked[:3]}"


async def test_whip_to_unknown_stage_is_404(server, http, closing):
    _, offer = await sending_offer(closing)
    status, _, body = await call(
        http,
        "POST",
        f"{server.base}/whip/{UNKNOWN_STAGE}",
        data=offer,
        headers={**SDP, **bearer("whatever")},
    )
    assert_error(status, body, 404, "WHIP to an unknown stage")
    await assert_nothing_left(server, http, None, "WHIP to an unknown stage")


async def test_whip_with_json_content_type_is_415(server, http, new_stage, closing):
    stage = await new_stage()
    _, offer = await sending_offer(closing)
    status, _, body = await whip(
        server, http, stage, offer, headers={"Content-Type": "application/json"}
    )
    assert_error(status, body, 415, "WHIP as application/json")
    await assert_nothing_left(server, http, stage["id"], "WHIP as application/json")


def _truncated_at(fraction):
    async def make(closing):
        _, offer = await sending_offer(closing)
        return offer[: int(len(offer) * fraction)]

    return make


async def _truncated_in_fingerprint(closing):
    """Cut inside the last section's first fingerprint: half a line is left."""
    _, offer = await sending_offer(closing)
    start = offer.rindex("a=fingerprint:sha-256 ")
    return offer[: start + len("a=fingerprint:sha-256 ") + 20]


async def _unsupported_codecs(closing):
    _, offer = await sending_offer(closing)
    return with_codecs_renamed(offer)


async def _no_media(closing):
    _, offer = await sending_offer(closing)
    return offer[: offer.index("m=")]


async def _recvonly(closing):
    return await receiving_offer(closing)


async def _without_fingerprint(closing):
    _, offer = await sending_offer(closing)
    return without_lines(offer, "a=fingerprint")


async def _malformed_fingerprint(closing):
    """A fingerprint that no certificate can match: this offer can never connect."""
    _, offer = await sending_offer(closing)
    offer = re.sub(r"(a=fingerprint:sha-256 )[0-9A-F:]+", r"\1ZZ:ZZ", offer)
    return without_lines(
        without_lines(offer, "a=fingerprint:sha-384"), "a=fingerprint:sha-512"
    )


async def _without_ice_credentials(closing):
    _, offer = await sending_offer(closing)
    return without_lines(without_lines(offer, "a=ice-ufrag"), "a=ice-pwd")


async def _garbage_m_line(closing):
    _, offer = await sending_offer(closing)
    broken = re.sub(r"^m=audio \d+ ", "m=audio nine ", offer, count=1, flags=re.M)
    assert broken != offer
    return broken


BAD_OFFERS = {
    "empty body": lambda closing: asyncio.sleep(0, ""),
    "garbage text": lambda closing: asyncio.sleep(0, "hello, this is not SDP\r\n"),
    "v=0 then garbage": lambda closing: asyncio.sleep(0, "v=0\r\nzzz\r\n\x00\x01\r\n"),
    "truncated offer at 1/4": _truncated_at(0.25),
    "truncated offer at 1/2": _truncated_at(0.5),
    "truncated offer at 3/4": _truncated_at(0.75),
    "truncated offer inside a fingerprint": _truncated_in_fingerprint,
    "only unsupported codecs": _unsupported_codecs,
    "no media sections": _no_media,
    "receive-only offer": _recvonly,
    "no DTLS fingerprint": _without_fingerprint,
    "no ICE credentials": _without_ice_credentials,
    "malformed DTLS fingerprint": _malformed_fingerprint,
    "broken m-line": _garbage_m_line,
}


@pytest.mark.parametrize("case", list(BAD_OFFERS))
async def test_whip_unusable_offer_is_400(server, http, new_stage, closing, case):
    stage = await new_stage()
    offer = await BAD_OFFERS[case](closing)
    status, _, body = await whip(server, http, stage, offer)
    assert_error(status, body, 400, f"WHIP with {case}")
    if case == "only unsupported codecs":
        assert "Opus" in body["error"] and "VP8" in body["error"], (
            f"the refusal does not say what is accepted: {body['error']!r}"
        )
    await assert_nothing_left(server, http, stage["id"], f"WHIP with {case}")


async def test_whip_not_utf8_is_400(server, http, new_stage, closing):
    stage = await new_stage()
    _, offer = await sending_offer(closing)
    status, _, body = await whip(
        server, http, stage, offer.encode() + b"a=x:\xff\xfe\r\n"
    )
    assert_error(status, body, 400, "WHIP offer that is not UTF-8")
    await assert_nothing_left(server, http, stage["id"], "WHIP not UTF-8")


async def test_whip_10_mb_body_is_413(server, http, new_stage):
    stage = await new_stage()
    body = b"v=0\r\n" + b"a=x-filler:" + b"x" * (10 * 1024 * 1024) + b"\r\n"
    status, _, answer = await whip(server, http, stage, body)
    assert_error(status, answer, 413, "WHIP 10 MB offer")
    await assert_nothing_left(server, http, stage["id"], "WHIP 10 MB offer")


# WHIP: accepted offers


@pytest.mark.parametrize(
    "audio,video,strip",
    [
        (True, True, "a=msid"),
        (True, True, "a=ssrc"),
        (True, False, None),
        (False, True, None),
    ],
    ids=["without-msid", "without-ssrc", "audio-only", "video-only"],
)
async def test_whip_accepts_and_goes_live(
    server, http, new_stage, closing, audio, video, strip
):
    stage = await new_stage()
    pc, offer = await sending_offer(closing, audio=audio, video=video)
    if strip:
        offer = without_lines(offer, strip)
        assert strip not in offer
    status, headers, answer = await whip(server, http, stage, offer)
    assert status == 201, f"WHIP ({strip or (audio, video)}): {status} {answer!r}"
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])


async def test_whip_201_has_sdp_type_location_and_server_candidates(
    server, http, new_stage, closing
):
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    status, headers, answer = await whip(server, http, stage, offer)
    assert status == 201, f"WHIP: {status} {answer!r}"
    assert headers.get("Content-Type", "").startswith("application/sdp"), headers
    location = headers.get("Location")
    assert location and location.startswith("/"), f"Location: {location!r}"
    assert answer.startswith("v=0"), answer[:100]
    candidates = [x for x in answer.splitlines() if x.startswith("a=candidate:")]
    assert any(" 127.0.0.1 " in c for c in candidates), (
        f"the answer names no 127.0.0.1 candidate: {candidates}"
    )
    await connect(pc, answer)


async def test_whip_offer_without_candidates_gets_server_candidates(
    server, http, new_stage, closing
):
    """B37: a client that will not trickle needs the server's candidates."""
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    bare = without_lines(without_lines(offer, "a=candidate"), "a=end-of-candidates")
    assert "a=candidate" not in bare
    status, headers, answer = await whip(server, http, stage, bare)
    assert status == 201, f"WHIP without candidates: {status} {answer!r}"
    candidates = [x for x in answer.splitlines() if x.startswith("a=candidate:")]
    assert any(" 127.0.0.1 " in c for c in candidates), (
        f"the answer to a candidate-less offer names no 127.0.0.1 candidate: {answer}"
    )
    assert "a=end-of-candidates" in answer, "the answer lacks a=end-of-candidates"


async def test_whip_offer_without_candidates_connects(server, http, new_stage, closing):
    """B37: ICE reaches connected although the offer carried no candidates."""
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    bare = without_lines(without_lines(offer, "a=candidate"), "a=end-of-candidates")
    status, headers, answer = await whip(server, http, stage, bare)
    assert status == 201, f"WHIP without candidates: {status} {answer!r}"
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])


# WHIP: ending and starting again (B36)


async def test_whip_delete_ends_at_once_and_a_new_publish_follows(
    server, http, new_stage, closing
):
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    status, headers, answer = await whip(server, http, stage, offer)
    assert status == 201, f"WHIP: {status} {answer!r}"
    location = headers["Location"]
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])

    status, _, body = await call(
        http, "DELETE", server.base + location, headers=bearer("wrong-key")
    )
    assert_error(status, body, 401, "DELETE with a wrong key")
    assert stage["id"] in await live_ids(server, http), "a wrong-key DELETE ended it"
    status, _, body = await call(http, "DELETE", server.base + location)
    assert_error(status, body, 401, "DELETE without a key")

    status, _, body = await call(
        http, "DELETE", server.base + location, headers=bearer(stage["key"])
    )
    assert status in (200, 204), f"DELETE Location: {status} {body!r}"
    deleted = time.monotonic()
    assert stage["id"] not in await live_ids(server, http), (
        "the stage is still listed as live right after DELETE"
    )
    info = await stage_info(server, http, stage["id"])
    assert info["live"] is False, info

    # OBS starts again at once with the same key.
    pc2, offer2 = await sending_offer(closing)
    status, headers2, answer2 = await whip(server, http, stage, offer2)
    assert time.monotonic() - deleted < 1.0
    assert status == 201, f"a new publish right after DELETE: {status} {answer2!r}"
    await connect(pc2, answer2)
    await wait_live(server, http, stage["id"])
    assert await live_ids(server, http) == [stage["id"]], "a ghost stage appeared"

    status, _, body = await call(
        http, "DELETE", server.base + location, headers=bearer(stage["key"])
    )
    assert_error(status, body, 404, "DELETE of the ended publishing resource")
    assert await live_ids(server, http) == [stage["id"]], (
        "a DELETE of the old resource ended the new performance"
    )


async def test_whip_second_delete_right_away_is_404(server, http, new_stage, closing):
    stage = await new_stage()
    pc, offer = await sending_offer(closing)
    status, headers, answer = await whip(server, http, stage, offer)
    assert status == 201, answer
    await connect(pc, answer)
    await wait_live(server, http, stage["id"])
    url = server.base + headers["Location"]
    first, _, _ = await call(http, "DELETE", url, headers=bearer(stage["key"]))
    second, _, body = await call(http, "DELETE", url, headers=bearer(stage["key"]))
    assert first in (200, 204), first
    assert_error(second, body, 404, "a second DELETE straight after the first")
    await assert_nothing_left(server, http, stage["id"], "after DELETE")


async def test_whip_delete_of_unknown_resource_is_404(server, http, new_stage):
    stage = await new_stage()
    status, _, body = await call(
        http,
        "DELETE",
        f"{server.base}/whip/{stage['id']}/publishers/{UNKNOWN_VIEWER}",
        headers=bearer(stage["key"]),
    )
    assert_error(status, body, 404, "DELETE of an unknown publishing resource")


@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_whip_endpoint_other_methods_are_405(server, http, new_stage, method):
    stage = await new_stage()
    status, headers, body = await call(
        http, method, f"{server.base}/whip/{stage['id']}", headers=bearer(stage["key"])
    )
    assert status == 405, f"{method} /whip/{{id}}: {status} {body!r}"
    assert "POST" in headers.get("Allow", ""), f"Allow: {headers.get('Allow')!r}"
    await assert_nothing_left(server, http, stage["id"], f"{method} /whip")


async def test_whip_options_answers_cors_with_accept_post(server, http, new_stage):
    stage = await new_stage()
    status, headers, body = await call(
        http,
        "OPTIONS",
        f"{server.base}/whip/{stage['id']}",
        headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert status == 204, f"OPTIONS /whip: {status} {body!r}"
    assert headers.get("Accept-Post") == "application/sdp", headers
    assert "POST" in headers.get("Access-Control-Allow-Methods", ""), headers


# WHEP: refusals


async def test_whep_with_nothing_live_is_409_with_retry_after(server, http, closing):
    offer = await receiving_offer(closing)
    status, headers, body = await call(
        http, "POST", f"{server.base}/whep", data=offer, headers=SDP
    )
    assert_error(status, body, 409, "WHEP with nothing live")
    assert int(headers.get("Retry-After", "0")) > 0, f"Retry-After: {headers}"
    await assert_nothing_left(server, http, None, "WHEP with nothing live")


async def test_whep_to_a_stage_that_is_not_live_is_409(
    server, http, new_stage, closing
):
    stage = await new_stage()
    offer = await receiving_offer(closing)
    status, headers, body = await call(
        http, "POST", f"{server.base}/whep/{stage['id']}", data=offer, headers=SDP
    )
    assert_error(status, body, 409, "WHEP to a stage that is not live")
    assert int(headers.get("Retry-After", "0")) > 0, f"Retry-After: {headers}"
    await assert_nothing_left(server, http, stage["id"], "WHEP not live")


async def test_whep_to_unknown_stage_is_404(server, http, closing):
    offer = await receiving_offer(closing)
    status, _, body = await call(
        http, "POST", f"{server.base}/whep/{UNKNOWN_STAGE}", data=offer, headers=SDP
    )
    assert_error(status, body, 404, "WHEP to an unknown stage")
    assert server.app[VENUE].viewers == {}


@pytest.fixture
async def live_stage(server, new_stage, closing):
    stage = await new_stage("Live")
    closing(await Publisher(server.base, stage["id"], stage["key"]).start())
    return stage


async def _sendonly_offer(closing):
    pc, offer = await sending_offer(closing)
    return offer


BAD_VIEWER_OFFERS = {
    "empty body": lambda closing: asyncio.sleep(0, ""),
    "garbage text": lambda closing: asyncio.sleep(0, "not an offer at all"),
    "truncated offer": lambda closing: _cut(receiving_offer(closing)),
    "no media sections": lambda closing: _head(receiving_offer(closing)),
    "send-only offer": _sendonly_offer,
}


async def _cut(offer):
    text = await offer
    return text[: len(text) // 2]


async def _head(offer):
    text = await offer
    return text[: text.index("m=")]


@pytest.mark.parametrize("path", ["/whep", "/whep/{id}"])
@pytest.mark.parametrize("case", list(BAD_VIEWER_OFFERS))
async def test_whep_unusable_offer_is_400(
    server, http, live_stage, closing, case, path
):
    offer = await BAD_VIEWER_OFFERS[case](closing)
    url = server.base + path.format(id=live_stage["id"])
    status, _, body = await call(http, "POST", url, data=offer, headers=SDP)
    assert_error(status, body, 400, f"WHEP {path} with {case}")
    assert server.app[VENUE].viewers == {}, f"{case}: a viewer was kept"
    assert await live_ids(server, http) == [live_stage["id"]], "the show was disturbed"


async def test_whep_wrong_content_type_is_415(server, http, live_stage, closing):
    offer = await receiving_offer(closing)
    for path in ("/whep", f"/whep/{live_stage['id']}"):
        status, _, body = await call(
            http,
            "POST",
            server.base + path,
            data=offer,
            headers={"Content-Type": "application/json"},
        )
        assert_error(status, body, 415, f"WHEP {path} as application/json")
    assert server.app[VENUE].viewers == {}


async def test_whep_garbage_is_400_even_when_nothing_is_live(server, http):
    """A malformed request is the client's fault whatever is live; a 409 with
    Retry-After invites the client to send the same garbage again."""
    status, headers, body = await call(
        http, "POST", f"{server.base}/whep", data="not an offer", headers=SDP
    )
    assert_error(status, body, 400, "WHEP garbage with nothing live")
    assert server.app[VENUE].viewers == {}


async def test_whep_10_mb_body_is_413(server, http, live_stage):
    body = b"v=0\r\n" + b"a=x-filler:" + b"x" * (10 * 1024 * 1024) + b"\r\n"
    status, _, answer = await call(
        http, "POST", f"{server.base}/whep", data=body, headers=SDP
    )
    assert_error(status, answer, 413, "WHEP 10 MB offer")
    assert server.app[VENUE].viewers == {}


@pytest.mark.parametrize(
    "method,suffix",
    [("GET", ""), ("POST", "/next"), ("DELETE", "")],
    ids=["get", "next", "delete"],
)
async def test_unknown_viewer_is_404(server, http, method, suffix):
    status, _, body = await call(
        http, method, f"{server.base}/whep/viewers/{UNKNOWN_VIEWER}{suffix}"
    )
    assert_error(status, body, 404, f"{method} /whep/viewers/{{unknown}}{suffix}")


async def test_next_with_only_one_stage_live_is_409(server, http, live_stage, closing):
    viewer = closing(await Viewer(server.base).start())
    status, body = await viewer.request("POST", "/next")
    assert_error(status, body, 409, "Next with one stage live")
    status, body = await viewer.request("GET")
    assert status == 200 and body["stage"]["id"] == live_stage["id"], (
        f"a refused Next moved the viewer: {status} {body!r}"
    )
    status, body = await viewer.request("DELETE")
    assert status in (200, 204), (status, body)
    assert server.app[VENUE].viewers == {}
    status, body = await viewer.request("DELETE")
    assert_error(status, body, 404, "a second DELETE of a viewer")


# views, the visitor cookie, watching now (B40, B42)


async def watch_for(server, seconds, stage_id, cookies=None, closing=None) -> Viewer:
    viewer = Viewer(server.base)
    if cookies is not None:
        viewer.cookies = cookies
    if closing is not None:
        closing(viewer)
    await viewer.start(stage_id=stage_id)
    await asyncio.sleep(seconds)
    return viewer


async def wait_watching(server, http, stage_id, count, timeout) -> float:
    started = time.monotonic()
    deadline = started + timeout
    while True:
        info = await stage_info(server, http, stage_id)
        if info["viewers"] == count:
            return time.monotonic() - started
        assert info["viewers"] >= 0, f"a negative count: {info}"
        assert time.monotonic() < deadline, (
            f"watching-now is {info['viewers']}, not {count}, after {timeout} s"
        )
        await asyncio.sleep(0.25)


async def test_views_count_visitors_not_reloads_and_survive_a_restart(
    server, http, new_stage, settings, closing, aiohttp_server
):
    assert settings.view_seconds == 1.0
    stage = await new_stage()
    publisher = closing(await Publisher(server.base, stage["id"], stage["key"]).start())

    # One visitor watches 2 s and leaves: one view.
    first = await watch_for(server, 2.0, stage["id"], closing=closing)
    assert (await stage_info(server, http, stage["id"]))["viewers"] == 1
    await first.stop()
    await wait_watching(server, http, stage["id"], 0, timeout=2)
    info = await stage_info(server, http, stage["id"])
    assert info["views"] == 1, f"one visitor watching 2 s: {info}"

    # The same browser reloads (same cookies, a new WHEP POST): still one view.
    again = await watch_for(server, 2.0, stage["id"], first.cookies, closing)
    await again.stop()
    info = await stage_info(server, http, stage["id"])
    assert info["views"] == 1, f"a reload by the same visitor added a view: {info}"

    # Two other browsers at the same time: two more views, a peak of two.
    others = [
        await watch_for(server, 0, stage["id"], CookieJar(unsafe=True), closing)
        for _ in range(2)
    ]
    await asyncio.sleep(2.0)
    assert (await stage_info(server, http, stage["id"]))["viewers"] == 2
    for viewer in others:
        await viewer.stop()
    await wait_watching(server, http, stage["id"], 0, timeout=2)

    info = await stage_info(server, http, stage["id"])
    assert info["views"] == 3, f"three visitors: {info}"
    [performance] = await performances(server, http, stage)
    assert performance["views"] == 3, performance
    assert performance["peak_viewers"] == 2, performance

    await publisher.stop()
    await wait_live(server, http, stage["id"], live=False)
    before = await performances(server, http, stage)

    # A restart: the counts come from the store, not from memory.
    await server.close()
    again_app = create_app(settings)
    restarted = await aiohttp_server(again_app, host="127.0.0.1")
    restarted.base = str(restarted.make_url("")).rstrip("/")
    info = await stage_info(restarted, http, stage["id"])
    assert info["views"] == 3, f"views after a restart: {info}"
    assert info["viewers"] == 0 and info["live"] is False, info
    after = await performances(restarted, http, stage)
    assert [(p["id"], p["views"], p["peak_viewers"]) for p in after] == [
        (p["id"], p["views"], p["peak_viewers"]) for p in before
    ], f"performances changed over a restart: {before} -> {after}"


async def test_short_watch_is_not_a_view(server, http, new_stage, closing):
    stage = await new_stage()
    closing(await Publisher(server.base, stage["id"], stage["key"]).start())
    viewer = closing(await Viewer(server.base).start(stage_id=stage["id"]))
    await viewer.stop()
    info = await stage_info(server, http, stage["id"])
    assert info["views"] == 0, f"a watch shorter than view_seconds counted: {info}"


async def test_viewer_that_vanishes_is_no_longer_counted(
    server, http, new_stage, closing
):
    """B42: a killed tab sends no DELETE; watching-now must still come back to 0."""
    stage = await new_stage()
    closing(await Publisher(server.base, stage["id"], stage["key"]).start())
    viewer = closing(await Viewer(server.base).start(stage_id=stage["id"]))
    await wait_watching(server, http, stage["id"], 1, timeout=2)

    await viewer.stop(say_goodbye=False)
    took = await wait_watching(server, http, stage["id"], 0, timeout=45)
    assert took <= 40, f"a vanished viewer was counted for {took:.1f} s"
    assert server.app[VENUE].viewers == {}, "the vanished viewer is still registered"
    status, body = await viewer.request("GET")
    assert status == 404, f"the vanished viewer's resource: {status} {body!r}"


def cut_network(pc: RTCPeerConnection) -> None:
    """Like a killed tab: the sockets go silent, and no DTLS close or DELETE is sent.

    (Closing an aiortc pc sends a DTLS close_notify, which the server hears at once;
    a crashed browser sends nothing.) Reaches into aiortc 1.16 / aioice 0.13.
    """
    for transport in pc._RTCPeerConnection__iceTransports:
        for protocol in transport._connection._protocols:
            protocol.transport.close()


async def test_viewer_killed_without_any_goodbye_is_no_longer_counted(
    server, http, new_stage, closing
):
    """B42: no DELETE, no DTLS close: only ICE consent can tell (about 30 s)."""
    stage = await new_stage()
    closing(await Publisher(server.base, stage["id"], stage["key"]).start())
    viewer = closing(await Viewer(server.base).start(stage_id=stage["id"]))
    await wait_watching(server, http, stage["id"], 1, timeout=2)

    cut_network(viewer.pc)
    # The server stops counting a viewer it has not heard from for 6 s (RTCP), well
    # before ICE consent (about 30 s) would notice.
    took = await wait_watching(server, http, stage["id"], 0, timeout=20)
    assert took <= 15, f"a killed viewer was counted for {took:.1f} s"
    assert server.app[VENUE].viewers == {}, "the killed viewer is still registered"
    assert await live_ids(server, http) == [stage["id"]], "the show was disturbed"


async def test_owner_session_with_deeply_nested_json_is_400(server, http, new_stage):
    stage = await new_stage()
    status, _, body = await call(
        http,
        "POST",
        f"{server.base}/api/stages/{stage['id']}/session",
        data=b"[" * 8000 + b"]" * 8000,
        headers={"Content-Type": "application/json"},
    )
    assert_error(status, body, 400, "POST /api/stages/{id}/session, nested JSON")


@pytest.mark.parametrize(
    "path, content_type",
    [("/api/stages", "application/json"), ("/whep", "application/sdp")],
)
async def test_a_body_that_never_comes_is_answered_408(
    server, monkeypatch, path, content_type
):
    """Headers promising a body, then nothing: the connection is not held forever."""
    monkeypatch.setattr("stage.requests.BODY_SECONDS", 1.0)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: 200\r\n\r\n{{".encode()
        )
        await writer.drain()
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        waited = time.monotonic() - started
        length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
        body = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert b"did not arrive within 1 s" in body, body
    assert waited < 5, f"answered after {waited:.1f} s"
