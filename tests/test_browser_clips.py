"""Clips in headless Chromium, as the artist and a fan would use them.

An aiortc publisher performs for about 8 s; the artist signs in to the dashboard with
the stage key, scrubs the recording, marks a start and an end and makes a clip; a fan
with no cookies opens the clip's public page, plays it and downloads both files,
which are decoded back with PyAV; the artist deletes the clip and the disk figure
drops. Screenshots of both pages go to /tmp/stage-shots/.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import av
import pytest
from playwright.async_api import expect

from tests.browser import launch_chromium, new_page, screenshot
from tests.peers import PatternTrack, Publisher, ToneTrack
from tests.test_clips import fetch, make_clip, wait_clip
from tests.test_clips_h264 import between_keyframes, keyframe_times, video_counts
from tests.test_ffmpeg_whip import download_recording, ffmpeg_publishing
from tests.test_recorder import wait_recording

SHOTS = Path("/tmp/stage-shots")
UI_TIMEOUT_MS = 15_000
# Exports run off the event loop on a shared 2-core machine: give them room.
EXPORT_TIMEOUT_MS = 90_000
SHOW_SECONDS = 8
START, END = 2.0, 6.0
# The cut is frame-exact on the encoded head; allow a few frames of rounding.
LENGTH_TOLERANCE = 0.25


def keep_shot(path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SHOTS / path.name)


def decode(path: Path) -> dict:
    """Decode every frame; count them and measure the span of the pictures."""
    counts: dict[str, int] = {}
    first = last = None
    with av.open(str(path)) as container:
        streams = sorted(s.type for s in container.streams)
        codecs = sorted(s.codec_context.name for s in container.streams)
        for frame in container.decode(*container.streams):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "video":
                t = float(frame.pts * frame.time_base)
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
    span = None if first is None else last - first + 1 / 30
    return {"streams": streams, "codecs": codecs, "counts": counts, "span": span}


async def clip_from_api(http, base: str, clip_id: str) -> dict:
    async with http.get(f"{base}/api/clips/{clip_id}") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def clips_of(http, base: str, stage: dict) -> list:
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(f"{base}/api/stages/{stage['id']}/clips", headers=headers) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["clips"]


async def storage_of(http, base: str, stage: dict) -> dict:
    headers = {"Authorization": f"Bearer {stage['key']}"}
    url = f"{base}/api/stages/{stage['id']}/storage"
    async with http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def scrub_to(page, seconds: float) -> None:
    """Move the editor's scrubber as a person drags it, and wait for the seek."""
    await page.locator("#editor-scrubber").fill(f"{seconds:g}")
    await page.wait_for_function(
        "(t) => { const v = document.getElementById('editor-video');"
        " return !v.seeking && Math.abs(v.currentTime - t) < 0.05; }",
        arg=seconds,
        timeout=UI_TIMEOUT_MS,
        polling=50,
    )


async def wait_advancing(page, selector: str) -> None:
    """The video shows pictures and its clock moves."""
    await page.wait_for_function(
        "(sel) => document.querySelector(sel).videoWidth > 0",
        arg=selector,
        timeout=UI_TIMEOUT_MS,
        polling=50,
    )
    t0 = await page.evaluate(
        "(sel) => document.querySelector(sel).currentTime", selector
    )
    await page.wait_for_function(
        "(a) => document.querySelector(a.sel).currentTime > a.t + 0.3",
        arg={"sel": selector, "t": t0},
        timeout=UI_TIMEOUT_MS,
        polling=50,
    )


async def download(page, selector: str, folder: Path) -> Path:
    async with page.expect_download(timeout=UI_TIMEOUT_MS) as info:
        await page.click(selector)
    done = await info.value
    path = folder / done.suggested_filename
    await done.save_as(str(path))
    return path


# Chromium lowers its camera's frame rate when the CPU is busy, and the test counts
# the recorded frames: see pytest.ini.
@pytest.mark.alone
async def test_artist_cuts_a_clip_and_a_fan_plays_and_downloads_it(
    server, http, new_stage, tmp_path
):
    # ~8 s of a real performance, recorded by the server.
    stage = await new_stage("Night Shift")
    publisher = Publisher(server.base, stage["id"], stage["key"])
    await publisher.start(
        tracks=[ToneTrack(), PatternTrack(width=640, height=360, shade=60)]
    )
    await asyncio.sleep(SHOW_SECONDS)
    await publisher.stop()
    performance = await wait_recording(http, server, stage)

    async with launch_chromium(None) as browser:
        # The artist signs in on the dashboard with the stage key.
        dashboard = await new_page(browser, viewport={"width": 1100, "height": 1300})
        await dashboard.goto(f"{server.base}/stages/{stage['id']}")
        await expect(dashboard.locator("#sign-in-form")).to_be_visible(
            timeout=UI_TIMEOUT_MS
        )
        await dashboard.fill("#key", stage["key"])
        await dashboard.click("#sign-in")
        await expect(dashboard.locator("tr.performance")).to_have_count(1)
        await expect(dashboard.locator("#no-clips")).to_be_visible()
        disk_text = dashboard.locator("#stage-disk")
        await expect(disk_text).not_to_have_text("—")
        disk_before = await disk_text.text_content()

        # The editor: the recording loads, the scrubber spans it, Play plays.
        editor = dashboard.locator("#clip-editor")
        await expect(editor).to_be_hidden()
        await dashboard.click("tr.performance .open-editor")
        await expect(editor).to_be_visible()
        await dashboard.wait_for_function(
            "() => Number(document.getElementById('editor-scrubber').max) > 0",
            timeout=UI_TIMEOUT_MS,
            polling=50,
        )
        scrub_max = float(
            await dashboard.locator("#editor-scrubber").get_attribute("max")
        )
        assert abs(scrub_max - performance["duration"]) < 1.0, (scrub_max, performance)
        await dashboard.click("#editor-play")
        await wait_advancing(dashboard, "#editor-video")
        await expect(dashboard.locator("#editor-play")).to_have_text("Pause")
        await dashboard.wait_for_function(
            "() => Number(document.getElementById('editor-scrubber').value) > 0",
            timeout=UI_TIMEOUT_MS,
            polling=50,
        )
        await dashboard.click("#editor-play")
        await expect(dashboard.locator("#editor-play")).to_have_text("Play")

        # Marks the wrong way round: the editor says so, the server refuses, and no
        # clip is made.
        await scrub_to(dashboard, START)
        await expect(dashboard.locator("#editor-position")).to_have_text("0:02.0")
        await dashboard.click("#mark-start")
        await expect(dashboard.locator("#clip-start")).to_have_text("0:02.0")
        await scrub_to(dashboard, 1)
        await dashboard.click("#mark-end")
        await expect(dashboard.locator("#clip-length")).to_have_text(
            "the end is not after the start"
        )
        await dashboard.click("#make-clip")
        await expect(dashboard.locator("#clip-error")).to_have_text(
            "The end comes before the start."
        )
        await expect(dashboard.locator("li.clip")).to_have_count(0)
        assert not await clips_of(http, server.base, stage)

        # Mark a start and an end with the scrubber; the marked part shows on it.
        await scrub_to(dashboard, END)
        await dashboard.click("#mark-end")
        await expect(dashboard.locator("#clip-end")).to_have_text("0:06.0")
        await expect(dashboard.locator("#clip-length")).to_have_text("4.0 s")
        band = await dashboard.locator("#editor-marks").bounding_box()
        track = await dashboard.locator("#editor-scrubber").bounding_box()
        assert band and track, (band, track)
        marked = [
            (band["x"] - track["x"]) / track["width"] * scrub_max,
            (band["x"] + band["width"] - track["x"]) / track["width"] * scrub_max,
        ]
        assert abs(marked[0] - START) < 0.1 and abs(marked[1] - END) < 0.1, marked
        await dashboard.click("#make-clip")
        await expect(dashboard.locator("#clip-error")).to_be_hidden()

        # Progress shows while it is made, then the clip is listed with a poster and
        # its public link.
        item = dashboard.locator("li.clip")
        await expect(item).to_have_count(1)
        await expect(dashboard.locator("#no-clips")).to_be_hidden()
        await expect(item).to_have_attribute(
            "data-state", "ready", timeout=EXPORT_TIMEOUT_MS
        )
        await expect(dashboard.locator("#clip-making")).to_be_hidden()
        clip_id = await item.get_attribute("data-id")
        poster = item.locator("img")
        await expect(poster).to_have_count(1)
        await dashboard.wait_for_function(
            "() => { const i = document.querySelector('li.clip img');"
            " return i && i.complete && i.naturalWidth > 0; }",
            timeout=UI_TIMEOUT_MS,
            polling=50,
        )
        link = item.get_by_role("link", name="Public page")
        await expect(link).to_have_attribute("href", f"/clips/{clip_id}")
        await expect(item).to_contain_text("0:02.0–0:06.0")
        await expect(disk_text).not_to_have_text(disk_before)
        disk_with_clip = await disk_text.text_content()
        assert _megabytes(disk_with_clip) > _megabytes(disk_before)
        shot = tmp_path / "dashboard-clips.png"
        await dashboard.screenshot(path=str(shot), full_page=True)
        keep_shot(shot)

        clip = await clip_from_api(http, server.base, clip_id)
        assert clip["state"] == "ready" and clip["plays"] == 0, clip
        assert (clip["start"], clip["end"]) == (START, END), clip

        # A fan, with no cookies, opens the public page and plays the clip.
        fan_context = await browser.new_context(
            viewport={"width": 1100, "height": 900}, accept_downloads=True
        )
        fan = await fan_context.new_page()
        await fan.goto(f"{server.base}/clips/{clip_id}")
        await expect(fan.locator("#clip-performer")).to_have_text("Night Shift")
        await expect(fan.locator("#clip-player")).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(fan.locator("#clip-length")).to_have_text("0:04")
        await fan.click("#clip-video")
        await wait_advancing(fan, "#clip-video")
        await expect(fan.locator("#clip-plays")).to_have_text("1 play")
        assert (await clip_from_api(http, server.base, clip_id))["plays"] == 1

        # Pausing and playing again in the same visit counts no second play.
        await fan.evaluate("() => document.getElementById('clip-video').pause()")
        await fan.click("#clip-video")
        await wait_advancing(fan, "#clip-video")
        assert (await clip_from_api(http, server.base, clip_id))["plays"] == 1
        await fan.evaluate("() => document.getElementById('clip-video').pause()")
        # On a 1280x720 screen the downloads are in sight with the player.
        await fan.set_viewport_size({"width": 1280, "height": 720})
        for selector in ("#download-mp4", "#download-recorded"):
            box = await fan.locator(selector).bounding_box()
            assert box["y"] + box["height"] <= 720, (selector, box)
        keep_shot(await screenshot(fan, tmp_path / "clip-page.png"))

        # Both downloads work and hold the asked-for 4 s.
        for selector, container, video_codec in (
            ("#download-mp4", "mp4", "h264"),
            ("#download-recorded", "webm", "vp8"),
        ):
            path = await download(fan, selector, tmp_path)
            assert path.suffix == f".{container}", path
            result = decode(path)
            print(f"{selector}: {path.stat().st_size} bytes, {result}")
            assert result["streams"] == ["audio", "video"], result
            assert video_codec in result["codecs"], result
            assert result["counts"].get("video", 0) > 25 * (END - START) * 0.8, result
            assert result["counts"].get("audio", 0) > 0, result
            assert abs(result["span"] - (END - START)) < LENGTH_TOLERANCE, result

        # A new visit is a new play.
        await fan.reload()
        await expect(fan.locator("#clip-player")).to_be_visible(timeout=UI_TIMEOUT_MS)
        await fan.click("#clip-video")
        await wait_advancing(fan, "#clip-video")
        await expect(fan.locator("#clip-plays")).to_have_text("2 plays")
        assert (await clip_from_api(http, server.base, clip_id))["plays"] == 2

        # The artist deletes the clip: it leaves the list and the disk figure drops.
        await dashboard.reload()
        await expect(item).to_have_count(1, timeout=UI_TIMEOUT_MS)
        await expect(item).to_contain_text("2 plays")
        await item.get_by_role("button", name="Delete").click()
        await expect(item).to_have_count(0)
        await expect(dashboard.locator("#no-clips")).to_be_visible()
        await expect(disk_text).not_to_have_text(disk_with_clip)
        assert _megabytes(await disk_text.text_content()) < _megabytes(disk_with_clip)
        async with http.get(f"{server.base}/api/clips/{clip_id}") as response:
            assert response.status == 404, await response.text()
        storage = await storage_of(http, server.base, stage)
        assert storage["clips"] == 0, storage
        await expect(disk_text).to_have_text(_disk_text(storage["bytes"]))

        # The fan's link now leads to a page that says the clip is gone.
        answer = await fan.goto(f"{server.base}/clips/{clip_id}")
        assert answer.status == 404
        await expect(fan.locator("h1")).to_have_text(
            "This clip is gone, or the link is wrong."
        )
        await fan_context.close()


def _disk_text(size: int) -> str:
    """The dashboard's disk figure for a number of bytes."""
    if size < 1e6:
        return f"{-(-size // 1000)} kB"
    if size < 1e9:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e9:.2f} GB"


def _megabytes(text: str) -> float:
    number = re.search(r"[\d.]+", text)
    assert number, text
    scale = {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[text.split()[-1]]
    return float(number.group()) * scale


async def test_a_fan_plays_an_h264_clip_cut_between_keyframes_to_its_end(
    server, http, new_stage, media, ffmpeg, tmp_path
):
    """An H.264 show (ffmpeg's WHIP muxer, as OBS-like publishers send it) clipped
    between keyframes: Chromium plays the as-recorded clip to its end, every picture
    decoded."""
    stage = await new_stage("Baseline")
    url = f"{server.base}/whip/{stage['id']}"
    log = tmp_path / "ffmpeg.log"
    async with ffmpeg_publishing(ffmpeg, media, url, stage["key"], log) as process:
        await asyncio.wait_for(process.wait(), 40)
    performance = await wait_recording(http, server, stage)
    recording = await download_recording(server, http, stage, tmp_path / "show.mkv")
    start = between_keyframes(keyframe_times(recording), after=START)
    status, clip = await make_clip(
        server, http, stage, performance, {"start": start, "end": start + 4}
    )
    assert status == 202, clip
    clip, _ = await wait_clip(server, http, clip["id"])
    assert clip["state"] == "ready", clip
    packets, pictures = video_counts(
        await fetch(server, http, clip["recorded"], tmp_path, "clip.mkv")
    )
    assert pictures == packets > 90, (pictures, packets)

    async with launch_chromium(None) as browser:
        fan = await new_page(browser, viewport={"width": 1100, "height": 900})
        await fan.goto(f"{server.base}/clips/{clip['id']}")
        await expect(fan.locator("#clip-player")).to_be_visible(timeout=UI_TIMEOUT_MS)
        await fan.click("#clip-video")
        await wait_advancing(fan, "#clip-video")
        await fan.wait_for_function(
            "() => { const v = document.getElementById('clip-video');"
            " return v.ended || v.error; }",
            timeout=UI_TIMEOUT_MS,
            polling=100,
        )
        played = await fan.evaluate(
            "() => { const v = document.getElementById('clip-video');"
            " const q = v.getVideoPlaybackQuality();"
            " return {error: v.error && v.error.message, ended: v.ended,"
            " time: v.currentTime, decoded: q.totalVideoFrames,"
            " size: [v.videoWidth, v.videoHeight]}; }"
        )
        print(f"Chromium played the H.264 clip: {played}, {packets} packets")
        assert played["error"] is None and played["ended"], played
        assert played["size"] == [media.width, media.height], played
        assert played["time"] > 3.5, played
        # Chromium counts every picture it decoded (a few may not be shown).
        assert played["decoded"] >= packets * 0.9, (played, packets)
