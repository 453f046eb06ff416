"""The web application: routes, pages and the objects that live as long as the app."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import allocator, api, clips_api, pages, signalling
from .appkeys import SETTINGS, STORE, VENUE
from .config import Settings
from .errors import StageError
from .relay.ice import gather_on
from .store import Store
from .venue import Venue

logger = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent.parent / "web"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


# What the not-found page says for a path that is no page of ours.
NO_PAGE = "There is no page here."


class HideTokens(logging.Filter):
    """Keys passed as `?token=` must not reach the access log."""

    pattern = re.compile(r"([?&]token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                self.pattern.sub(r"\1***", a) if isinstance(a, str) else a
                for a in record.args
            )
        record.msg = self.pattern.sub(r"\1***", str(record.msg))
        return True


class BriefProtocolErrors(logging.Filter):
    """A request aiohttp cannot parse (a Content-Length that is no number, a request
    line or header too long) is the client's error, answered 400 by aiohttp itself;
    but aiohttp 3.13 logs it at ERROR with a whole traceback on `aiohttp.server`. It
    is said here in one line instead, with the reason. Anything else on that logger
    (a handler's unexpected error, a 500) passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= exc.code < 500:
            return True
        # The parser's message may quote the request after its first line: the
        # reason is the first line, and a key in it is hidden all the same.
        lines = [line.strip() for line in str(exc.message).splitlines()]
        reason = next((line for line in lines if line), type(exc).__name__)
        reason = HideTokens.pattern.sub(r"\1***", reason[:200].rstrip(":"))
        args = record.args if isinstance(record.args, tuple) else ()
        client = args[0] if args else "a client"
        logger.info(
            "malformed request from %s refused (%d): %s", client, exc.code, reason
        )
        return False


def hide_tokens_in_access_log() -> None:
    """Filters on aiohttp's own loggers: no key in the access log, and a malformed
    request logged in one line (BriefProtocolErrors)."""
    access = logging.getLogger("aiohttp.access")
    if not any(isinstance(f, HideTokens) for f in access.filters):
        access.addFilter(HideTokens())
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BriefProtocolErrors) for f in server.filters):
        server.addFilter(BriefProtocolErrors())


def create_app(settings: Settings) -> web.Application:
    hide_tokens_in_access_log()
    app = web.Application(middlewares=[errors_as_json, security_headers])
    app[SETTINGS] = settings
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(WEB / "templates"),
        context_processors=[page_context],
        autoescape=True,
    )
    app.cleanup_ctx.append(venue_lifetime)
    app.on_shutdown.append(end_event_streams)
    app.cleanup_ctx.append(clips_api.exports_lifetime)
    app.cleanup_ctx.append(allocator.trimming)
    api.add_routes(app.router)
    clips_api.add_routes(app.router)
    signalling.add_routes(app.router)
    signalling.add_cors(app)
    pages.add_routes(app.router)
    app.router.add_static("/static/", WEB / "static", name="static")
    return app


async def venue_lifetime(app: web.Application):
    settings = app[SETTINGS]
    settings.data.mkdir(parents=True, exist_ok=True)
    gather_on(settings.ice_addresses)
    store = Store(settings.database, settings.view_seconds)
    # A worker behind the front (stage/worker.py) is one of several writing the
    # database; the front finished what a crash left, once, before starting them.
    worker = settings.extra.get("worker")
    venue = Venue(
        store,
        settings.data,
        settings.ice_servers,
        settings.max_viewers,
        max_stages=settings.max_stages,
        lane=worker or (0, 1),
    )
    if worker is None:
        await venue.recover()
    venue.audience.start()
    app[STORE] = store
    app[VENUE] = venue
    logger.info("Stage ready: data in %s", settings.data.resolve())
    yield
    logger.info(
        "Stage stopping: ending %d live stages and %d visits",
        len(venue.hubs),
        len(venue.viewers),
    )
    await venue.close()
    store.close()
    logger.info("Stage stopped: every recording closed")


async def end_event_streams(app: web.Application) -> None:
    """Stopping waits for every request in progress: a page's event stream would
    only end at its next heartbeat write that fails, or never."""
    app[VENUE].bulletin.close()


async def page_context(request: web.Request) -> dict:
    return {"ice_servers_json": json.dumps(list(request.app[SETTINGS].ice_servers))}


@web.middleware
async def errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except StageError as exc:
        logger.info(
            "%s %s -> %s: %s", request.method, request.path, exc.status, exc.message
        )
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return web.json_response(
            {"error": exc.message}, status=exc.status, headers=headers
        )
    except web.HTTPException as exc:
        if exc.status == 404 and _wants_page(request):
            # A mistyped or stale link: the site's own not-found page, with a way on.
            return aiohttp_jinja2.render_template(
                "missing.html", request, {"message": NO_PAGE}, status=404
            )
        if exc.status < 400 or not wants_json(request):
            raise
        message = (
            exc.text
            if exc.text and not exc.text.startswith(str(exc.status))
            else exc.reason
        )
        return web.json_response(
            {"error": message}, status=exc.status, headers=_kept_headers(exc)
        )
    except ConnectionResetError:
        # The client left while it was sending (a closed tab, a lost network, or the
        # front of --workers passing that on): nothing went wrong here, and nobody
        # is left to read an answer.
        logger.debug("%s %s: the client left mid-request", request.method, request.path)
        return web.Response(status=400, text="The request was not sent whole.")
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return web.json_response(
            {"error": "Something went wrong on our side. Please try again."}, status=500
        )


def _wants_page(request: web.Request) -> bool:
    """A person's browser asking for a page (not the API, not a script or a file)."""
    return (
        request.method in ("GET", "HEAD")
        and not wants_json(request)
        and "text/html" in request.headers.get("Accept", "")
    )


def wants_json(request: web.Request) -> bool:
    return request.path.startswith(("/api/", "/whip", "/whep"))


def _kept_headers(exc: web.HTTPException) -> dict:
    return {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}


@web.middleware
async def security_headers(request: web.Request, handler):
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response
