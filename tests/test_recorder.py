"""Recordings: written from the forwarded frames, downloaded through the API, decoded."""

import asyncio
import io

import av
import pytest

from tests.peers import PatternTrack, Publisher, ToneTrack, Viewer


async def performances(http, server, stage):
    headers = {"Authorization": f"Bearer {stage['key']}"}
    url = f"{server.base}/api/stages/{stage['id']}/performances"
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["performances"]


async def wait_recording(http, server, stage, states=("ready",), timeout=15):
    for _ in range(int(timeout * 10)):
        listed = await performances(http, server, stage)
        if (
            listed
            and listed[0]["recording"]
            and listed[0]["recording"]["state"] in states
        ):
            return listed[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"recording never reached {states}: {listed}")


def decode(data: bytes) -> dict:
    """Decode every frame; count them and measure each stream's span."""
    counts, spans = {}, {}
    with av.open(io.BytesIO(data)) as container:
        duration = container.duration / 1e6 if container.duration else None
        for frame in container.decode(*container.streams):
            kind = frame.__class__.__name__.replace("Frame", "").lower()
            counts[kind] = counts.get(kind, 0) + 1
            t = float(frame.pts * frame.time_base)
            low, high = spans.get(kind, (t, t))
            spans[kind] = (min(low, t), max(high, t))
    return {"counts": counts, "spans": spans, "duration": duration}


async def test_a_performance_is_recorded_and_downloadable(server, new_stage, http):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start()
    await asyncio.sleep(4)
    await viewer.stop()
    await publisher.stop()

    performance = await wait_recording(http, server, stage)
    recording = performance["recording"]
    assert recording["bytes"] > 10_000
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(server.base + recording["url"], headers=headers) as response:
        assert response.status == 200
        assert "attachment" in response.headers["Content-Disposition"]
        data = await response.read()
    assert len(data) == recording["bytes"]

    decoded = decode(data)
    assert decoded["counts"]["video"] > 80, decoded
    assert decoded["counts"]["audio"] > 150, decoded
    assert decoded["duration"] is not None, "a finished recording states its duration"
    assert abs(decoded["duration"] - performance["duration"]) < 0.5, (
        decoded,
        performance,
    )
    video, audio = decoded["spans"]["video"], decoded["spans"]["audio"]
    assert abs(video[0] - audio[0]) < 0.1, f"streams start apart: {decoded['spans']}"
    assert b"\x1c\x53\xbb\x6b" in data, "cues are written"

    # HTTP Range
    headers["Range"] = "bytes=100-199"
    async with http.get(server.base + recording["url"], headers=headers) as response:
        assert response.status == 206
        assert await response.read() == data[100:200]


async def test_a_performance_without_media_leaves_no_recording(server, new_stage, http):
    stage = await new_stage()
    publisher = Publisher(server.base, stage["id"], stage["key"])
    await publisher.start(audio=True, video=False)
    await publisher.stop()
    performance = await wait_recording(http, server, stage, states=("empty", "ready"))
    # A tone publisher that lived for a moment may have sent a few packets; either it
    # left a playable file or it is listed as empty, never an empty file.
    if performance["recording"]["state"] == "ready":
        headers = {"Authorization": f"Bearer {stage['key']}"}
        async with http.get(
            server.base + performance["recording"]["url"], headers=headers
        ) as r:
            assert decode(await r.read())["counts"].get("audio", 0) > 0
    else:
        headers = {"Authorization": f"Bearer {stage['key']}"}
        async with http.get(
            server.base + performance["recording"]["url"], headers=headers
        ) as r:
            assert r.status == 404
            assert "no media" in (await r.json())["error"]


async def test_audio_only_performance_gives_an_audio_only_file(server, new_stage, http):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start(
        video=False
    )
    await asyncio.sleep(3)
    await publisher.stop()
    performance = await wait_recording(http, server, stage)
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(
        server.base + performance["recording"]["url"], headers=headers
    ) as r:
        decoded = decode(await r.read())
    assert set(decoded["counts"]) == {"audio"}
    assert decoded["counts"]["audio"] > 100


async def test_recording_failure_warns_and_the_show_goes_on(
    server, new_stage, http, settings
):
    stage = await new_stage()
    # The stage's recording folder is taken by a file: nothing can be created in it.
    settings.data.mkdir(parents=True, exist_ok=True)
    (settings.data / stage["id"]).write_bytes(b"not a folder")
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start()
    await viewer.wait_video(count=10)

    for _ in range(60):
        async with http.get(f"{server.base}/api/stages/{stage['id']}") as response:
            summary = await response.json()
        if summary["recording"] and summary["recording"]["state"] == "failed":
            break
        await asyncio.sleep(0.1)
    assert summary["recording"]["state"] == "failed", summary
    assert "folder" in summary["recording"]["error"]
    assert summary["live"] is True
    later = viewer.frames["video"][-1][0]
    await viewer.wait_video(count=30, since=later, timeout=5)
    await viewer.stop()
    await publisher.stop()
    performance = await wait_recording(http, server, stage, states=("failed",))
    assert performance["recording"]["state"] == "failed"


async def test_a_short_show_is_still_recorded(server, new_stage, http):
    # Frames wait up to 3 s for the publisher's sender reports before the recording
    # starts; a show that ends sooner must still leave what it sent.
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    await asyncio.sleep(1.0)
    await publisher.stop()
    performance = await wait_recording(http, server, stage, states=("ready", "empty"))
    assert performance["recording"]["state"] == "ready", performance
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(
        server.base + performance["recording"]["url"], headers=headers
    ) as r:
        decoded = decode(await r.read())
    assert (
        decoded["counts"].get("video", 0) > 5 and decoded["counts"].get("audio", 0) > 10
    ), decoded


async def test_a_recording_still_being_made_is_a_conflict_not_missing(
    server, new_stage, http
):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    live = await wait_recording(http, server, stage, states=("recording",))
    headers = {"Authorization": f"Bearer {stage['key']}"}
    # Listed with its URL while live: asking for it then is "not yet", not "no such".
    async with http.get(server.base + live["recording"]["url"], headers=headers) as r:
        assert r.status == 409, (r.status, await r.text())
        assert (await r.json())["error"] == "The performance is still being recorded."
    await publisher.stop()

    done = await wait_recording(http, server, stage)
    assert done["recording"]["url"] == live["recording"]["url"]
    async with http.get(server.base + done["recording"]["url"], headers=headers) as r:
        assert r.status == 200
        assert decode(await r.read())["counts"]["video"] > 0


@pytest.mark.parametrize("fps", [30, 15])
async def test_a_recording_nobody_watched_can_be_sought_every_few_seconds(
    server, new_stage, http, fps
):
    """A publisher that sends keyframes only when asked (as browsers mostly do) and
    nobody watching: the recording still has one at least every ~2 s, whatever the
    frame rate (a webcam in low light sends 15 fps), so a seek or a clip's cut never
    has to decode from far back (B06)."""
    stage = await new_stage()
    publisher = Publisher(server.base, stage["id"], stage["key"])
    await publisher.start(tracks=[ToneTrack(), PatternTrack(fps=fps)])
    await asyncio.sleep(9)
    await publisher.stop()

    recording = (await wait_recording(http, server, stage))["recording"]
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(server.base + recording["url"], headers=headers) as response:
        assert response.status == 200
        data = await response.read()
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        keyframes = [
            float(packet.pts * packet.time_base)
            for packet in container.demux(video)
            if packet.pts is not None and packet.is_keyframe
        ]
        end = float(container.duration / 1e6)
    gaps = [b - a for a, b in zip(keyframes, [*keyframes[1:], end])]
    assert len(keyframes) >= 4 and max(gaps) <= 2.6, (keyframes, end)
