"""The front: with `--workers N`, the public address, proxying to N worker processes.

One event loop writes every viewer's packets, so one process uses one core. With more
workers, each carries its own stages on its own core (stage/worker.py) and this process
only finishes what a crash left (once), starts the workers and passes each request to
the right one, bodies streamed both ways (event streams stay open):

- `POST /whip/<stage>`: the worker where the stage is live, held or connecting, else
  the one with the fewest stages; its publisher resource: the worker that answered.
- `POST /whep/<stage>`: the worker carrying the stage. `POST /whep`: a worker drawn
  with the roulette's weights among the stages the offer's codecs can take (below;
  the offer, small, is read whole first). Either goes to the worker with the fewest
  viewers instead when that one is full: it mirrors the stage from its worker
  (stage/links.py). A viewer's resource: the worker that made it.
- `/api/stages/<id>...`: the stage's worker while it has it. Everything else (pages,
  stage creation, clips, performances): worker 0, the home worker.

Every proxied response says which worker answered in `X-Stage-Worker`. A request for a
worker that is down gets 503 with a sentence; the front closes the shows it carried
(their recordings finished) and starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import aiohttp
from aiohttp import web

from . import requests
from .api import CLIENT_CHECK, DEAD_CLIENT, client_gone, drop_when_unacknowledged
from .config import Settings
from .directory import Report
from .relay.negotiation import MAX_OFFER_BYTES, Receivable, receivable_video
from .server import hide_tokens_in_access_log, wants_json
from .store import Store
from .venue import Venue
from .workers import Worker, Workers

logger = logging.getLogger(__name__)

WORKERS = web.AppKey("workers", Workers)
ROUTES = web.AppKey("routes", "Routes")

# Headers about one hop of a connection, not about the message (RFC 9110 7.6.1).
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# Viewers and publishers remembered for routing. One that leaves without a DELETE is
# only forgotten when this many newer ones pushed it out.
REMEMBERED = 100_000
RETRY_AFTER = 3
UNAVAILABLE = (
    "This part of Stage is starting again after a failure. Try again in a moment."
)
UNAVAILABLE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{seconds}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Stage</title></head>
<body style="font-family: system-ui, sans-serif; margin: 3rem auto; max-width: 32rem">
<h1>Stage</h1><p>{message}</p><p>This page will look again by itself.</p>
</body></html>
"""

LOCATION = re.compile(r"^/(whip/[^/]+/publishers|whep/viewers)/([^/?#]+)")


class Routes:
    """Which worker a request goes to."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.viewers: OrderedDict[str, Worker] = OrderedDict()
        self.publishers: OrderedDict[str, Worker] = OrderedDict()

    @property
    def home(self) -> Worker:
        return self.workers.all[0]

    def worker_for(
        self, request: web.Request, wanted: Receivable | None = None
    ) -> Worker:
        """`wanted`: the video a `POST /whep` offer can receive, if known."""
        parts = request.path.strip("/").split("/")
        match parts:
            case ["whip", stage_id]:
                return self.stage_worker(stage_id) or self._fewest_stages()
            case ["whip", stage_id, "publishers", publisher_id, *_]:
                return (
                    self.publishers.get(publisher_id)
                    or self.stage_worker(stage_id)
                    or self.home
                )
            case ["whep"] if request.method == "POST":
                return self._with_room(self._roulette(wanted))
            case ["whep", "viewers", viewer_id, *_]:
                return self.viewers.get(viewer_id) or self.home
            case ["whep", stage_id] if request.method == "POST":
                return self._with_room(self.stage_worker(stage_id) or self.home)
            case ["whep", stage_id] | ["api", "stages", stage_id, *_]:
                return self.stage_worker(stage_id) or self.home
        return self.home

    def stage_worker(self, stage_id: str) -> Worker | None:
        for worker in self.workers.all:
            if worker.carries(stage_id):
                return worker
        now = asyncio.get_running_loop().time()
        for worker in self.workers.all:
            if worker.has_placed(stage_id, now):
                return worker
        return None

    def _fewest_stages(self) -> Worker:
        # A new stage goes where the fewest are: that is how a second process takes
        # its own stages. If even that one is full, it answers 503 itself.
        ready = [w for w in self.workers.all if w.ready] or self.workers.all
        now = asyncio.get_running_loop().time()
        return min(ready, key=lambda worker: worker.busy(now))

    def _roulette(self, wanted: Receivable | None) -> Worker:
        """A worker drawn so that each live stage everywhere is as likely as the
        roulette makes it in one process: weight 1/(1+watching) per stage the viewer
        can decode, the worker's own roulette then choosing among those stages of
        its own with the same weights. When the viewer can decode none, any stage's
        worker, which answers as one process would.
        """
        offered: dict[Worker, float] = {}
        fitting: dict[Worker, float] = {}
        for listing in self.workers.merged:
            worker = self.workers.all[listing.worker]
            if listing.live and worker.ready:
                weight = 1.0 / (1 + listing.watching)
                offered[worker] = offered.get(worker, 0.0) + weight
                if wanted is None or wanted.takes(listing):
                    fitting[worker] = fitting.get(worker, 0.0) + weight
        drawn = fitting or offered
        if not drawn:
            return self.home  # it says that nobody is on stage
        return random.choices(list(drawn), weights=list(drawn.values()))[0]

    def _with_room(self, worker: Worker) -> Worker:
        """The worker, or if it carries as many viewers as it may, the one with the
        fewest, which mirrors the stage (stage/links.py). When every worker is full,
        the worker itself answers 503."""
        cap = self.workers.settings.max_viewers
        if worker.viewers < cap:
            return worker
        ready = [w for w in self.workers.all if w.ready]
        roomiest = min(ready, key=lambda w: w.viewers, default=worker)
        return roomiest if roomiest.viewers < cap else worker

    def learn(self, request: web.Request, worker: Worker, response) -> None:
        """Remember where a new publisher or viewer lives, and forget one that left."""
        if request.method == "POST" and response.status == 201:
            found = LOCATION.match(response.headers.get("Location", ""))
            if found is None:
                return
            kind, resource = found.groups()
            remembered = self.viewers if kind == "whep/viewers" else self.publishers
            remembered[resource] = worker
            if len(remembered) > REMEMBERED:
                remembered.popitem(last=False)
            if kind != "whep/viewers":
                stage_id = kind.split("/")[1]
                worker.place(stage_id, asyncio.get_running_loop().time())
        elif request.method == "DELETE" and response.status == 200:
            parts = request.path.strip("/").split("/")
            self.viewers.pop(parts[-1], None)
            self.publishers.pop(parts[-1], None)

    def forget(self, worker: Worker) -> None:
        """A worker went down: its viewers and publishers went with it."""
        for remembered in (self.viewers, self.publishers):
            for resource in [r for r, w in remembered.items() if w is worker]:
                del remembered[resource]
        worker.placed.clear()


async def proxy(request: web.Request) -> web.StreamResponse:
    routes = request.app[ROUTES]
    offer = await _roulette_offer(request)
    wanted = receivable_video(offer.decode("utf-8", "replace")) if offer else None
    worker = routes.worker_for(request, wanted)
    if not worker.ready or worker.http is None:
        return _unavailable(request, worker)
    if not _arriving_viewer(request):
        return await _pass_on(request, routes, worker)
    # Counted as the worker's until it has answered (and its report counts it).
    worker.arriving += 1
    try:
        response = await _pass_on(request, routes, worker, offer)
    finally:
        worker.arriving -= 1
    if response.status == 201:
        worker.joined += 1
    return response


async def _roulette_offer(request: web.Request) -> bytes | None:
    """The body of `POST /whep`, read whole so that the roulette can see which
    codecs the viewer takes; None for any other request, and for a body too large
    to be an offer (passed on as it comes: the worker refuses it with 413)."""
    if request.method != "POST" or request.path.strip("/") != "whep":
        return None
    length = request.content_length
    if length is None or length > MAX_OFFER_BYTES:
        return None
    try:
        async with asyncio.timeout(requests.BODY_SECONDS):
            return await request.read()
    except TimeoutError:
        # Stalled after its headers: answered as a worker would answer it.
        message = requests.LATE_BODY.format(seconds=requests.BODY_SECONDS)
        raise web.HTTPRequestTimeout(
            text=json.dumps({"error": message}), content_type="application/json"
        ) from None
    except ConnectionError:
        # The client went away before its whole offer came: nobody is left to
        # answer, and nothing is wrong with any worker.
        logger.debug("front: a client left while sending its offer")
        raise web.HTTPBadRequest(text="The request was not sent whole.") from None


def _arriving_viewer(request: web.Request) -> bool:
    """`POST /whep` or `POST /whep/<stage>`: a viewer arriving."""
    parts = request.path.strip("/").split("/")
    return request.method == "POST" and parts[0] == "whep" and len(parts) <= 2


async def _pass_on(
    request: web.Request, routes: Routes, worker: Worker, body: bytes | None = None
) -> web.StreamResponse:
    """Pass the request on to the worker (its body as it comes, or `body` when it
    was read already) and its answer back."""
    headers = [
        (key, value)
        for key, value in request.headers.items()
        if key.lower() not in HOP_BY_HOP
    ]
    headers.append(("X-Forwarded-For", request.remote or ""))
    try:
        upstream = await worker.http.request(
            request.method,
            f"http://worker{request.path_qs}",
            headers=headers,
            data=body if body is not None else _streamed(request),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
    except (aiohttp.ClientError, OSError):
        if request.transport is None or request.transport.is_closing():
            # The client went away while its body was being passed on: nothing
            # is wrong with the worker, and nobody is left to answer.
            logger.debug("front: a client left mid-request to worker %d", worker.index)
            raise web.HTTPBadRequest(text="The request was not sent whole.") from None
        logger.warning("front: worker %d did not answer", worker.index, exc_info=True)
        return _unavailable(request, worker, status=502)

    async with upstream:
        routes.learn(request, worker, upstream)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        response.headers["X-Stage-Worker"] = str(worker.index)
        await response.prepare(request)
        # Chunks as they come: an event stream is written a line at a time, for hours.
        # Either side may go away meanwhile (a closed page, a worker that died).
        with contextlib.suppress(aiohttp.ClientPayloadError, ConnectionResetError):
            if upstream.content_type == "text/event-stream":
                await _pass_events(request, upstream, response)
            else:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
        if request.body_exists and not request.content.at_eof():
            # The worker answered before the whole body had come (a 413 for an
            # oversized offer): the rest is still owed on that connection, and the
            # worker would wait for it there, so the connection is not used again.
            upstream.close()
    return response


async def _pass_events(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
) -> None:
    """An event stream, passed on until the worker ends it or the client is gone.

    The client's TCP connection ends here, not at the worker: a client whose network
    died silently (B28) is dropped by this process's kernel once a heartbeat from the
    worker stays unacknowledged, as in one process (stage/api.py). The connection to
    the worker is then closed at once, and the worker frees its side of the stream.
    """
    drop_when_unacknowledged(request, DEAD_CLIENT)
    try:
        while not client_gone(request):
            try:
                async with asyncio.timeout(CLIENT_CHECK):
                    chunk = await upstream.content.readany()
            except TimeoutError:
                continue  # nothing from the worker: look at the client again
            if not chunk:
                return  # the worker ended the stream
            await response.write(chunk)
        raise ConnectionResetError("the client is gone")
    except ConnectionResetError:
        logger.debug("front: an event stream's client is gone")
        upstream.close()
        raise


def _streamed(request: web.Request):
    return request.content if request.body_exists else None


def _unavailable(
    request: web.Request, worker: Worker, status: int = 503
) -> web.Response:
    """The worker is down: a sentence, as JSON for the API and as a page for a
    person's browser, which looks again by itself."""
    headers = {
        "Retry-After": str(RETRY_AFTER),
        "Access-Control-Allow-Origin": "*",
        "X-Stage-Worker": str(worker.index),
    }
    if not wants_json(request) and "text/html" in request.headers.get("Accept", ""):
        return web.Response(
            text=UNAVAILABLE_PAGE.format(seconds=RETRY_AFTER, message=UNAVAILABLE),
            content_type="text/html",
            status=status,
            headers=headers,
        )
    return web.json_response({"error": UNAVAILABLE}, status=status, headers=headers)



async def recover(
    settings: Settings, only: set[str] | None = None, lane=(0, 1)
) -> None:
    """Finish the recordings a crash left: all, once, before any worker starts; or
    `only` those performances, and the visits of the lane of one worker that died."""
    settings.data.mkdir(parents=True, exist_ok=True)
    store = Store(settings.database, settings.view_seconds)
    venue = Venue(
        store, settings.data, settings.ice_servers, settings.max_viewers, lane=lane
    )
    try:
        await venue.recover(only)
    finally:
        await venue.audience.close()
        store.close()


def after_crash(settings: Settings):
    async def close_its_shows(report: Report) -> None:
        """A worker died: its shows ended with it, and their recordings stop there."""
        only = {s.performance for s in report.stages if s.performance}
        await recover(settings, only, lane=(report.worker, settings.workers))
        logger.info("worker %d: %d shows it left closed", report.worker, len(only))

    return close_its_shows


async def workers_lifetime(app: web.Application):
    settings = app[WORKERS].settings
    await recover(settings)
    workers = app[WORKERS]
    watching = asyncio.ensure_future(_forget_the_fallen(app))
    await workers.start()
    yield
    watching.cancel()
    await workers.stop()  # if stop_workers has not
    shutil.rmtree(workers.run_dir, ignore_errors=True)
    logger.info("Stage stopped: every worker ended")


async def stop_workers(app: web.Application) -> None:
    """Stopping waits for every request in progress, and proxied event streams end
    only when their workers end them: the workers stop first."""
    logger.info("Stage stopping: ending %d workers", len(app[WORKERS].all))
    await app[WORKERS].stop()


async def _forget_the_fallen(app: web.Application) -> None:
    """Drop the routes of a worker that went down, so its ids get a plain 404."""
    routes, workers = app[ROUTES], app[WORKERS]
    was_ready = {w: False for w in workers.all}
    while True:
        await asyncio.sleep(0.5)
        for worker in workers.all:
            if was_ready[worker] and not worker.ready:
                routes.forget(worker)
            was_ready[worker] = worker.ready


def create_front(settings: Settings) -> web.Application:
    hide_tokens_in_access_log()
    app = web.Application()
    run_dir = Path(tempfile.mkdtemp(prefix="stage-workers-"))
    app[WORKERS] = Workers(settings, run_dir, after_crash(settings))
    app[ROUTES] = Routes(app[WORKERS])
    app.cleanup_ctx.append(workers_lifetime)
    app.on_shutdown.append(stop_workers)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app
