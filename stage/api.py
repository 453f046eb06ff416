"""JSON API: stages, their live state, performances and recordings."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import json
import logging
import socket
import time
import unicodedata
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from . import chart
from .appkeys import STORE, VENUE
from .audience import BY_VIEWER, Numbers
from .errors import BadRequest, Conflict, NotFound, Unauthorized
from .recorder.files import live_path_for
from .requests import find_stage, owner_cookie, read_json, require_owner
from .store import PerformanceRecord, StageRecord

logger = logging.getLogger(__name__)

MAX_NAME = 80
# Live pages get an update at most this often, however busy the stage.
EVENT_PACE = 0.25
# An idle event stream writes a comment this often, and a client that has not
# acknowledged it DEAD_CLIENT seconds later is dropped by the kernel (TCP_USER_TIMEOUT,
# RFC 5482). A client whose packets are all lost (a firewall, a lid shut, a phone off
# Wi-Fi) sends no FIN or RST: without the timeout TCP keeps retrying for about 15
# minutes, holding the stream. With both, it is freed at most about 11 s after
# the last packet that got through (B28). The front (`--workers`), where the client's
# TCP connection ends then, does the same with the streams it passes on.
HEARTBEAT = 5.0
DEAD_CLIENT = 5.0
# How often a waiting stream looks whether its connection was dropped meanwhile.
CLIENT_CHECK = 1.0


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/stages", create_stage)
    router.add_get("/api/stages", live_stages)
    router.add_get("/api/stages/{id}", show_stage)
    router.add_get("/api/stages/{id}/events", stage_events)
    router.add_post("/api/stages/{id}/session", open_session)
    router.add_post("/api/stages/{id}/key", rotate_key)
    router.add_get("/api/stages/{id}/performances", list_performances)
    router.add_get("/api/performances/{id}/recording", download_recording)
    router.add_get("/api/performances/{id}/chart.svg", performance_chart)
    router.add_get("/api/performances/{id}/watches.csv", performance_watches)


# stages


def clean_name(value) -> str:
    if not isinstance(value, str):
        raise BadRequest('Give the stage a name: {"name": "…"}.')
    name = " ".join(value.split())
    if not name:
        raise BadRequest("The stage name cannot be empty.")
    if len(name) > MAX_NAME:
        raise BadRequest(f"The stage name is too long (at most {MAX_NAME} characters).")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise BadRequest("The stage name cannot contain control characters.")
    return name


async def create_stage(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = clean_name(body.get("name"))
    stage, key = request.app[STORE].create_stage(name)
    logger.info("stage %s: created (%s)", stage.id, name)
    response = web.json_response(
        {"id": stage.id, "name": stage.name, "key": key}, status=201
    )
    response.headers["Location"] = f"/api/stages/{stage.id}"
    _open_owner_session(request, response, stage)
    return response


async def live_stages(request: web.Request) -> web.Response:
    venue = request.app[VENUE]
    # A stage held for its performer to reconnect is not offered to newcomers.
    hubs = [h for h in venue.hubs.values() if not venue.reconnecting(h.stage_id)]
    stages = [
        {
            "id": h.stage_id,
            "name": h.name,
            "live": True,
            "viewers": venue.watching_everywhere(h),
        }
        for h in hubs
    ]
    # With several workers, the stages the others carry (stage/directory.py).
    stages += [
        {"id": s.stage_id, "name": s.name, "live": True, "viewers": s.watching}
        for s in venue.directory.elsewhere().values()
        if s.live and s.stage_id not in venue.hubs
    ]
    stages.sort(key=lambda s: s["name"].lower())
    return web.json_response({"stages": stages})


def _last_recording(app: web.Application, stage: StageRecord) -> dict | None:
    last = app[STORE].latest_performance(stage.id)
    if last is None or last.ended_at is None:
        return None
    return {"state": last.recording_state, "dashboard": f"/stages/{stage.id}"}


def stage_summary(app: web.Application, stage: StageRecord) -> dict:
    venue = app[VENUE]
    hub = venue.hubs.get(stage.id)
    if hub is None and stage.id in venue.directory.elsewhere():
        return _summary_elsewhere(app, stage, venue.directory.elsewhere()[stage.id])
    reconnecting = venue.reconnecting(stage.id)
    return {
        "id": stage.id,
        "name": stage.name,
        # Held for its performer to come back, a stage is not live (README.md).
        "live": hub is not None and not reconnecting,
        "reconnecting": reconnecting,
        "viewers": venue.watching_everywhere(hub) if hub else 0,
        "views": venue.audience.stage_views(stage.id),
        "recording": venue.recording_state(stage.id),
        # What became of the last show's recording, so that a performer who ended it
        # is pointed to it (the file itself needs the key, on the dashboard).
        "last_recording": _last_recording(app, stage),
        # Lets a performer's page see that another connection took the stage over.
        "publisher": hub.publisher.id if hub else None,
    }


def _summary_elsewhere(app: web.Application, stage: StageRecord, listing) -> dict:
    """A stage another worker carries, as that worker last reported it."""
    return {
        "id": stage.id,
        "name": stage.name,
        "live": listing.live,
        "reconnecting": listing.reconnecting,
        "viewers": listing.watching,
        "views": app[VENUE].audience.stage_views(stage.id),
        "recording": listing.recording,
        "last_recording": _last_recording(app, stage),
        "publisher": listing.publisher,
    }


async def show_stage(request: web.Request) -> web.Response:
    stage = find_stage(request.app[STORE], request.match_info["id"])
    return web.json_response(stage_summary(request.app, stage))


async def stage_events(request: web.Request) -> web.StreamResponse:
    stage = find_stage(request.app[STORE], request.match_info["id"])
    topic = ("stage", stage.id)
    return await send_events(request, topic, lambda: stage_summary(request.app, stage))


async def send_events(request: web.Request, topic, read) -> web.StreamResponse:
    """Server-sent events: the current state now, then again whenever it changes."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    drop_when_unacknowledged(request, DEAD_CLIENT)
    last = None
    bulletin = request.app[VENUE].bulletin
    with bulletin.listen(topic) as changed:
        try:
            while not bulletin.closed:
                if not await _next_change(changed, request):
                    # A comment line: keeps proxies from closing an idle stream, and
                    # gives the kernel data a dead client will never acknowledge.
                    await response.write(b": still here\n\n")
                    continue
                if bulletin.closed:
                    break  # the server is stopping: pages reconnect to the next one
                changed.clear()
                current = json.dumps(read())
                if current != last:
                    await response.write(f"data: {current}\n\n".encode())
                    last = current
                await asyncio.sleep(EVENT_PACE)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
    return response


async def _next_change(changed: asyncio.Event, request: web.Request) -> bool:
    """True on a change, False when a heartbeat is due; a client gone ends the wait."""
    deadline = time.monotonic() + HEARTBEAT
    while True:
        if client_gone(request):
            raise ConnectionResetError("the client is gone")
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            async with asyncio.timeout(min(left, CLIENT_CHECK)):
                await changed.wait()
            return True
        except TimeoutError:
            continue


def client_gone(request: web.Request) -> bool:
    """Whether the client's connection was closed or dropped (an event stream's
    handler is not cancelled then: it has to look)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def drop_when_unacknowledged(request: web.Request, seconds: float) -> None:
    """Have the kernel end this connection when data stays unacknowledged so long.
    Also used by the front (stage/front.py) on the event streams it passes on."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(socket, "TCP_USER_TIMEOUT"):
        return  # not TCP, or not Linux: TCP's own retries end it, only later
    try:
        sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000)
        )
    except OSError as exc:
        logger.debug("event stream: no TCP_USER_TIMEOUT (%s)", exc)


# the artist's side


def _open_owner_session(
    request, response: web.StreamResponse, stage: StageRecord
) -> None:
    response.set_cookie(
        owner_cookie(stage.id),
        request.app[STORE].session_token(stage),
        max_age=30 * 24 * 3600,
        httponly=True,
        samesite="Strict",
        path="/",
    )


async def open_session(request: web.Request) -> web.Response:
    store = request.app[STORE]
    stage = find_stage(store, request.match_info["id"])
    body = await read_json(request)
    key = body.get("key")
    if not isinstance(key, str) or not store.key_matches(stage, key.strip()):
        raise Unauthorized("The stage key is wrong.")
    response = web.Response(status=204)
    _open_owner_session(request, response, stage)
    return response


async def rotate_key(request: web.Request) -> web.Response:
    """A new key, shown once. Whoever published with the old one is taken off air."""
    store = request.app[STORE]
    stage = find_stage(store, request.match_info["id"])
    require_owner(request, store, stage)
    stage, key = store.rotate_key(stage)
    ended = await request.app[VENUE].end_publishers(stage.id)
    logger.info("stage %s: key rotated, %d publishers ended", stage.id, ended)
    response = web.json_response({"key": key})
    # Sessions are bound to the key: give the owner who asked a new one.
    _open_owner_session(request, response, stage)
    return response


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def performance_summary(
    p: PerformanceRecord, numbers: Numbers, now: float, data
) -> dict:
    end = p.ended_at if p.ended_at is not None else now
    recording = None
    if p.recording_path:
        size = p.recording_bytes
        if p.recording_state == "recording":
            # Still being written: what is on disk so far.
            live = live_path_for(data / p.recording_path)
            size = live.stat().st_size if live.is_file() else 0
        recording = {
            "url": f"/api/performances/{p.id}/recording",
            "bytes": size,
            "state": p.recording_state,
            "error": p.recording_error,
        }
    return {
        "id": p.id,
        "started_at": iso(p.started_at),
        "ended_at": iso(p.ended_at),
        "duration": round(end - p.started_at, 3),
        "views": numbers.views,
        "peak_viewers": numbers.peak,
        "recording": recording,
        # Each defined in README.md, "What the numbers mean".
        "watching": numbers.watching,
        "visits": numbers.visits,
        "visitors": numbers.visitors,
        "nexted": numbers.nexted,
        "watch_seconds": round(numbers.watch_seconds, 3),
        "average_watch_seconds": round(numbers.average_watch_seconds, 3),
        "chart_url": f"/api/performances/{p.id}/chart.svg",
        "watches_url": f"/api/performances/{p.id}/watches.csv",
    }


async def list_performances(request: web.Request) -> web.Response:
    store = request.app[STORE]
    stage = find_stage(store, request.match_info["id"])
    require_owner(request, store, stage)
    performances = store.performances(stage.id)
    numbers = request.app[VENUE].audience.numbers([p.id for p in performances])
    now = time.time()
    data = request.app[VENUE].data
    listed = [performance_summary(p, numbers[p.id], now, data) for p in performances]
    return web.json_response({"performances": listed})


def owned_performance(request: web.Request) -> tuple[PerformanceRecord, StageRecord]:
    """The performance in the path, for its stage's owner only."""
    store = request.app[STORE]
    performance = store.performance(request.match_info["id"])
    if performance is None:
        raise NotFound("There is no performance with this id.")
    stage = find_stage(store, performance.stage_id)
    require_owner(request, store, stage)
    return performance, stage


async def download_recording(request: web.Request) -> web.StreamResponse:
    performance, stage = owned_performance(request)
    if (
        performance.recording_state not in ("ready", "truncated")
        or not performance.recording_path
    ):
        if performance.recording_state in ("recording", "finishing"):
            # The file is listed and will be there: not missing, just not yet.
            raise Conflict(_why_no_file(performance.recording_state))
        raise NotFound(_why_no_file(performance.recording_state))
    data = request.app[VENUE].data
    path = (data / performance.recording_path).resolve()
    if data.resolve() not in path.parents or not path.is_file():
        raise NotFound("The recording file is missing.")
    return web.FileResponse(
        path, headers={"Content-Disposition": attachment(f"{stage.name}-{path.name}")}
    )


def attachment(filename: str) -> str:
    """A Content-Disposition naming the file, for old and new clients (RFC 6266)."""
    plain = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
        for c in filename
    )
    return (
        f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"
    )


def _why_no_file(state: str) -> str:
    return {
        "recording": "The performance is still being recorded.",
        "finishing": "The recording is being finished; try again in a moment.",
        "empty": "This performance got no media, so there is no recording.",
        "failed": "This recording failed and nothing playable was written.",
    }.get(state, "There is no recording for this performance.")


# the audience of one performance


async def performance_chart(request: web.Request) -> web.Response:
    performance, _ = owned_performance(request)
    audience = request.app[VENUE].audience
    numbers = audience.numbers([performance.id])[performance.id]
    end = performance.ended_at if performance.ended_at is not None else time.time()
    svg = chart.render(
        audience.timeline(performance.id), performance.started_at, end, numbers.peak
    )
    return web.Response(
        text=svg,
        content_type="image/svg+xml",
        headers={"Cache-Control": "private, no-cache"},
    )


WATCH_COLUMNS = (
    "visit",
    "viewer",
    "started_at",
    "ended_at",
    "seconds",
    "ended_by",
    "nexted",
)


async def performance_watches(request: web.Request) -> web.Response:
    performance, stage = owned_performance(request)
    store, audience = request.app[STORE], request.app[VENUE].audience
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(WATCH_COLUMNS)
    for number, watch in enumerate(audience.watches(performance.id), start=1):
        seconds = watch.seconds
        nexted = watch.ended_by == BY_VIEWER and seconds < audience.view_seconds
        writer.writerow(
            (
                number,
                viewer_alias(store.secret, stage.id, watch.viewer),
                iso(watch.started_at),
                iso(watch.ended_at) or "",
                f"{seconds:.3f}",
                watch.ended_by or "",
                "yes" if nexted else "no",
            )
        )
    started = datetime.fromtimestamp(performance.started_at, UTC)
    filename = f"watches-{stage.id}-{started:%Y%m%dT%H%M%SZ}.csv"
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "private, no-store",
        },
    )


def viewer_alias(secret: bytes, stage_id: str, viewer: str) -> str:
    """A viewer's name in exports: the same on every performance of this stage, but
    neither the cookie itself (which would let its holder pose as that browser) nor
    linkable across stages."""
    message = f"{stage_id}:{viewer}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:12]
