"""The dashboard's Rotate key button in headless Chromium, against the real server."""

from __future__ import annotations

import json

from playwright.async_api import expect

from tests.browser import launch_chromium, new_page
from tests.peers import Publisher
from tests.test_server_contract import wait_live

UI_TIMEOUT_MS = 10_000


async def test_rotate_key_on_the_dashboard_shows_the_new_key_once_and_takes_the_show_off(
    server, http, new_stage
):
    stage = await new_stage("Rotating")
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    try:
        await wait_live(server, http, stage["id"])
        async with launch_chromium() as browser:
            page = await new_page(browser)
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{server.base}/perform")
            # This browser performs as the stage: its saved key must follow.
            await page.evaluate(
                "performer => localStorage.setItem('stage.performer', performer)",
                json.dumps(stage),
            )
            await page.goto(f"{server.base}/stages/{stage['id']}")
            await page.fill("#key", stage["key"])
            await page.click("#sign-in")
            await expect(page.locator("#stage-live")).to_have_text(
                "Live", timeout=UI_TIMEOUT_MS
            )

            page.once("dialog", lambda dialog: dialog.accept())
            await page.click("#rotate-key")
            await expect(page.locator("#new-key-box")).to_be_visible(
                timeout=UI_TIMEOUT_MS
            )
            new_key = (await page.text_content("#new-key")).strip()
            assert new_key and new_key != stage["key"], new_key
            saved = json.loads(
                await page.evaluate("localStorage.getItem('stage.performer')")
            )
            assert saved["key"] == new_key and saved["id"] == stage["id"], saved

            await wait_live(server, http, stage["id"], live=False)
            await expect(page.locator("#stage-live")).to_have_text(
                "Off air", timeout=UI_TIMEOUT_MS
            )

            # The dashboard stays open after a reload (its session was renewed), and
            # the new key is what the server now takes.
            await page.reload()
            await expect(page.locator("#dashboard-body")).to_be_visible(
                timeout=UI_TIMEOUT_MS
            )
            async with http.get(
                f"{server.base}/api/stages/{stage['id']}/performances",
                headers={"Authorization": f"Bearer {new_key}"},
            ) as response:
                assert response.status == 200

            # Cancelling the confirmation changes nothing.
            page.once("dialog", lambda dialog: dialog.dismiss())
            await page.click("#rotate-key")
            async with http.get(
                f"{server.base}/api/stages/{stage['id']}/performances",
                headers={"Authorization": f"Bearer {new_key}"},
            ) as response:
                assert response.status == 200, "a dismissed rotation changed the key"
            assert errors == [], errors
    finally:
        await publisher.stop(say_goodbye=False)
