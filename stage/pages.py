"""The HTML pages. Each is a template and one script module; data comes from the API."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from .appkeys import SETTINGS, STORE
from .errors import NotFound
from .requests import find_stage


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", home, name="home")
    router.add_get("/watch", watch, name="watch")
    router.add_get("/perform", perform, name="perform")
    router.add_get("/stages/{id}", dashboard, name="dashboard")


@aiohttp_jinja2.template("index.html")
async def home(request: web.Request) -> dict:
    return {}


@aiohttp_jinja2.template("watch.html")
async def watch(request: web.Request) -> dict:
    return {}


@aiohttp_jinja2.template("perform.html")
async def perform(request: web.Request) -> dict:
    return {}


async def dashboard(request: web.Request) -> web.Response:
    try:
        stage = find_stage(request.app[STORE], request.match_info["id"])
    except NotFound as exc:
        context = {"message": exc.message}
        return aiohttp_jinja2.render_template(
            "missing.html", request, context, status=404
        )
    context = {
        "stage_id": stage.id,
        "stage_name": stage.name,
        "view_seconds": f"{request.app[SETTINGS].view_seconds:g}",
    }
    return aiohttp_jinja2.render_template("dashboard.html", request, context)
