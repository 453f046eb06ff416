"""The pages end to end in headless Chromium: perform, watch (with Next), dashboard.

Everything talks to the real server on 127.0.0.1. The browser performer's camera and
microphone are the real test media (tests/media.py); the second stage is an aiortc
publisher whose picture has another shape (16:9 instead of 4:3), so each decoded frame
on the watch page tells which stage it came from.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import statistics
import time
from pathlib import Path

import av
import pytest
from playwright.async_api import expect

from tests.browser import launch_chromium, new_page, screenshot
from tests.peers import PatternTrack, Publisher, ToneTrack

SHOTS = Path("/tmp/stage-shots")
UI_TIMEOUT_MS = 10_000

# The aiortc stage sends 16:9 pictures; the browser camera sends 4:3 (640x480, or a
# 4:3 scale-down of it when Chromium adapts to load).
PATTERN_SIZE = (480, 270)

# Installed before the watch page's own scripts: logs every video frame the <video>
# presents (with its size) and every Next press (click on #next, Space, ArrowRight).
WATCH_PROBE = """
(() => {
  window.__frames = [];
  window.__presses = [];
  const mark = () => window.__presses.push(performance.now());
  window.addEventListener('click', (event) => {
    if (event.target instanceof Element && event.target.closest('#next')) mark();
  }, true);
  window.addEventListener('keydown', (event) => {
    if (event.key === ' ' || event.key === 'ArrowRight') mark();
  }, true);
  document.addEventListener('DOMContentLoaded', () => {
    const video = document.getElementById('player');
    const onFrame = (now, meta) => {
      window.__frames.push({
        t: meta.presentationTime ?? now, w: meta.width, h: meta.height,
      });
      if (window.__frames.length > 20000) window.__frames.splice(0, 10000);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
})();
"""

FRAMES_DECODED = """async () => {
  const pc = window.stageWatch && window.stageWatch.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') return s.framesDecoded ?? 0;
  }
  return 0;
}"""

# The first presented frame of the given shape after time t0 (page clock), or null.
FIRST_FRAME_AFTER = """(args) => {
  const wide = (f) => f.h > 0 && f.w / f.h > 1.55;
  return window.__frames.find((f) => f.t > args.t0 && wide(f) === args.wide) || null;
}"""


def keep_shot(path: Path) -> None:
    """Copy a screenshot to /tmp/stage-shots/ for people to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SHOTS / path.name)


async def start_pattern_publisher(base: str, stage: dict) -> Publisher:
    """An aiortc publisher of a 16:9 moving pattern and a tone."""
    publisher = Publisher(base, stage["id"], stage["key"])
    publisher.pc.addTransceiver(ToneTrack(), direction="sendonly")
    width, height = PATTERN_SIZE
    publisher.pc.addTransceiver(
        PatternTrack(width=width, height=height, shade=200), direction="sendonly"
    )
    return await publisher.start(audio=False, video=False)


async def frames_decoded(page) -> int | None:
    return await page.evaluate(FRAMES_DECODED)


async def wait_frames_decoded(page, above: int, timeout: float = 10.0) -> int:
    """Wait until the watch page's inbound video has decoded more than `above` frames."""
    deadline = time.monotonic() + timeout
    while True:
        count = await frames_decoded(page)
        if count is not None and count > above:
            return count
        if time.monotonic() > deadline:
            raise AssertionError(
                f"framesDecoded stuck at {count} (wanted > {above}) for {timeout} s"
            )
        await asyncio.sleep(0.05)


async def wait_playing(
    page, selector: str = "#player", timeout_ms: int = UI_TIMEOUT_MS
):
    """The video element shows pictures and its clock advances."""
    await page.wait_for_function(
        "(sel) => document.querySelector(sel).videoWidth > 0",
        arg=selector,
        timeout=timeout_ms,
        polling=50,
    )
    start = await page.evaluate(
        "(sel) => document.querySelector(sel).currentTime", selector
    )
    await page.wait_for_function(
        "(args) => document.querySelector(args.sel).currentTime > args.t + 0.3",
        arg={"sel": selector, "t": start},
        timeout=timeout_ms,
        polling=50,
    )


async def viewer_stage(http, base: str, viewer_id: str) -> dict | None:
    async with http.get(f"{base}/whep/viewers/{viewer_id}") as response:
        assert response.status == 200, await response.text()
        return (await response.json())["stage"]


async def list_performances(http, base: str, stage: dict) -> list:
    headers = {"Authorization": f"Bearer {stage['key']}"}
    url = f"{base}/api/stages/{stage['id']}/performances"
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["performances"]


async def wait_recording_ready(http, base: str, stage: dict, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        listed = await list_performances(http, base, stage)
        if listed and (listed[0]["recording"] or {}).get("state") == "ready":
            return listed[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"recording not ready within {timeout} s: {listed}")
        await asyncio.sleep(0.1)


def decode(data: bytes) -> dict:
    counts: dict[str, int] = {}
    with av.open(io.BytesIO(data)) as container:
        kinds = sorted(s.type for s in container.streams)
        duration = container.duration / 1e6 if container.duration else None
        for frame in container.decode(*container.streams):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            counts[kind] = counts.get(kind, 0) + 1
    return {"streams": kinds, "counts": counts, "duration": duration}


# --------------------------------------------------------------------------- tests


# Chromium lowers its camera's frame rate when the CPU is busy, and the test counts
# the recorded frames: see pytest.ini.
@pytest.mark.alone
async def test_perform_watch_next_and_download(
    server, new_stage, http, media, tmp_path
):
    async with (
        launch_chromium(media) as stage_browser,
        launch_chromium(None) as audience_browser,
    ):
        # The performer creates "Bikes" in the browser and goes live.
        perform = await new_page(stage_browser)
        await perform.goto(f"{server.base}/perform")
        await expect(perform.locator("#create-form")).to_be_visible()
        await perform.fill("#stage-name", "Bikes")
        await perform.click("#create-stage")
        await expect(perform.locator("#performer-name")).to_have_text("Bikes")
        await expect(perform.locator("#stage-key")).not_to_be_empty()
        shown_key = (await perform.locator("#stage-key").text_content()).strip()
        saved = await perform.evaluate(
            "() => JSON.parse(localStorage.getItem('stage.performer'))"
        )
        assert saved["name"] == "Bikes" and saved["key"] == shown_key, saved
        bikes = {"id": saved["id"], "name": "Bikes", "key": shown_key}

        await expect(perform.locator("#go-live")).to_be_enabled(timeout=UI_TIMEOUT_MS)
        await wait_playing(perform, "#preview")
        await perform.click("#go-live")
        await expect(perform.locator("#live-status")).to_have_text(
            "Live", timeout=15_000
        )
        await expect(perform.locator("#end-show")).to_be_enabled()
        async with http.get(f"{server.base}/api/stages/{bikes['id']}") as response:
            assert (await response.json())["live"] is True

        # A second stage, from aiortc.
        pattern = await new_stage("Night Pattern")
        publisher = await start_pattern_publisher(server.base, pattern)
        names = {bikes["id"]: "Bikes", pattern["id"]: "Night Pattern"}
        wide = {bikes["id"]: False, pattern["id"]: True}

        # A viewer lands on one of them.
        watch = await new_page(audience_browser)
        await watch.add_init_script(WATCH_PROBE)
        await watch.goto(f"{server.base}/watch")
        await watch.wait_for_function(
            "() => window.stageWatch && window.stageWatch.viewerId"
            " && window.stageWatch.stage",
            timeout=UI_TIMEOUT_MS,
            polling=50,
        )
        viewer_id = await watch.evaluate("() => window.stageWatch.viewerId")
        on = await viewer_stage(http, server.base, viewer_id)
        assert on is not None and on["id"] in names, on
        await expect(watch.locator("#stage-name")).to_have_text(names[on["id"]])
        await wait_playing(watch)
        decoded = await wait_frames_decoded(watch, 0)
        await wait_frames_decoded(watch, decoded + 10)  # and rising
        await expect(watch.locator("#waiting")).to_be_hidden()
        await expect(watch.locator("#watching")).to_have_text("1")
        await watch.evaluate("() => { window.__pc0 = window.stageWatch.pc; }")
        first = await watch.wait_for_function(
            FIRST_FRAME_AFTER, arg={"t0": 0, "wide": wide[on["id"]]}, polling=50
        )
        assert await first.json_value()
        shot = await screenshot(watch, tmp_path / "watch.png")
        keep_shot(shot)
        shot = await screenshot(perform, tmp_path / "perform.png")
        keep_shot(shot)

        # Next, by button, Space and right arrow: the stage alternates on one
        # connection and the new stage's pictures arrive.
        latencies_ms = []
        presses = ["click", "click", "space", "click", "arrow", "click"]
        current = on["id"]
        for how in presses:
            target = pattern["id"] if current == bikes["id"] else bikes["id"]
            before = await frames_decoded(watch)
            pressed_count = await watch.evaluate("() => window.__presses.length")
            if how == "click":
                await watch.click("#next")
            else:
                await watch.evaluate(
                    "() => document.activeElement && document.activeElement.blur()"
                )
                await watch.keyboard.press("Space" if how == "space" else "ArrowRight")
            await watch.wait_for_function(
                "(n) => window.__presses.length > n", arg=pressed_count, polling=50
            )
            pressed_at = await watch.evaluate("() => window.__presses.at(-1)")

            await expect(watch.locator("#stage-name")).to_have_text(names[target])
            server_says = await viewer_stage(http, server.base, viewer_id)
            assert server_says["id"] == target, (how, server_says)

            frame = await (
                await watch.wait_for_function(
                    FIRST_FRAME_AFTER,
                    arg={"t0": pressed_at, "wide": wide[target]},
                    timeout=5_000,
                    polling=50,
                )
            ).json_value()
            latencies_ms.append(round(frame["t"] - pressed_at, 1))
            await wait_frames_decoded(watch, before + 15, timeout=5)
            assert await watch.evaluate(
                "() => window.stageWatch.pc === window.__pc0"
            ), f"Next ({how}) replaced the peer connection"
            assert (
                await watch.evaluate("() => window.stageWatch.pc.connectionState")
                == "connected"
            )
            await expect(watch.locator("#watching")).to_have_text("1")
            await expect(perform.locator("#watching")).to_have_text(
                "1" if target == bikes["id"] else "0"
            )
            current = target

        print(
            f"\nNext -> first frame of the new stage (ms): {latencies_ms}, "
            f"median {statistics.median(latencies_ms)}"
        )

        if current != bikes["id"]:
            await watch.click("#next")
            await expect(watch.locator("#stage-name")).to_have_text("Bikes")
            current = bikes["id"]

        # The performer ends the show: the viewer moves on by itself.
        ended_at = await watch.evaluate("() => performance.now()")
        before = await frames_decoded(watch)
        await perform.click("#end-show")
        await expect(perform.locator("#live-status")).to_have_text("Off air")
        await expect(watch.locator("#stage-name")).to_have_text(
            "Night Pattern", timeout=UI_TIMEOUT_MS
        )
        moved = await (
            await watch.wait_for_function(
                FIRST_FRAME_AFTER,
                arg={"t0": ended_at, "wide": True},
                timeout=UI_TIMEOUT_MS,
                polling=50,
            )
        ).json_value()
        print(
            f"End show -> viewer's first frame of the other stage: "
            f"{moved['t'] - ended_at:.0f} ms"
        )
        await wait_frames_decoded(watch, before + 15, timeout=5)
        assert (await viewer_stage(http, server.base, viewer_id))["id"] == pattern["id"]
        assert await watch.evaluate("() => window.stageWatch.pc === window.__pc0")

        # The recording of the browser performance, through the API.
        performance = await wait_recording_ready(http, server.base, bikes)
        recording = performance["recording"]
        headers = {"Authorization": f"Bearer {bikes['key']}"}
        async with http.get(server.base + recording["url"], headers=headers) as r:
            assert r.status == 200, await r.text()
            data = await r.read()
        assert len(data) == recording["bytes"]
        result = decode(data)
        duration = performance["duration"]
        print(f"recording: {result}, performance duration {duration:.2f} s")
        assert result["streams"] == ["audio", "video"], result
        assert result["counts"].get("audio", 0) > 0, result
        assert result["counts"].get("video", 0) > 20 * duration * 0.8, result
        assert result["duration"] is not None, "the file states its duration"
        assert abs(result["duration"] - duration) < 0.5, (result, performance)

        # The dashboard, from the performer's browser, lists it.
        dashboard = await perform.context.new_page()
        await dashboard.goto(f"{server.base}/stages/{bikes['id']}")
        table = dashboard.locator("#performances")
        form = dashboard.locator("#sign-in-form")
        await dashboard.wait_for_selector(
            "#performances:visible, #sign-in-form:visible", timeout=UI_TIMEOUT_MS
        )
        if await form.is_visible():
            await dashboard.fill("#key", bikes["key"])
            await dashboard.click("#sign-in")
        await expect(table).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(dashboard.locator("tr.performance")).to_have_count(1)
        link = dashboard.locator("tr.performance a.download")
        await expect(link).to_have_attribute("href", recording["url"])
        shot = await screenshot(dashboard, tmp_path / "dashboard.png")
        keep_shot(shot)

        await publisher.stop()


async def test_watch_page_waits_when_nothing_is_live_then_plays(server, new_stage):
    async with launch_chromium(None) as browser:
        page = await new_page(browser)
        await page.goto(f"{server.base}/watch")
        await expect(page.locator("#waiting")).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(page.locator("#stage-name")).to_be_empty()
        # No "0 watching" and no Next while there is nothing to watch.
        await expect(page.locator(".watching-line")).to_be_hidden()
        await expect(page.locator("#next")).to_be_disabled()

        stage = await new_stage("Late Arrival")
        live_at = time.monotonic()
        publisher = await start_pattern_publisher(server.base, stage)
        await expect(page.locator("#waiting")).to_be_hidden(timeout=10_000)
        await expect(page.locator("#stage-name")).to_have_text(
            "Late Arrival", timeout=10_000
        )
        await expect(page.locator(".watching-line")).to_be_visible()
        await expect(page.locator("#next")).to_be_enabled()
        await wait_playing(page)
        print(
            f"\nwaiting page playing {time.monotonic() - live_at:.2f} s after go-live"
        )
        await publisher.stop()


async def test_dashboard_asks_for_the_key_once(server, new_stage, http):
    stage = await new_stage("Open Mic")
    publisher = await start_pattern_publisher(server.base, stage)
    await publisher.stop()
    assert len(await list_performances(http, server.base, stage)) == 1

    async with launch_chromium(None) as browser:
        page = await new_page(browser)
        await page.goto(f"{server.base}/stages/{stage['id']}")
        await expect(page.locator("#sign-in-form")).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(page.locator("#performances")).to_be_hidden()

        await page.fill("#key", "not-the-key")
        await page.click("#sign-in")
        error = page.locator("#sign-in-error")
        await expect(error).to_be_visible()
        await expect(error).to_contain_text("does not open this stage")
        await expect(page.locator("#dashboard-body")).to_be_hidden()

        await page.fill("#key", stage["key"])
        await page.click("#sign-in")
        await expect(page.locator("#performances")).to_be_visible()
        await expect(page.locator("tr.performance")).to_have_count(1)
        await expect(page.locator("#sign-in-form")).to_be_hidden()
        await expect(page.locator("#dashboard-name")).to_have_text("Open Mic")

        await page.reload()
        await expect(page.locator("#performances")).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(page.locator("tr.performance")).to_have_count(1)
        await expect(page.locator("#sign-in-form")).to_be_hidden()


async def test_perform_page_reload_stays_signed_in(server):
    async with launch_chromium(None) as browser:
        page = await new_page(browser)
        await page.goto(f"{server.base}/perform")
        await page.fill("#stage-name", "Second Night")
        await page.click("#create-stage")
        await expect(page.locator("#performer-name")).to_have_text("Second Night")
        await expect(page.locator("#stage-key")).not_to_be_empty()

        await page.reload()
        await expect(page.locator("#performer-name")).to_have_text(
            "Second Night", timeout=UI_TIMEOUT_MS
        )
        await expect(page.locator("#signed-in")).to_be_visible()
        await expect(page.locator("#create-form")).to_be_hidden()
        await expect(page.locator("#stage-name")).to_be_hidden()
        # The key is shown only once, right after creating the stage.
        await expect(page.locator("#key-box")).to_be_hidden()
        await expect(page.locator("#go-live")).to_be_enabled(timeout=UI_TIMEOUT_MS)


async def test_reloading_the_perform_page_mid_show_keeps_the_viewers(server, http):
    from tests.peers import Viewer

    async with launch_chromium(None) as browser:
        page = await new_page(browser)
        await page.goto(f"{server.base}/perform")
        await page.fill("#stage-name", "Reload Band")
        await page.click("#create-stage")
        await expect(page.locator("#go-live")).to_be_enabled(timeout=UI_TIMEOUT_MS)
        await page.click("#go-live")
        await expect(page.locator("#live-status")).to_have_text("Live", timeout=15_000)
        saved = await page.evaluate(
            "() => JSON.parse(localStorage.getItem('stage.performer'))"
        )
        viewer = await Viewer(server.base).start(stage_id=saved["id"])
        await viewer.wait_video(count=10)

        reloaded = time.monotonic()
        await page.reload()
        # The page goes back on air by itself, and the viewer, still on the stage,
        # gets the new connection's picture.
        await expect(page.locator("#live-status")).to_have_text("Live", timeout=15_000)
        first = await viewer.wait_video(count=1, since=reloaded + 0.5, timeout=10)
        await viewer.wait_video(count=30, since=first, timeout=5)
        status, body = await viewer.request("GET")
        assert body["stage"]["id"] == saved["id"], body
        print(f"reload: picture back {first - reloaded:.2f} s after the reload began")
        async with http.get(f"{server.base}/api/stages") as response:
            assert [s["id"] for s in (await response.json())["stages"]] == [saved["id"]]
        await page.click("#end-show")
        await expect(page.locator("#live-status")).to_have_text("Off air")
        await viewer.stop()
