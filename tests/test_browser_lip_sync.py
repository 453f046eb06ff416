"""Lip sync on the watch page, in headless Chromium.

The performer is an aiortc publisher whose picture flashes white and whose tone beeps
at the same instants, both read off one capture clock (tests/show.py), with sender
reports as a browser sends them. The watch page gets a probe before its own scripts:
the brightness of every frame the <video> presents (requestVideoFrameCallback), the
peak of the received audio every 5 ms (a WebAudio AnalyserNode on the receiver's
track), and every half second Chromium's own estimate of where each track's playout
is, in the sender's clock (getStats' `estimatedPlayoutTimestamp`).

Video lands with playout delay 0, so that Next is instant; before the relay let it go
once a landing settled, the sound came 50-130 ms after the picture for the whole
visit (the depth of the browser's audio buffer).
"""

from __future__ import annotations

import asyncio
import statistics

import pytest

from tests.browser import launch_chromium, new_page
from tests.peers import Publisher
from tests.show import BeepTrack, CaptureClock, FlashTrack

# Real-time: `make test` runs this by itself after the parallel run.
pytestmark = pytest.mark.alone

# Chromium's lip sync moves video's delay by half the remaining difference once a
# second and stops inside 30 ms, so a visit needs several seconds to settle.
SETTLE_SECONDS = 16
# Audio behind video by more than this (Chromium's own estimate) fails. Chromium
# leaves up to 30 ms; the relay before this test left 45-130 ms here.
ESTIMATED_LIMIT_MS = 35
# The flash and beep measured on the page: analyser blocks and the moment a frame
# counts as presented put 30-40 ms between the two even when in sync, so this only
# catches a gross error (a wrong sender report would put them seconds apart).
MEASURED_LIMIT_MS = 100

PROBE = """
(() => {
  const probe = { frames: [], audio: [], playout: [] };
  window.__probe = probe;
  document.addEventListener('DOMContentLoaded', () => {
    const video = document.getElementById('player');
    const canvas = document.createElement('canvas');
    [canvas.width, canvas.height] = [16, 12];
    const paint = canvas.getContext('2d', { willReadFrequently: true });
    const onFrame = (now, meta) => {
      paint.drawImage(video, 0, 0, canvas.width, canvas.height);
      const data = paint.getImageData(0, 0, canvas.width, canvas.height).data;
      let sum = 0;
      for (let i = 0; i < data.length; i += 4) sum += data[i];
      probe.frames.push({ t: meta.presentationTime, level: sum / (data.length / 4) });
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
})();
"""

LISTEN = """
async () => {
  const probe = window.__probe;
  const pc = window.stageWatch.pc;
  const receiver = pc.getReceivers().find((r) => r.track && r.track.kind === 'audio');
  const context = new AudioContext();
  await context.resume();
  const source = context.createMediaStreamSource(new MediaStream([receiver.track]));
  const analyser = context.createAnalyser();
  analyser.fftSize = 256;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let peak = 0;
    for (const s of samples) peak = Math.max(peak, Math.abs(s));
    probe.audio.push({ t: performance.now(), level: peak });
  }, 5);
  setInterval(async () => {
    const at = {};
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'inbound-rtp') at[s.kind] = s.estimatedPlayoutTimestamp ?? null;
    }
    if (at.audio && at.video) probe.playout.push(at.audio - at.video);
  }, 500);
}
"""


def onsets(samples: list[dict], threshold: float) -> list[float]:
    """When each flash or beep began: the first sample above the threshold after a
    quiet half second."""
    found, loud_at = [], -1e9
    for sample in samples:
        if sample["level"] > threshold:
            if sample["t"] - loud_at > 500:
                found.append(sample["t"])
            loud_at = sample["t"]
    return found


def paired(beeps: list[float], flashes: list[float]) -> list[float]:
    """Beep minus flash (ms) for each beep with a flash within 450 ms of it."""
    offsets = []
    for beep in beeps:
        near = [flash for flash in flashes if abs(beep - flash) < 450]
        if near:
            offsets.append(beep - near[0])
    return offsets


async def test_a_settled_visit_hears_the_beep_with_the_flash(server, new_stage):
    stage = await new_stage("In Sync")
    clock = CaptureClock()
    publisher = Publisher(server.base, stage["id"], stage["key"])
    await publisher.start(tracks=[BeepTrack(clock), FlashTrack(clock)])
    try:
        async with launch_chromium(None) as browser:
            page = await new_page(browser)
            await page.add_init_script(PROBE)
            await page.goto(f"{server.base}/watch")
            await page.wait_for_function(
                "() => window.stageWatch && window.stageWatch.stage"
                " && window.__probe.frames.length >= 10",
                timeout=15_000,
                polling=50,
            )
            await page.evaluate(LISTEN)
            await asyncio.sleep(SETTLE_SECONDS)
            probe = await page.evaluate("() => window.__probe")
    finally:
        await publisher.stop()

    settled = probe["playout"][-4:]
    measured = paired(onsets(probe["audio"], 0.1), onsets(probe["frames"], 128))
    described = (
        f"audio minus video, Chromium's estimate every 0.5 s: "
        f"{[round(x) for x in probe['playout']]} ms; beep minus flash on the page: "
        f"{[round(x) for x in measured]} ms"
    )
    assert len(settled) == 4 and len(measured) >= 10, described
    assert abs(statistics.median(settled)) <= ESTIMATED_LIMIT_MS, described
    assert abs(statistics.median(measured[-5:])) <= MEASURED_LIMIT_MS, described
