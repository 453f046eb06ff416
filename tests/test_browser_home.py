"""The home page in headless Chromium, looked at on the screens newcomers bring.

A real server on 127.0.0.1 and real aiortc publishers (sound only: the home page
shows names, not pictures); what the page promises, the live stages, must be in sight
without scrolling.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from playwright.async_api import expect

from tests.browser import launch_chromium, new_page, screenshot
from tests.peers import Publisher

SHOTS = Path("/tmp/stage-shots")
UI_TIMEOUT_MS = 10_000

# The boxes of the live-stage cards in the first row, and whether the page scrolls
# sideways.
FIRST_ROW = """() => {
  const cards = [...document.querySelectorAll('#live-stages .stage-link')];
  const boxes = cards.map((card) => card.getBoundingClientRect());
  const top = Math.min(...boxes.map((box) => box.top));
  const row = boxes.filter((box) => Math.abs(box.top - top) < 1);
  const root = document.scrollingElement;
  return {
    cards: cards.length,
    row: row.map((box) => ({ top: box.top, bottom: box.bottom })),
    sideways: root.scrollWidth > root.clientWidth,
    scrollY: window.scrollY,
  };
}"""


async def test_live_stages_in_sight_at_1280x720_and_on_a_phone(server, new_stage):
    publishers = []
    try:
        for number in range(1, 4):
            stage = await new_stage(f"Open mic number {number}")
            publisher = Publisher(server.base, stage["id"], stage["key"])
            publishers.append(await publisher.start(video=False))

        async with launch_chromium(None) as browser:
            for width, height, per_row in ((1280, 720, 3), (390, 844, 1)):
                viewport = {"width": width, "height": height}
                page = await new_page(browser, viewport=viewport)
                await page.goto(f"{server.base}/")
                cards = page.locator("#live-stages .stage-link")
                await expect(cards).to_have_count(3, timeout=UI_TIMEOUT_MS)
                shot = await screenshot(page, SHOTS / f"home-{width}x{height}.png")
                print(f"\nscreenshot: {shot}")

                seen = await page.evaluate(FIRST_ROW)
                assert seen["scrollY"] == 0 and not seen["sideways"], (width, seen)
                assert len(seen["row"]) == per_row, (width, height, seen)
                below = [box for box in seen["row"] if box["bottom"] > height]
                assert not below, (
                    f"at {width}x{height} the first row of live stages ends below "
                    f"the fold: {seen}"
                )
                for door in ("#door-watch", "#door-perform"):
                    await expect(page.locator(door)).to_be_in_viewport()
                await page.context.close()
    finally:
        for publisher in publishers:
            with contextlib.suppress(Exception):
                await publisher.stop()
