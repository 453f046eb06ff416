"""The watch page in headless Chromium while its performer reconnects.

The performer's connection closes without a WHIP DELETE (a page reload): the page
keeps the last picture on screen under "The performer is reconnecting…", never black,
never the audio-only placeholder, and shows the new picture when the same key
publishes again, on the same peer connection.
"""

from __future__ import annotations

import time

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
