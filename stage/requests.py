"""Reading what clients send: bodies, keys and cookies, each checked once."""

from __future__ import annotations

import asyncio
import json
import secrets

from aiohttp import web

from .errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from .relay.negotiation import MAX_OFFER_BYTES
from .store import StageRecord, Store

VISITOR_COOKIE = "stage_visitor"
MAX_JSON_BYTES = 16 * 1024
# A body (an offer, a stage's name) is small: a client that sent its headers and then
# stalls is answered 408 after this long rather than holding its connection and task.
BODY_SECONDS = 10.0
LATE_BODY = "The body did not arrive within {seconds:g} s."


async def read_json(request: web.Request) -> dict:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Send JSON with Content-Type: application/json.")
    body = await _read_limited(request, MAX_JSON_BYTES)
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise BadRequest("The body must be a JSON object.")
    return value


async def read_sdp(request: web.Request) -> str:
    if request.content_type != "application/sdp":
        raise UnsupportedMediaType(
            "Send an SDP offer with Content-Type: application/sdp."
        )
    body = await _read_limited(request, MAX_OFFER_BYTES)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The SDP offer is not valid UTF-8 text.") from None


async def read_sdp_fragment(request: web.Request) -> str:
    """A trickle PATCH body (RFC 8840): candidate lines, maybe ICE credentials."""
    if request.content_type != "application/trickle-ice-sdpfrag":
        raise UnsupportedMediaType(
            "Send candidates with Content-Type: application/trickle-ice-sdpfrag."
        )
    body = await _read_limited(request, MAX_OFFER_BYTES)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The candidates are not valid UTF-8 text.") from None


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is too large (at most {limit // 1024} KiB).")
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for chunk in request.content.iter_chunked(16 * 1024):
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(
                        f"The body is too large (at most {limit // 1024} KiB)."
                    )
    except TimeoutError:
        raise RequestTimeout(LATE_BODY.format(seconds=BODY_SECONDS)) from None
    return bytes(body)


def find_stage(store: Store, stage_id: str) -> StageRecord:
    stage = store.stage(stage_id)
    if stage is None:
        raise NotFound("There is no stage with this id.")
    return stage


def bearer_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    # Some encoders can only put the key in the URL.
    return request.query.get("token") or None


def owner_cookie(stage_id: str) -> str:
    return f"stage_owner_{stage_id}"


def require_key(request: web.Request, store: Store, stage: StageRecord) -> None:
    """The stage's key as a bearer token: needed to publish."""
    key = bearer_key(request)
    if key is None:
        raise Unauthorized("This needs the stage key as a bearer token.")
    if not store.key_matches(stage, key):
        raise Unauthorized("The stage key is wrong.")


def require_owner(request: web.Request, store: Store, stage: StageRecord) -> None:
    """The key, or the dashboard's session cookie: needed to see a stage's numbers."""
    if store.session_matches(stage, request.cookies.get(owner_cookie(stage.id))):
        return
    require_key(request, store, stage)


def visitor_id(request: web.Request) -> tuple[str, bool]:
    """The browser's viewer id from its cookie, or a new one (and whether it is new)."""
    value = request.cookies.get(VISITOR_COOKIE, "")
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value, False
    return secrets.token_hex(16), True


def remember_visitor(response: web.StreamResponse, visitor: str) -> None:
    response.set_cookie(
        VISITOR_COOKIE, visitor, max_age=365 * 24 * 3600, httponly=True, samesite="Lax"
    )
