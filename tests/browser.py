"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for WebRTC tests.

Usage inside an async test (pytest-asyncio, auto mode, function-scoped loop):

    async with launch_chromium(media) as browser:      # media: tests.media.Media or None
        page = await new_page(browser)                 # camera/microphone granted
        await page.goto(f"http://127.0.0.1:{port}/")
        await screenshot(page, tmp_path / "page.png")

or the fixtures ``chromium`` (fake camera/microphone = the real test media) and
``chromium_synthetic`` (Chromium's built-in fake pattern and beep), each a fresh
browser per test, created inside the test's own event loop.

Never runs ``playwright install``. Without /usr/bin/chromium the fixtures skip,
except under CI (env CI set), where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

CHROMIUM = Path(os.environ.get("STAGE_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_TIMEOUT_MS = 30_000

# Playwright passes its own --disable-features list before ours. So as not to depend
# on how Chromium treats a repeated switch, ours repeats Playwright's list (playwright
# 1.56, chromiumSwitches) and adds WebRtcHideLocalIpsWithMdns.
_PLAYWRIGHT_DISABLED_FEATURES = (
    "AcceptCHFrame",
    "AvoidUnnecessaryBeforeUnloadCheckSync",
    "DestroyProfileOnBrowserClose",
    "DialMediaRouteProvider",
    "GlobalMediaControls",
    "HttpsUpgrades",
    "LensOverlay",
    "MediaRouter",
    "PaintHolding",
    "ThirdPartyStoragePartitioning",
    "Translate",
    "AutoDeElevate",
    "RenderDocument",
)
DISABLED_FEATURES = (*_PLAYWRIGHT_DISABLED_FEATURES, "WebRtcHideLocalIpsWithMdns")

BASE_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=" + ",".join(DISABLED_FEATURES),
)

MEDIA_PERMISSIONS = ["camera", "microphone"]


def chromium_available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


def require_chromium() -> None:
    """Skip (locally) or fail (under CI) when the Debian chromium is missing."""
    if chromium_available():
        return
    msg = (
        f"{CHROMIUM} not found; install it with "
        "`apt-get install -y --no-install-recommends chromium`"
    )
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def chromium_args(media=None, extra=()) -> list[str]:
    args = list(BASE_ARGS)
    if media is not None:
        args += [
            f"--use-file-for-fake-video-capture={Path(media.camera).resolve()}",
            f"--use-file-for-fake-audio-capture={Path(media.music).resolve()}",
        ]
    args += list(extra)
    return args


@contextlib.asynccontextmanager
async def launch_chromium(
    media=None, *, extra_args=(), headless: bool = True
) -> AsyncIterator:
    """Launch headless Chromium; yields a playwright ``Browser``; closes it on exit.

    ``media`` (a tests.media.Media) makes Chromium's fake camera and microphone play
    camera.y4m and music.wav in a loop; without it they are Chromium's own
    synthetic pattern and beep.
    """
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=headless,
            args=chromium_args(media, extra_args),
            timeout=LAUNCH_TIMEOUT_MS,
        )
        try:
            yield browser
        finally:
            with contextlib.suppress(Exception):
                await browser.close()


async def new_context(browser, origin: str | None = None, **kwargs):
    """A browser context with camera and microphone granted.

    With ``origin`` (e.g. ``f"http://127.0.0.1:{port}"``) the grant is limited to it;
    without, it applies to every origin (fine: pages only ever load from 127.0.0.1).
    """
    if origin is None:
        return await browser.new_context(permissions=list(MEDIA_PERMISSIONS), **kwargs)
    context = await browser.new_context(**kwargs)
    await context.grant_permissions(list(MEDIA_PERMISSIONS), origin=origin)
    return context


async def new_page(browser, origin: str | None = None, **kwargs):
    """A page in its own fresh context (own cookies/storage) with media permissions."""
    context = await new_context(browser, origin, **kwargs)
    return await context.new_page()


async def screenshot(page, path) -> Path:
    """Save a PNG screenshot of the page's viewport to ``path`` (dirs created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path))
    return path


@pytest_asyncio.fixture
async def chromium(media):
    """A fresh headless Chromium whose fake camera/microphone play the real test media."""
    async with launch_chromium(media) as browser:
        yield browser


@pytest_asyncio.fixture
async def chromium_synthetic():
    """A fresh headless Chromium with Chromium's built-in fake camera/microphone."""
    async with launch_chromium(None) as browser:
        yield browser
