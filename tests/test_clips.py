"""Clips: cut from a real recording through the API, checked frame by frame."""

import asyncio
import shutil
import time
from pathlib import Path

import av
import numpy
import pytest
import pytest_asyncio
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from stage.config import Settings
from stage.server import create_app
from tests.peers import Publisher, Viewer
from tests.show import (
    BeepTrack,
    CaptureClock,
    FlashTrack,
    assert_plays,
    check_file,
    lip_sync,
)
from tests.test_recorder import wait_recording


def bearer(stage) -> dict:
    return {"Authorization": f"Bearer {stage['key']}"}


async def record_show(settings: Settings) -> tuple[dict, dict]:
    """A 12 s show with a flash and a beep each second; a viewer joining at 6 s makes
    the publisher send a keyframe there, so a clip has a head to encode and a rest to
    copy. Returns the stage (with its key) and the finished performance."""
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    base = server.base = str(server.make_url("")).rstrip("/")
    try:
        async with ClientSession() as http:
            async with http.post(
                f"{base}/api/stages", json={"name": "Flash & Beep"}
            ) as response:
                assert response.status == 201, await response.text()
                stage = await response.json()
            clock = CaptureClock()
            publisher = await Publisher(base, stage["id"], stage["key"]).start(
                tracks=[BeepTrack(clock), FlashTrack(clock)]
            )
            await asyncio.sleep(6)
            viewer = await Viewer(base).start(stage["id"])
            await asyncio.sleep(6)
            await viewer.stop()
            await publisher.stop()
            performance = await wait_recording(http, server, stage)
    finally:
        await server.close()
    return stage, performance


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def show_data(tmp_path_factory):
    """One real show, recorded once for the module by a server that then stops.

    Each test that cuts clips gets its own copy of that server's data folder (see
    `settings`) and a fresh server on it, as after a restart: what one test deletes
    or adds, no other test sees, and the 12 s show is played once, not per test.
    """
    folder = tmp_path_factory.mktemp("clips-show")
    settings = Settings(
        data=folder / "data", ice_addresses=("127.0.0.1",), view_seconds=1.0
    )
    stage, performance = await record_show(settings)
    return settings.data, stage, performance


@pytest.fixture
def settings(request, tmp_path):
    data = tmp_path / "data"
    if "recorded" in request.fixturenames:
        shown, _, _ = request.getfixturevalue("show_data")
        shutil.copytree(shown, data)
    return Settings(data=data, ice_addresses=("127.0.0.1",), view_seconds=1.0)


@pytest.fixture
def recorded(settings, show_data):
    """The module's show, in this test's own copy of the data (see `show_data`)."""
    _, stage, performance = show_data
    return stage, performance


async def make_clip(server, http, stage, performance, body, headers=None):
    url = f"{server.base}/api/performances/{performance['id']}/clips"
    headers = bearer(stage) if headers is None else headers
    async with http.post(url, json=body, headers=headers) as r:
        return r.status, await r.json()


async def wait_clip(server, http, clip_id, timeout=120):
    seen = []
    for _ in range(timeout * 10):
        async with http.get(f"{server.base}/api/clips/{clip_id}") as r:
            clip = await r.json()
        seen.append(clip["progress"])
        if clip["state"] in ("ready", "failed"):
            return clip, seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"clip never finished: {clip}")


async def ready_clip(server, http, stage, performance, start, end) -> dict:
    """Make a clip from `start` to `end` s and wait until it is ready."""
    body = {"start": start, "end": end}
    status, clip = await make_clip(server, http, stage, performance, body)
    assert status == 202, clip
    clip, _ = await wait_clip(server, http, clip["id"])
    assert clip["state"] == "ready", clip
    return clip


async def fetch(server, http, url, folder: Path, name: str) -> Path:
    async with http.get(server.base + url) as r:
        assert r.status == 200, await r.text()
        path = folder / name
        path.write_bytes(await r.read())
    return path


def picture_at(path: Path, at: float) -> numpy.ndarray:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if float(frame.pts * frame.time_base) >= at - 0.001:
                return frame.to_ndarray(format="gray").astype(numpy.int16)
    raise AssertionError(f"no picture at {at} s in {path}")


def video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


async def test_a_clip_is_cut_to_the_moment_in_webm_and_mp4(
    server, http, recorded, tmp_path, settings
):
    stage, performance = recorded
    recording = await fetch(
        server,
        http,
        performance["recording"]["url"] + f"?token={stage['key']}",
        tmp_path,
        "recording.webm",
    )
    source_sync = lip_sync(check_file(recording))
    start, end = 3.3, 9.3
    status, clip = await make_clip(
        server, http, stage, performance, {"start": start, "end": end}
    )
    assert status == 202, clip
    assert clip["state"] in ("queued", "exporting"), clip
    clip, progress = await wait_clip(server, http, clip["id"])
    assert clip["state"] == "ready", clip
    print(f"clip progress seen: {sorted(set(progress))}")

    for kind in ("recorded", "mp4"):
        path = await fetch(server, http, clip[kind], tmp_path, f"clip.{kind}")
        checked = check_file(path)
        offsets = lip_sync(checked)
        print(f"{kind}: {checked.duration} s, {checked.counts}, lip sync {offsets}")
        assert_plays(checked)
        # Frame-exact cut: well within one keyframe interval (here about 3 s).
        assert abs(checked.duration - (end - start)) < 0.15, checked.duration
        assert checked.spans["video"][0] < 0.05, checked.spans
        assert abs(checked.spans["audio"][0] - checked.spans["video"][0]) < 0.05
        # Audio stays where it was against the picture (the recording's own lip
        # sync is tested in test_recorder_field.py).
        assert offsets, (checked.flashes, checked.beeps)
        shift = numpy.median(offsets) - numpy.median(source_sync)
        assert abs(shift) <= 0.015, f"{kind} moved audio by {shift * 1000:.0f} ms"

        # The first picture is the recording's picture at the start, whole.
        first = picture_at(path, 0.0)
        wanted = picture_at(recording, start)
        assert first.shape == wanted.shape
        difference = numpy.abs(first - wanted).mean()
        assert difference < 4, f"first frame differs from the source by {difference}"

    # As recorded: from the keyframe after the start on, packets are the recording's.
    source = set(video_packets(recording))
    kept = video_packets(tmp_path / "clip.recorded")
    copied = sum(1 for p in kept if p in source)
    print(f"as recorded: {copied} of {len(kept)} video packets copied")
    assert copied > len(kept) * 0.3, (copied, len(kept))

    # The poster is a picture.
    poster = await fetch(server, http, clip["poster"], tmp_path, "poster.jpg")
    with av.open(str(poster)) as container:
        image = next(container.decode(video=0))
    assert image.width == 320 and image.height == 240

    # Downloads say so; the public page names the performer.
    async with http.get(server.base + clip["mp4"] + "?download=1") as r:
        assert "attachment" in r.headers["Content-Disposition"]
    async with http.get(f"{server.base}/clips/{clip['id']}") as r:
        assert r.status == 200
        page = await r.text()
    assert "Flash &amp; Beep" in page


async def test_plays_are_counted_and_clips_listed(server, http, recorded):
    stage, performance = recorded
    _, clip = await make_clip(server, http, stage, performance, {"start": 1, "end": 3})
    clip, _ = await wait_clip(server, http, clip["id"])
    for _ in range(3):
        async with http.post(f"{server.base}/api/clips/{clip['id']}/plays") as r:
            assert r.status == 204
    async with http.get(f"{server.base}/api/clips/{clip['id']}") as r:
        assert (await r.json())["plays"] == 3
    url = f"{server.base}/api/stages/{stage['id']}/clips"
    async with http.get(url, headers=bearer(stage)) as r:
        listed = (await r.json())["clips"]
    assert [c["id"] for c in listed] == [clip["id"]]
    async with http.get(url) as r:
        assert r.status == 401


async def test_deleting_a_clip_and_a_recording_frees_the_disk(
    server, http, recorded, settings
):
    stage, performance = recorded
    storage_url = f"{server.base}/api/stages/{stage['id']}/storage"

    async def used():
        async with http.get(storage_url, headers=bearer(stage)) as r:
            assert r.status == 200
            return await r.json()

    before = await used()
    assert before["recordings"] >= performance["recording"]["bytes"] > 0, before
    _, clip = await make_clip(server, http, stage, performance, {"start": 0, "end": 2})
    clip, _ = await wait_clip(server, http, clip["id"])
    with_clip = await used()
    assert with_clip["clips"] == clip["bytes"] > 0, (with_clip, clip)

    async with http.delete(f"{server.base}/api/clips/{clip['id']}") as r:
        assert r.status == 401, "deleting needs the key"
    async with http.delete(
        f"{server.base}/api/clips/{clip['id']}", headers=bearer(stage)
    ) as r:
        assert r.status == 204
    async with http.get(f"{server.base}/api/clips/{clip['id']}") as r:
        assert r.status == 404
    assert (await used())["clips"] == 0

    url = f"{server.base}/api/performances/{performance['id']}/recording"
    async with http.delete(url, headers=bearer(stage)) as r:
        assert r.status == 204
    assert (await used())["bytes"] == 0
    async with http.get(url, headers=bearer(stage)) as r:
        assert r.status == 404
    async with http.delete(url, headers=bearer(stage)) as r:
        assert r.status == 404


def clip_files(settings) -> list[Path]:
    return sorted(settings.data.glob("*/clips/*"))


def clip_rows(settings) -> int:
    import sqlite3

    with sqlite3.connect(settings.database) as db:
        return db.execute("SELECT COUNT(*) FROM clips").fetchone()[0]


BAD = {
    "end before start": ({"start": 5, "end": 2}, 400, "before the start"),
    "beyond the recording": ({"start": 5, "end": 500}, 400, "beyond"),
    "zero length": ({"start": 4, "end": 4}, 400, "zero seconds"),
    "negative start": ({"start": -1, "end": 2}, 400, "before the beginning"),
    "text for a number": ({"start": "1", "end": 2}, 400, "in seconds"),
    "missing end": ({"start": 1}, 400, "in seconds"),
    "true as a number": ({"start": True, "end": 2}, 400, "in seconds"),
}


async def test_bad_clip_requests_are_refused_and_write_nothing(
    server, http, recorded, settings
):
    # Every case against one recording: a recording takes 12 s to make.
    stage, performance = recorded
    for case, (body, status, words) in BAD.items():
        got, answer = await make_clip(server, http, stage, performance, body)
        assert got == status and words in answer["error"], (case, got, answer)
        assert clip_rows(settings) == 0 and clip_files(settings) == [], case


async def test_clip_requests_need_the_key_json_and_a_finished_recording(
    server, http, new_stage, settings
):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    await asyncio.sleep(2)
    url = f"{server.base}/api/stages/{stage['id']}/performances"
    async with http.get(url, headers=bearer(stage)) as r:
        (performance,) = (await r.json())["performances"]
    assert performance["recording"]["state"] == "recording"

    status, answer = await make_clip(
        server, http, stage, performance, {"start": 0, "end": 1}
    )
    assert status == 409 and "still being written" in answer["error"], answer
    status, answer = await make_clip(
        server, http, stage, performance, {"start": 0, "end": 1}, headers={}
    )
    assert status == 401, answer
    clips_url = f"{server.base}/api/performances/{performance['id']}/clips"
    async with http.post(clips_url, data="start=0", headers=bearer(stage)) as r:
        assert r.status == 415
    async with http.post(
        f"{server.base}/api/performances/nope/clips", json={"start": 0, "end": 1}
    ) as r:
        assert r.status == 404
    async with http.delete(
        f"{server.base}/api/performances/{performance['id']}/recording",
        headers=bearer(stage),
    ) as r:
        assert r.status == 409
    await publisher.stop()
    assert clip_rows(settings) == 0 and clip_files(settings) == []

    async with http.get(f"{server.base}/api/clips/nope") as r:
        assert r.status == 404
    async with http.post(f"{server.base}/api/clips/nope/plays") as r:
        assert r.status == 404
    async with http.get(f"{server.base}/clips/nope") as r:
        assert r.status == 404


async def test_an_export_does_not_stall_the_relay(server, http, recorded, new_stage):
    """While a long MP4 is encoded, a live stage's viewer keeps getting frames."""
    stage, performance = recorded
    other = await new_stage("Live Meanwhile")
    publisher = await Publisher(server.base, other["id"], other["key"]).start()
    viewer = await Viewer(server.base).start(other["id"])
    await viewer.wait_video(count=10)
    # The performance runs from the publisher's connection to its goodbye; the
    # recording starts with the first aligned frames, up to a few seconds later on a
    # busy machine, so the clip ends well inside it.
    status, clip = await make_clip(
        server,
        http,
        stage,
        performance,
        {"start": 0, "end": performance["duration"] - 3},
    )
    assert status == 202, clip
    began = time.monotonic()
    clip, _ = await wait_clip(server, http, clip["id"])
    took = time.monotonic() - began
    arrivals = [t for t, _ in viewer.frames["video"] if t >= began]
    gap = max(numpy.diff([began, *arrivals, began + took]))
    print(
        f"export took {took:.1f} s; viewer got {len(arrivals)} frames, gap {gap:.2f} s"
    )
    assert clip["state"] == "ready"
    # An export on the event loop would freeze every viewer for its whole length.
    assert gap < max(1.0, took / 2), (gap, took)
    await viewer.stop()
    await publisher.stop()
