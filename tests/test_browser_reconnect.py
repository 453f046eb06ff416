"""The watch page in headless Chromium while its performer reconnects.

The performer's connection closes without a WHIP DELETE (a page reload): the page
keeps the last picture on screen under "The performer is reconnecting…", never black,
never the audio-only placeholder, and shows the new picture when the same key
publishes again, on the same peer connection.
"""

from __future__ import annotations

import time

import pytest
from playwright.async_api import expect

from tests.browser import launch_chromium, new_page, screenshot
from tests.test_browser import (
    FIRST_FRAME_AFTER,
    UI_TIMEOUT_MS,
    WATCH_PROBE,
    frames_decoded,
    keep_shot,
    start_pattern_publisher,
    wait_frames_decoded,
    wait_playing,
)
from tests.test_audience import silence
from tests.test_server_contract import cut_network
from tests.test_workers_faults import OVERLAY_PROBE

# The mean level (0-255) of what the <video> element shows right now.
PICTURE_LEVEL = """() => {
  const video = document.getElementById('player');
  const canvas = document.createElement('canvas');
  canvas.width = 64;
  canvas.height = 36;
  const context = canvas.getContext('2d');
  context.drawImage(video, 0, 0, canvas.width, canvas.height);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    sum += pixels[i] + pixels[i + 1] + pixels[i + 2];
  }
  return sum / (pixels.length / 4) / 3;
}"""


async def test_watch_page_shows_the_performer_reconnecting_then_the_picture(
    server, new_stage, tmp_path
):
    stage = await new_stage("Comeback")
    publisher = await start_pattern_publisher(server.base, stage)
    async with launch_chromium(None) as browser:
        page = await new_page(browser)
        await page.add_init_script(WATCH_PROBE)
        await page.goto(f"{server.base}/watch")
        await expect(page.locator("#stage-name")).to_have_text(
            "Comeback", timeout=UI_TIMEOUT_MS
        )
        await wait_playing(page)
        await wait_frames_decoded(page, 10)
        await page.evaluate("() => { window.__pc0 = window.stageWatch.pc; }")
        overlay = page.locator("#reconnecting")
        await expect(overlay).to_be_hidden()

        # A page reload on the performer's side: no DELETE, the connection closes.
        await publisher.pc.close()
        lost = time.monotonic()
        await expect(overlay).to_be_visible(timeout=5_000)
        shown_after = time.monotonic() - lost
        await expect(overlay).to_contain_text("The performer is reconnecting")
        # Past the moment the page would otherwise call the stage audio-only: the
        # frozen picture is still there, under the notice, and "Live" is gone.
        await page.wait_for_timeout(3_000)
        await expect(overlay).to_be_visible()
        await expect(page.locator("#audio-only")).to_be_hidden()
        await expect(page.locator("#waiting")).to_be_hidden()
        await expect(page.locator("#live-badge")).to_be_hidden()
        await expect(page.locator("#stage-name")).to_have_text("Comeback")
        level = await page.evaluate(PICTURE_LEVEL)
        assert level > 100, f"the held picture is dark (mean level {level:.0f})"
        assert (
            await page.evaluate(
                "() => getComputedStyle(document.getElementById('player')).visibility"
            )
            == "visible"
        )
        keep_shot(await screenshot(page, tmp_path / "watch-reconnecting.png"))

        # The performer is back with the same key: the notice goes with the new
        # picture, on the same connection.
        before = await frames_decoded(page)
        back_at = await page.evaluate("() => performance.now()")
        again = await start_pattern_publisher(server.base, stage)
        frame = await (
            await page.wait_for_function(
                FIRST_FRAME_AFTER,
                arg={"t0": back_at, "wide": True},
                timeout=5_000,
                polling=50,
            )
        ).json_value()
        await expect(overlay).to_be_hidden(timeout=5_000)
        await wait_frames_decoded(page, before + 15, timeout=5)
        await expect(page.locator("#live-badge")).to_be_visible()
        await expect(page.locator("#stage-name")).to_have_text("Comeback")
        assert await page.evaluate("() => window.stageWatch.pc === window.__pc0")
        keep_shot(await screenshot(page, tmp_path / "watch-back.png"))
        print(
            f"\nnotice shown {shown_after:.2f} s after the drop; publish again -> "
            f"first new frame presented {frame['t'] - back_at:.0f} ms"
        )
        await again.stop()


@pytest.mark.parametrize("drop", ["media stops", "network cut"])
async def test_a_performer_dropping_abruptly_is_never_called_audio_only(
    server, new_stage, drop
):
    """A performer with a camera drops without a word: their encoder hangs (its
    media stops, its ICE still answers) or their network is cut. The server holds
    the stage once it has had no media for 2 s; before that the watch page must not
    take the frozen picture for an audio-only stage, not even for a moment."""
    stage = await new_stage("Abrupt")
    publisher = await start_pattern_publisher(server.base, stage)
    try:
        async with launch_chromium(None) as browser:
            page = await new_page(browser)
            await page.add_init_script(OVERLAY_PROBE)
            await page.goto(f"{server.base}/watch")
            await expect(page.locator("#stage-name")).to_have_text(
                "Abrupt", timeout=UI_TIMEOUT_MS
            )
            await wait_playing(page)
            await wait_frames_decoded(page, 60)

            dropped_at = await page.evaluate("() => performance.now()")
            if drop == "media stops":
                silence(publisher)
            else:
                cut_network(publisher.pc)
            await expect(page.locator("#reconnecting")).to_be_visible(timeout=8_000)
            # The placeholder's checks run every 250 ms: give a late one time.
            await page.wait_for_timeout(1_000)
            overlays = await page.evaluate(
                "(t0) => window.__overlays.filter((o) => o.t > t0)", dropped_at
            )
    finally:
        await publisher.stop(say_goodbye=False)

    # Every show() is noted; only what changed on screen is kept.
    changes, on_screen = [], {}
    for o in overlays:
        if on_screen.get(o["id"], False) != o["shown"]:
            changes.append((round(o["t"] - dropped_at), o["id"], o["shown"]))
        on_screen[o["id"]] = o["shown"]
    print(f"\n{drop}: overlay changes after the drop (ms, overlay, shown) {changes}")
    audio_only = [c for c in changes if c[1] == "audio-only" and c[2]]
    assert not audio_only, (
        f"the watch page called the stage audio only after its performer dropped "
        f"({drop}), before the server held it: {changes}"
    )
    assert any(c[1] == "reconnecting" and c[2] for c in changes), changes
