"""Chromium's watch page moves between a VP8 and an H.264 stage on one connection."""

from __future__ import annotations

import time

from tests.browser import launch_chromium, new_page
from tests.test_browser import WATCH_PROBE
from tests.test_relay_codecs import SIZES, vp8_and_h264_stages

# The codec of the video the page decodes right now, from its inbound RTP stats.
DECODING = """async () => {
  const report = await window.stageWatch.pc.getStats();
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video' && s.codecId) {
      return report.get(s.codecId).mimeType;
    }
  }
  return null;
}"""

FIRST_OF_SIZE = """(args) => window.__frames.find(
  (f) => f.t > args.t0 && f.w === args.w && f.h === args.h) || null"""

LATER_OTHER = """(args) => window.__frames.filter(
  (f) => f.t > args.t1 && (f.w !== args.w || f.h !== args.h)).length"""


async def test_watch_page_nexts_between_vp8_and_h264(server, new_stage):
    vp8_stage, h264_stage, publishers = await vp8_and_h264_stages(server, new_stage)
    try:
        async with launch_chromium(None) as browser:
            page = await new_page(browser)
            await page.add_init_script(WATCH_PROBE)
            await page.goto(f"{server.base}/watch?stage={vp8_stage['id']}")
            width, height = SIZES["VP8"]
            await page.wait_for_function(
                FIRST_OF_SIZE, arg={"t0": 0, "w": width, "h": height}, timeout=10_000
            )
            timings = []
            for target, codec in [(h264_stage, "H264"), (vp8_stage, "VP8")] * 2:
                width, height = SIZES[codec]
                t0 = await page.evaluate("performance.now()")
                pressed = time.monotonic()
                await page.click("#next")
                first = await page.wait_for_function(
                    FIRST_OF_SIZE,
                    arg={"t0": t0, "w": width, "h": height},
                    timeout=10_000,
                )
                t1 = (await first.json_value())["t"]
                timings.append((codec, t1 - t0))
                await page.wait_for_function(
                    "(n) => window.stageWatch.stage && "
                    "window.stageWatch.stage.id === n",
                    arg=target["id"],
                    timeout=5_000,
                )
                # A second of the new stage: still its size, still playing.
                await page.wait_for_timeout(1000)
                stale = await page.evaluate(
                    LATER_OTHER, {"t1": t1, "w": width, "h": height}
                )
                assert stale == 0, f"{stale} frames of another size after the switch"
                decoding = await page.evaluate(DECODING)
                assert decoding == f"video/{codec}", (codec, decoding)
                assert time.monotonic() - pressed < 10
            print(
                "\nNext -> first frame across codecs (ms):",
                [(codec, round(ms)) for codec, ms in timings],
            )
    finally:
        for publisher in publishers:
            await publisher.stop()
