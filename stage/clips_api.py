"""Clips over HTTP: the artist cuts them, anyone with the link watches them.

The artist's side (the key or the dashboard cookie): make a clip of a recording, list
the stage's clips and the disk it uses, delete a clip or a recording. The public side:
a clip's page, its files and poster, and its play count.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from .appkeys import SETTINGS, STORE, VENUE
from .clip_exports import ClipExports
from .errors import BadRequest, Conflict, NotFound
from .recorder import clips
from .requests import find_stage, read_json, require_owner
from .store import ClipRecord, PerformanceRecord

logger = logging.getLogger(__name__)

EXPORTS = web.AppKey("clip_exports", ClipExports)
# How far past a recording's last frame an end may be asked for (rounding in players).
END_SLACK = 0.05
FILES = {"recorded": "recorded_path", "mp4": "mp4_path", "poster": "poster_path"}


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/performances/{id}/clips", make_clip)
    router.add_delete("/api/performances/{id}/recording", delete_recording)
    router.add_get("/api/performances/{id}/poster", recording_poster)
    router.add_get("/api/stages/{id}/clips", list_clips)
    router.add_get("/api/stages/{id}/storage", storage)
    router.add_get("/api/clips/{id}", show_clip)
    router.add_delete("/api/clips/{id}", delete_clip)
    router.add_post("/api/clips/{id}/plays", count_play)
    router.add_get("/api/clips/{id}/{file:recorded|mp4|poster}", clip_file)
    router.add_get("/clips/{id}", clip_page, name="clip")


async def exports_lifetime(app: web.Application):
    """Clip exports live as long as the app; clips a crash interrupted start again."""
    store, data = app[STORE], app[VENUE].data
    exports = ClipExports(store, data)
    app[EXPORTS] = exports
    # With several workers, the front sends every clip request to worker 0: only it
    # takes up the clips a crash interrupted.
    worker = app[SETTINGS].extra.get("worker")
    resumed = store.unfinished_clips() if worker is None or worker[0] == 0 else []
    for clip in resumed:
        performance = store.performance(clip.performance_id)
        recording = _recording_file(data, performance) if performance else None
        if recording is None:
            store.set_clip(clip.id, state="failed", error="Its recording is gone.")
        else:
            exports.submit(clip, recording)
    yield
    await exports.close()


# the artist's side


def _owned_performance(request: web.Request) -> PerformanceRecord:
    store = request.app[STORE]
    performance = store.performance(request.match_info["id"])
    if performance is None:
        raise NotFound("There is no performance with this id.")
    require_owner(request, store, find_stage(store, performance.stage_id))
    return performance


def _recording_file(data: Path, performance: PerformanceRecord) -> Path | None:
    if (
        performance.recording_state not in ("ready", "truncated")
        or not performance.recording_path
    ):
        return None
    path = (data / performance.recording_path).resolve()
    if data.resolve() not in path.parents or not path.is_file():
        return None
    return path


def _seconds(body: dict, name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(
            'Give the start and end in seconds: {"start": 12.5, "end": 72.5}.'
        )
    if not math.isfinite(value):
        raise BadRequest(f"The {name} must be a finite number of seconds.")
    return float(value)


async def make_clip(request: web.Request) -> web.Response:
    performance = _owned_performance(request)
    body = await read_json(request)
    start, end = _seconds(body, "start"), _seconds(body, "end")
    if start < 0:
        raise BadRequest("The start cannot be before the beginning of the recording.")
    if end == start:
        raise BadRequest("A clip cannot be zero seconds long.")
    if end < start:
        raise BadRequest("The end comes before the start.")

    state = performance.recording_state
    if state in ("recording", "finishing"):
        raise Conflict(
            "This recording is still being written; make clips once the show ends.",
            retry_after=5,
        )
    data = request.app[VENUE].data
    recording = _recording_file(data, performance)
    if recording is None:
        raise NotFound("This performance has no recording to make a clip of.")
    loop = asyncio.get_running_loop()
    length = await loop.run_in_executor(None, clips.duration_of, recording)
    if end > length + END_SLACK:
        raise BadRequest(f"The recording lasts {length:.1f} s; the end is beyond it.")
    end = min(end, length)
    if end - start <= 0:
        raise BadRequest("A clip cannot be zero seconds long.")

    store = request.app[STORE]
    clip = store.create_clip(performance, start, end)
    request.app[EXPORTS].submit(clip, recording)
    logger.info(
        "clip %s: asked for %.2f–%.2f s of performance %s",
        clip.id,
        start,
        end,
        performance.id,
    )
    response = web.json_response(clip_summary(request.app, clip), status=202)
    response.headers["Location"] = f"/api/clips/{clip.id}"
    return response


async def list_clips(request: web.Request) -> web.Response:
    store = request.app[STORE]
    stage = find_stage(store, request.match_info["id"])
    require_owner(request, store, stage)
    return web.json_response(
        {"clips": [clip_summary(request.app, c) for c in store.clips(stage.id)]}
    )


def _folder_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of recordings, bytes of clips) under a stage's folder."""
    recordings = clip_bytes = 0
    if not folder.is_dir():
        return 0, 0
    for path in folder.rglob("*"):
        if path.is_file():
            if path.parent.name == "clips":
                clip_bytes += path.stat().st_size
            else:
                recordings += path.stat().st_size
    return recordings, clip_bytes


async def storage(request: web.Request) -> web.Response:
    store = request.app[STORE]
    stage = find_stage(store, request.match_info["id"])
    require_owner(request, store, stage)
    folder = request.app[VENUE].data / stage.id
    loop = asyncio.get_running_loop()
    recordings, clip_bytes = await loop.run_in_executor(None, _folder_bytes, folder)
    return web.json_response(
        {
            "bytes": recordings + clip_bytes,
            "recordings": recordings,
            "clips": clip_bytes,
        }
    )


async def delete_recording(request: web.Request) -> web.Response:
    performance = _owned_performance(request)
    if performance.recording_state in ("recording", "finishing"):
        raise Conflict("This recording is still being written.", retry_after=5)
    if request.app[EXPORTS].reading(performance.id):
        raise Conflict(
            "A clip is being made from this recording; delete it once that is done.",
            retry_after=5,
        )
    data = request.app[VENUE].data
    recording = _recording_file(data, performance)
    if recording is None:
        raise NotFound("This performance has no recording to delete.")
    for path in (recording, _poster_path(recording)):
        path.unlink(missing_ok=True)
    request.app[STORE].forget_recording(performance.id)
    logger.info("performance %s: recording deleted by the artist", performance.id)
    return web.Response(status=204)


def _poster_path(recording: Path) -> Path:
    return recording.with_suffix(".jpg")


async def recording_poster(request: web.Request) -> web.StreamResponse:
    performance = _owned_performance(request)
    recording = _recording_file(request.app[VENUE].data, performance)
    if recording is None:
        raise NotFound("This performance has no recording.")
    poster = _poster_path(recording)
    if not poster.is_file():
        # Made on first request: one picture a little into the show.
        loop = asyncio.get_running_loop()
        length = await loop.run_in_executor(None, clips.duration_of, recording)
        await loop.run_in_executor(
            None, clips.poster, recording, poster, min(2.0, length / 2)
        )
    return web.FileResponse(poster, headers={"Cache-Control": "private, max-age=60"})


async def delete_clip(request: web.Request) -> web.Response:
    store = request.app[STORE]
    clip = _find_clip(request)
    require_owner(request, store, find_stage(store, clip.stage_id))
    if request.app[EXPORTS].busy(clip.id):
        raise Conflict(
            "This clip is still being made; delete it once it is ready.",
            retry_after=5,
        )
    data = request.app[VENUE].data
    for column in FILES.values():
        relative = getattr(clip, column)
        if relative:
            path = (data / relative).resolve()
            if data.resolve() in path.parents:
                path.unlink(missing_ok=True)
    store.delete_clip(clip.id)
    logger.info("clip %s: deleted by the artist", clip.id)
    return web.Response(status=204)


# the public side


def _find_clip(request: web.Request) -> ClipRecord:
    clip = request.app[STORE].clip(request.match_info["id"])
    if clip is None:
        raise NotFound("There is no clip with this id.")
    return clip


def clip_summary(app: web.Application, clip: ClipRecord) -> dict:
    stage = app[STORE].stage(clip.stage_id)
    ready = clip.state == "ready"
    base = f"/api/clips/{clip.id}"
    progress = app[EXPORTS].progress.get(clip.id)
    return {
        "id": clip.id,
        "page": f"/clips/{clip.id}",
        "stage": {"id": clip.stage_id, "name": stage.name if stage else ""},
        "performance_id": clip.performance_id,
        "start": clip.start,
        "end": clip.end,
        "duration": clip.duration,
        "state": clip.state,
        "progress": 1.0 if ready else round(progress or 0.0, 3),
        "error": clip.error,
        "plays": clip.plays,
        "bytes": clip.bytes,
        "recorded": f"{base}/recorded" if ready else None,
        "mp4": f"{base}/mp4" if ready else None,
        "poster": f"{base}/poster" if ready else None,
    }


async def show_clip(request: web.Request) -> web.Response:
    return web.json_response(clip_summary(request.app, _find_clip(request)))


async def count_play(request: web.Request) -> web.Response:
    clip = _find_clip(request)
    if clip.state != "ready":
        raise Conflict("This clip is not ready to play yet.", retry_after=5)
    request.app[STORE].count_play(clip.id)
    return web.Response(status=204)


async def clip_file(request: web.Request) -> web.StreamResponse:
    clip = _find_clip(request)
    kind = request.match_info["file"]
    relative = getattr(clip, FILES[kind])
    if clip.state != "ready" or not relative:
        raise NotFound("This clip is not ready yet.")
    data = request.app[VENUE].data
    path = (data / relative).resolve()
    if data.resolve() not in path.parents or not path.is_file():
        raise NotFound("The clip file is missing.")
    headers = {}
    if request.query.get("download"):
        stage = request.app[STORE].stage(clip.stage_id)
        name = f"{stage.name if stage else 'clip'}-{clip.id}{path.suffix}"
        # RFC 6266: a plain ASCII name for old clients, the real one encoded.
        headers["Content-Disposition"] = (
            f'attachment; filename="clip-{clip.id}{path.suffix}";'
            f" filename*=UTF-8''{quote(name)}"
        )
    return web.FileResponse(path, headers=headers)


async def clip_page(request: web.Request) -> web.Response:
    clip = request.app[STORE].clip(request.match_info["id"])
    if clip is None:
        # A shared link outlives a clip its artist deleted: a page, not JSON.
        context = {"message": "This clip is gone, or the link is wrong."}
        return aiohttp_jinja2.render_template(
            "missing.html", request, context, status=404
        )
    stage = request.app[STORE].stage(clip.stage_id)
    context = {"clip_id": clip.id, "stage_name": stage.name if stage else ""}
    return aiohttp_jinja2.render_template("clip.html", request, context)
