"""The dashboard and the perform page in headless Chromium, at a laptop's width.

A real server on 127.0.0.1, real aiortc publishers; the pages are looked at as a
person would: what is written must be on screen, whole.
"""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from tests.browser import launch_chromium, new_page, screenshot
from tests.peers import Publisher

SHOTS = Path("/tmp/stage-shots")
UI_TIMEOUT_MS = 10_000
LAPTOP = {"width": 1280, "height": 800}

# Whether an element's box lies inside the box of its scrolling table wrapper, and
# the wrapper needs no sideways scrolling to show it.
INSIDE_WRAP = """(element) => {
  const wrap = element.closest('.table-wrap');
  const box = element.getBoundingClientRect();
  const frame = wrap.getBoundingClientRect();
  return {
    inside: box.left >= frame.left - 0.5 && box.right <= frame.right + 0.5,
    scrolls: wrap.scrollWidth > wrap.clientWidth,
    text: element.textContent,
    right: box.right, wrapRight: frame.right,
  };
}"""


async def open_dashboard(page, base: str, stage: dict) -> None:
    await page.goto(f"{base}/stages/{stage['id']}")
    await page.wait_for_selector(
        "#performances:visible, #sign-in-form:visible", timeout=UI_TIMEOUT_MS
    )
    if await page.locator("#sign-in-form").is_visible():
        await page.fill("#key", stage["key"])
        await page.click("#sign-in")
    await expect(page.locator("tr.performance")).to_have_count(1)


async def test_recording_in_progress_is_shown_whole_at_1280_wide(server, new_stage):
    stage = await new_stage("A rather long stage name for the layout")
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    try:
        async with launch_chromium(None) as browser:
            page = await new_page(browser, viewport=LAPTOP)
            await open_dashboard(page, server.base, stage)
            state = page.locator(
                'tr.performance .recording-state[data-state="recording"]'
            )
            await expect(state).to_have_text("Recording in progress")
            shot = await screenshot(page, SHOTS / "dashboard-recording-1280.png")
            print(f"\nscreenshot: {shot}")
            seen = await state.evaluate(INSIDE_WRAP)
            assert seen["inside"] and not seen["scrolls"], seen

            # Saved: the download and the recording's buttons fit as well.
            await publisher.stop()
            actions = page.locator("tr.performance .recording-actions")
            await expect(actions.locator("a.download")).to_be_visible(
                timeout=UI_TIMEOUT_MS
            )
            shot = await screenshot(page, SHOTS / "dashboard-saved-1280.png")
            print(f"screenshot: {shot}")
            seen = await actions.evaluate(INSIDE_WRAP)
            assert seen["inside"] and not seen["scrolls"], seen
    finally:
        await publisher.pc.close()


async def go_live_from_the_page(page, base: str, name: str) -> dict:
    """Create a stage called `name` on /perform and go live; the stage the page kept."""
    await page.goto(f"{base}/perform")
    await page.fill("#stage-name", name)
    await page.click("#create-stage")
    await expect(page.locator("#performer-name")).to_have_text(name)
    stage = await page.evaluate(
        "() => JSON.parse(localStorage.getItem('stage.performer'))"
    )
    await expect(page.locator("#go-live")).to_be_enabled(timeout=UI_TIMEOUT_MS)
    await page.click("#go-live")
    await expect(page.locator("#live-status")).to_have_text("Live", timeout=15_000)
    return stage


async def test_after_end_show_the_perform_page_points_to_the_saved_recording(
    server,
):
    async with launch_chromium(None) as browser:
        page = await new_page(browser, viewport=LAPTOP)
        saved = await go_live_from_the_page(page, server.base, "Saved Night")
        await expect(page.locator("#recording-status")).to_have_text("Recording")
        # Some media reaches the recording before the show ends.
        await expect(page.locator("#recording-status")).to_have_attribute(
            "data-state", "recording"
        )
        await page.wait_for_timeout(2000)
        await page.click("#end-show")
        await expect(page.locator("#live-status")).to_have_text("Off air")

        link = page.locator("#recording-status a#recording-link")
        await expect(link).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(page.locator("#recording-status")).to_contain_text(
            "Last show saved"
        )
        await expect(link).to_have_attribute("href", f"/stages/{saved['id']}")
        shot = await screenshot(page, SHOTS / "perform-after-end-1280.png")
        print(f"\nscreenshot: {shot}")

        # The link leads to the dashboard, which lists the show with its download.
        await link.click()
        await page.wait_for_url(f"{server.base}/stages/{saved['id']}")
        await open_dashboard(page, server.base, {**saved, "key": saved["key"]})
        await expect(page.locator("tr.performance a.download")).to_be_visible()


async def test_a_show_the_server_ends_is_said_off_air_at_once_on_the_perform_page(
    server, http
):
    """The show a perform page carries is ended on the server's side while the page
    is on air: here a WHIP DELETE of its publisher from elsewhere (as when the
    worker carrying it dies, or the key is renewed). The page says at once that it
    is off air and that the recording is kept, and offers to go live again; not
    "Live" until its connection times out some 16 s later."""
    async with launch_chromium(None) as browser:
        page = await new_page(browser, viewport=LAPTOP)
        stage = await go_live_from_the_page(page, server.base, "Cut Short")
        await page.wait_for_timeout(1500)  # some media reaches the recording

        async with http.get(f"{server.base}/api/stages/{stage['id']}") as response:
            publisher = (await response.json())["publisher"]
        async with http.delete(
            f"{server.base}/whip/{stage['id']}/publishers/{publisher}",
            headers={"Authorization": f"Bearer {stage['key']}"},
        ) as response:
            assert response.status in (200, 204), await response.text()

        status = page.locator("#live-status")
        await expect(status).to_contain_text("you are off air", timeout=3_000)
        await expect(status).to_contain_text("What was recorded is kept")
        await expect(page.locator("#end-show")).to_be_hidden()
        await expect(page.locator("#on-air-badge")).to_be_hidden()
        await expect(page.locator("#go-live")).to_be_enabled()
        await expect(page.locator("#recording-status")).to_contain_text(
            "Last show saved", timeout=UI_TIMEOUT_MS
        )
        shot = await screenshot(page, SHOTS / "perform-ended-by-server-1280.png")
        print(f"\nscreenshot: {shot}")

        # Going live again is one press, and the server takes it.
        await page.click("#go-live")
        await expect(status).to_have_text("Live", timeout=15_000)
        async with http.get(f"{server.base}/api/stages/{stage['id']}") as response:
            again = await response.json()
        assert again["live"] and again["publisher"] != publisher, again
        await page.click("#end-show")
        await expect(status).to_have_text("Off air")
