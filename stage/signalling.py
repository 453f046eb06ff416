"""WHIP (RFC 9725) for publishers and WHEP, plus Next, for viewers."""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import CIMultiDict

from .api import send_events
from .appkeys import SETTINGS, STORE, VENUE
from .errors import NotFound
from .relay import ice
from .relay.negotiation import parse_offer
from .requests import (
    find_stage,
    read_sdp,
    read_sdp_fragment,
    remember_visitor,
    require_key,
    visitor_id,
)

logger = logging.getLogger(__name__)

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link",
    "Accept-Post": "application/sdp",
}
SIGNALLING_PATHS = ("/whip/", "/whep")


def add_cors(app: web.Application) -> None:
    """Every WHIP/WHEP response, refusals included, is readable by a page elsewhere.

    Players run on other sites. Without Access-Control-Allow-Origin on a 4xx, the
    browser hides the status and the JSON error from the page, which then sees only
    "Failed to fetch" instead of "wrong key" or "not live, retry in 5 s".
    """
    app.on_response_prepare.append(_cors_headers)


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not request.path.startswith(SIGNALLING_PATHS):
        return
    response.headers.setdefault("Access-Control-Allow-Origin", "*")
    response.headers.setdefault(
        "Access-Control-Expose-Headers", "Location, Link, Retry-After"
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/whip/{id}", publish)
    router.add_route("OPTIONS", "/whip/{id}", options)
    router.add_delete("/whip/{id}/publishers/{publisher}", unpublish)
    router.add_route("PATCH", "/whip/{id}/publishers/{publisher}", trickle_publisher)
    router.add_route("OPTIONS", "/whip/{id}/publishers/{publisher}", options)
    router.add_post("/whep", watch)
    router.add_route("OPTIONS", "/whep", options)
    router.add_post("/whep/{id}", watch)
    router.add_route("OPTIONS", "/whep/{id}", options)
    router.add_get("/whep/viewers/{viewer}", show_viewer)
    router.add_get("/whep/viewers/{viewer}/events", viewer_events)
    router.add_post("/whep/viewers/{viewer}/next", next_stage)
    router.add_delete("/whep/viewers/{viewer}", leave)
    router.add_route("PATCH", "/whep/viewers/{viewer}", trickle_viewer)
    router.add_route("OPTIONS", "/whep/viewers/{viewer}", options)


async def options(request: web.Request) -> web.Response:
    headers = CIMultiDict(CORS)
    add_ice_servers(request, headers)
    return web.Response(status=204, headers=headers)


def add_ice_servers(request: web.Request, headers: CIMultiDict) -> None:
    # RFC 9725 section 4.6: one Link header per configured STUN/TURN server.
    for url in request.app[SETTINGS].ice_servers:
        headers.add("Link", f'<{url}>; rel="ice-server"')


def sdp_answer(request: web.Request, sdp: str, location: str) -> web.Response:
    headers = CIMultiDict(
        {
            "Location": location,
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": "Location, Link",
        }
    )
    add_ice_servers(request, headers)
    return web.Response(
        status=201, text=sdp, content_type="application/sdp", headers=headers
    )


async def trickle_publisher(request: web.Request) -> web.Response:
    store = request.app[STORE]
    stage = find_stage(store, request.match_info["id"])
    require_key(request, store, stage)
    publisher = request.app[VENUE].publishers.get(request.match_info["publisher"])
    if publisher is None or publisher.stage_id != stage.id:
        raise NotFound("This publishing session does not exist or has already ended.")
    return await trickle(request, publisher.pc, f"publisher {publisher.id}")


async def trickle_viewer(request: web.Request) -> web.Response:
    viewer = request.app[VENUE].viewer(request.match_info["viewer"])
    return await trickle(request, viewer.pc, f"viewer {viewer.id}")


async def trickle(request: web.Request, pc, who: str) -> web.Response:
    """Trickled candidates (RFC 9725 section 4.3): added to the connection, 204."""
    fragment = await read_sdp_fragment(request)
    added = await ice.trickle(pc, fragment)
    logger.debug("%s: %d trickled candidates added", who, added)
    return web.Response(status=204, headers={"Access-Control-Allow-Origin": "*"})


# publishing


async def publish(request: web.Request) -> web.Response:
    store = request.app[STORE]
    stage = find_stage(store, request.match_info["id"])
    require_key(request, store, stage)
    offer = await read_sdp(request)
    publisher = await request.app[VENUE].publish(stage, offer)
    return sdp_answer(
        request, publisher.answer, f"/whip/{stage.id}/publishers/{publisher.id}"
    )


async def unpublish(request: web.Request) -> web.Response:
    store = request.app[STORE]
    stage = find_stage(store, request.match_info["id"])
    require_key(request, store, stage)
    await request.app[VENUE].unpublish(stage.id, request.match_info["publisher"])
    return web.Response(status=200, headers={"Access-Control-Allow-Origin": "*"})


# watching


async def watch(request: web.Request) -> web.Response:
    stage_id = request.match_info.get("id")
    if stage_id is not None:
        find_stage(request.app[STORE], stage_id)
    offer = await read_sdp(request)
    # A broken offer is the client's to fix: say so before "nothing is live".
    parse_offer(offer, sending=False)
    visitor, new = visitor_id(request)
    viewer = await request.app[VENUE].watch(visitor, offer, stage_id)
    response = sdp_answer(request, viewer.answer, f"/whep/viewers/{viewer.id}")
    if new:
        remember_visitor(response, visitor)
    return response


def viewer_summary(venue, viewer) -> dict:
    hub = viewer.hub
    if hub is None:
        return {"stage": None}
    return {
        "stage": {
            "id": hub.stage_id,
            "name": hub.name,
            "viewers": venue.watching_everywhere(hub),
            # The performer was lost and the stage waits for them: the picture is
            # frozen until they are back, or the viewer is moved on.
            "reconnecting": venue.reconnecting(hub.stage_id),
        }
    }


async def show_viewer(request: web.Request) -> web.Response:
    venue = request.app[VENUE]
    viewer = venue.viewer(request.match_info["viewer"])
    return web.json_response(viewer_summary(venue, viewer))


async def viewer_events(request: web.Request) -> web.StreamResponse:
    venue = request.app[VENUE]
    viewer = venue.viewer(request.match_info["viewer"])

    # The venue notifies a viewer's topic when its stage changes and when the count
    # on that stage does.
    return await send_events(
        request, ("viewer", viewer.id), lambda: viewer_summary(venue, viewer)
    )


async def next_stage(request: web.Request) -> web.Response:
    venue = request.app[VENUE]
    await venue.next(request.match_info["viewer"])
    viewer = venue.viewer(request.match_info["viewer"])
    return web.json_response(viewer_summary(venue, viewer))


async def leave(request: web.Request) -> web.Response:
    venue = request.app[VENUE]
    venue.viewer(request.match_info["viewer"])
    await venue.leave(request.match_info["viewer"])
    return web.Response(status=200, headers={"Access-Control-Allow-Origin": "*"})
