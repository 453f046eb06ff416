"""Next, cleanly, in headless Chromium (issue 4: "Cleanly", "different sizes", "the page").

Every stage is a real aiortc publisher whose picture is one flat colour at a size of its
own (a small white square runs along the top edge, so the encoder has motion to code)
and whose sound is a tone of its own pitch. The watch page gets a probe before its own
scripts; it notes

* every frame the <video> presents (requestVideoFrameCallback): its presentation time,
  its size, and the colour at twelve points below the top edge, drawn to a small canvas;
* every click on Next, and every change of the stage name together with the frame on
  screen at that moment;
* once started, every 10 ms, the level of each stage's tone in the received audio, from
  a WebAudio AnalyserNode on the page's audio receiver track.

A frame shows a stage when it has the stage's size and all twelve points are the
stage's colour; any other frame (half decoded, green or grey blocks) shows no stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import statistics
import time
from dataclasses import dataclass

import av
import numpy
import pytest
from aiortc import MediaStreamTrack
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.browser import launch_chromium, new_page
from tests.peers import Publisher, ToneTrack

# Real-time gaps are measured here: `make test` runs these by themselves, after the
# parallel run, so that no other test competes for the two cores meanwhile.
pytestmark = pytest.mark.alone

UI_TIMEOUT_MS = 10_000
SWITCH_TIMEOUT_MS = 8_000
VIDEO_RATE = 90_000

RED = (200, 50, 50)
BLUE = (50, 70, 200)
YELLOW = (210, 200, 50)
# A sampled point is the stage's colour when every channel is this close to it. VP8
# and two colour conversions move flat colours by a few steps; a frame of another
# stage, black, grey or decoder green is 100 or more away in some channel.
COLOUR_TOLERANCE = 40

# The probe's canvas and the twelve points it samples, all below the moving square.
CANVAS = (32, 24)
SAMPLE_COLUMNS = (4, 12, 20, 28)
SAMPLE_ROWS = (8, 14, 20)

# A tone is heard when its level is above FLOOR_DB and at least MARGIN_DB above every
# other stage's tone.
TONE_FLOOR_DB = -70.0
TONE_MARGIN_DB = 15.0

# Bounds from the issue and the lead's brief; generous for a loaded 2-core machine.
FREEZE_LIMIT_MS = 200.0
FREEZE_WATCH_MS = 2_000.0
# The picture is shown as soon as it is decoded (playout delay 0), while the new
# tone is heard once it has passed through the browser's audio buffer, as deep as the
# publishers' jitter made it: 130-330 ms on a quiet machine, up to 880 ms when the
# test's own aiortc publishers are starved. The bound catches audio that does not
# follow, or follows seconds late (a backlog sent in one go).
AUDIO_PICTURE_LIMIT_MS = 1000.0


@dataclass(frozen=True)
class Look:
    """What a stage's publisher sends: picture size and colour, tone, frame rate."""

    name: str
    width: int
    height: int
    colour: tuple[int, int, int]
    tone: float
    fps: int = 30

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


class ColourTrack(MediaStreamTrack):
    """A flat colour with a white square running along the top edge, paced in real time."""

    kind = "video"

    def __init__(self, look: Look) -> None:
        super().__init__()
        self.look = look
        self._plain = numpy.empty((look.height, look.width, 3), numpy.uint8)
        self._plain[:, :] = look.colour
        self._side = max(8, look.height // 10)
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count / self.look.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        image = self._plain.copy()
        x = (self._count * 8) % (self.look.width - self._side)
        image[: self._side, x : x + self._side] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(self._count * VIDEO_RATE / self.look.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        self._count += 1
        return frame


# Installed before the watch page's own scripts.
PROBE = f"""
(() => {{
  const probe = {{ frames: [], presses: [], names: [], busy: [], audio: [] }};
  window.__probe = probe;
  window.addEventListener('click', (event) => {{
    if (event.target instanceof Element && event.target.closest('#next')) {{
      probe.presses.push(performance.now());
    }}
  }}, true);
  document.addEventListener('DOMContentLoaded', () => {{
    const video = document.getElementById('player');
    const canvas = document.createElement('canvas');
    [canvas.width, canvas.height] = {list(CANVAS)};
    const paint = canvas.getContext('2d', {{ willReadFrequently: true }});
    const onFrame = (now, meta) => {{
      paint.drawImage(video, 0, 0, canvas.width, canvas.height);
      const data = paint.getImageData(0, 0, canvas.width, canvas.height).data;
      const px = [];
      for (const y of {list(SAMPLE_ROWS)}) {{
        for (const x of {list(SAMPLE_COLUMNS)}) {{
          const i = (y * canvas.width + x) * 4;
          px.push([data[i], data[i + 1], data[i + 2]]);
        }}
      }}
      probe.frames.push({{
        t: meta.presentationTime, now, w: meta.width, h: meta.height,
        n: meta.presentedFrames, r: meta.receiveTime ?? null,
        rtp: meta.rtpTimestamp ?? null, px,
      }});
      video.requestVideoFrameCallback(onFrame);
    }};
    video.requestVideoFrameCallback(onFrame);

    const name = document.getElementById('stage-name');
    new MutationObserver(() => {{
      probe.names.push({{
        t: performance.now(), name: name.textContent,
        frame: probe.frames.length - 1,
      }});
    }}).observe(name, {{ childList: true, characterData: true, subtree: true }});

    const next = document.getElementById('next');
    new MutationObserver(() => {{
      probe.busy.push({{
        t: performance.now(), busy: next.getAttribute('aria-busy') === 'true',
      }});
    }}).observe(next, {{ attributes: true, attributeFilter: ['aria-busy'] }});
  }});
}})();
"""

# Feeds the page's received audio into an AnalyserNode and notes, every 10 ms, the
# level (dB) at each of the given tones. The receiver track stays the same across
# Next, so this follows every stage the page lands on.
LISTEN = """
async (tones) => {
  const probe = window.__probe;
  const receiver = window.stageWatch.pc.getReceivers()
    .find((r) => r.track && r.track.kind === 'audio');
  const context = new AudioContext();
  await context.resume();
  const source = context.createMediaStreamSource(new MediaStream([receiver.track]));
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  analyser.smoothingTimeConstant = 0;
  source.connect(analyser);
  const bins = new Float32Array(analyser.frequencyBinCount);
  const width = context.sampleRate / analyser.fftSize;
  const at = (hz) => {
    const k = Math.round(hz / width);
    return Math.max(bins[k - 1], bins[k], bins[k + 1]);
  };
  setInterval(() => {
    analyser.getFloatFrequencyData(bins);
    probe.audio.push({ t: performance.now(), levels: tones.map(at) });
  }, 10);
  window.__listening = context;
  return { state: context.state, rate: context.sampleRate };
}
"""

# Per kind, the inbound stream's total jitter buffer delay (s) and samples or frames
# emitted, from getStats.
JITTER_BUFFERS = """
async () => {
  const counted = {};
  for (const s of (await window.stageWatch.pc.getStats()).values()) {
    if (s.type === 'inbound-rtp') {
      counted[s.kind] = [s.jitterBufferDelay ?? 0, s.jitterBufferEmittedCount ?? 0];
    }
  }
  return counted;
}
"""

# Resolves to the new stage's id once the page has been told about it and has
# presented `count` frames of its size after the press, spanning at least `span` ms.
SWITCHED = """
({ pressed, previous, sizes, count, span }) => {
  const stage = window.stageWatch && window.stageWatch.stage;
  if (!stage || stage.id === previous || !sizes[stage.id]) return null;
  const [w, h] = sizes[stage.id];
  const after = window.__probe.frames.filter((f) => f.t > pressed);
  const first = after.findIndex((f) => f.w === w && f.h === h);
  if (first < 0 || after.length - first < count) return null;
  if (after[after.length - 1].t - after[first].t < span) return null;
  return stage.id;
}
"""


# ------------------------------------------------------------------ helpers


def close_to(point, colour) -> bool:
    return all(abs(int(a) - b) <= COLOUR_TOLERANCE for a, b in zip(point, colour))


def shown_stage(frame: dict, looks: dict[str, Look]) -> str | None:
    """The stage a presented frame shows (size and every sampled colour), or None."""
    for stage_id, look in looks.items():
        if (frame["w"], frame["h"]) == look.size and all(
            close_to(p, look.colour) for p in frame["px"]
        ):
            return stage_id
    return None


def describe(frame: dict, looks: dict[str, Look]) -> str:
    label = looks[shown_stage(frame, looks)].name if shown_stage(frame, looks) else "?"
    return f"{frame['w']}x{frame['h']} {label} px={frame['px'][:3]}…"


@contextlib.asynccontextmanager
async def live_stages(server, new_stage, *looks: Look):
    """Each look published as a stage by its own aiortc publisher; yields {id: look}."""
    publishers, by_id = [], {}
    try:
        for look in looks:
            stage = await new_stage(look.name)
            publisher = Publisher(server.base, stage["id"], stage["key"])
            publishers.append(publisher)
            await publisher.start(tracks=[ToneTrack(look.tone), ColourTrack(look)])
            by_id[stage["id"]] = look
        yield by_id
    finally:
        for publisher in publishers:
            with contextlib.suppress(Exception):
                await publisher.stop()


async def open_watch(browser, base: str, looks: dict[str, Look]):
    """/watch with the probe, once it presents frames of the stage it names."""
    page = await new_page(browser)
    await page.add_init_script(PROBE)
    await page.goto(f"{base}/watch")
    await page.wait_for_function(
        "() => window.stageWatch && window.stageWatch.viewerId"
        " && window.stageWatch.stage",
        timeout=UI_TIMEOUT_MS,
        polling=50,
    )
    stage_id = await current_stage(page)
    await page.wait_for_function(
        "([w, h]) => window.__probe.frames.filter("
        "(f) => f.w === w && f.h === h).length >= 5",
        arg=list(looks[stage_id].size),
        timeout=UI_TIMEOUT_MS,
        polling=50,
    )
    return page


async def current_stage(page) -> str | None:
    return await page.evaluate(
        "() => (window.stageWatch && window.stageWatch.stage || {}).id || null"
    )


async def press_next(page) -> float:
    """Click Next; returns the moment the click reached the page (page clock, ms)."""
    count = await page.evaluate("() => window.__probe.presses.length")
    await page.click("#next")
    await page.wait_for_function(
        "(n) => window.__probe.presses.length > n", arg=count, polling=20
    )
    return await page.evaluate("() => window.__probe.presses.at(-1)")


async def next_and_watch(
    page, looks: dict[str, Look], count: int = 20, span: float = 0.0
) -> dict:
    """Press Next and wait for the new stage's frames; returns what the page saw."""
    previous = await current_stage(page)
    pressed = await press_next(page)
    handle = await page.wait_for_function(
        SWITCHED,
        arg={
            "pressed": pressed,
            "previous": previous,
            "sizes": {k: list(v.size) for k, v in looks.items()},
            "count": count,
            "span": span,
        },
        timeout=SWITCH_TIMEOUT_MS,
        polling=50,
    )
    new = await handle.json_value()
    frames = await page.evaluate(
        "(t) => window.__probe.frames.filter((f) => f.t > t)", pressed - 1000
    )
    before = [f for f in frames if f["t"] <= pressed]
    after = [f for f in frames if f["t"] > pressed]
    first = next(i for i, f in enumerate(after) if (f["w"], f["h"]) == looks[new].size)
    return {
        "old": previous,
        "new": new,
        "pressed": pressed,
        "before": before,
        "after": after,
        "first": first,
        "ms": after[first]["t"] - pressed,
    }


async def server_view(http, base: str, viewer_id: str) -> tuple[str | None, dict]:
    """The stage the server has this viewer on, and every live stage's viewer count."""
    async with http.get(f"{base}/whep/viewers/{viewer_id}") as response:
        assert response.status == 200, await response.text()
        on = (await response.json())["stage"]
    async with http.get(f"{base}/api/stages") as response:
        assert response.status == 200, await response.text()
        counts = {s["id"]: s["viewers"] for s in (await response.json())["stages"]}
    return (on or {}).get("id"), counts


def heard(sample: dict, tones: list[float]) -> int | None:
    """Which tone (index) dominates this analyser sample, if any."""
    levels = sample["levels"]
    loudest = max(range(len(levels)), key=lambda i: levels[i])
    rest = [v for i, v in enumerate(levels) if i != loudest]
    if levels[loudest] < TONE_FLOOR_DB:
        return None
    if rest and levels[loudest] - max(rest) < TONE_MARGIN_DB:
        return None
    return loudest


def spread(values) -> str:
    values = [round(v, 1) for v in values]
    return f"{values} (median {statistics.median(values):.1f}, max {max(values):.1f})"


async def name_follows_picture(page, seen: dict, looks: dict[str, Look]) -> tuple:
    """Check that the name changed once, to the new stage, with its picture on screen.

    Returns when the button went busy and when the name changed (ms after the press).
    """
    pressed, new = seen["pressed"], seen["new"]
    probe = await page.evaluate(
        "(t) => ({ names: window.__probe.names.filter((n) => n.t > t),"
        " busy: window.__probe.busy.filter((b) => b.t >= t),"
        " frames: window.__probe.frames })",
        pressed,
    )
    # The same name set again (a count update) is no change.
    names = [
        n
        for i, n in enumerate(probe["names"])
        if n["name"] and (i == 0 or probe["names"][i - 1]["name"] != n["name"])
    ]
    assert [n["name"] for n in names] == [looks[new].name], names
    on_screen = probe["frames"][names[0]["frame"]]
    assert shown_stage(on_screen, looks) == new, (
        f"the name became {looks[new].name!r} while the screen showed "
        f"{describe(on_screen, looks)}"
    )
    # Feedback at once: the button is busy before the name changes.
    busy = [b["t"] for b in probe["busy"] if b["busy"]]
    assert busy and busy[0] <= names[0]["t"], (probe["busy"], names)
    return busy[0] - pressed, names[0]["t"] - pressed


# --------------------------------------------------------------------------- tests


async def test_after_next_no_frame_of_the_previous_stage_and_the_name_with_the_picture(
    server, new_stage
):
    red = Look("Red Room", 320, 240, RED, 440)
    blue = Look("Blue Hall", 480, 270, BLUE, 880)
    async with (
        live_stages(server, new_stage, red, blue) as looks,
        launch_chromium(None) as browser,
    ):
        page = await open_watch(browser, server.base, looks)
        switch_ms, held, busy_ms, name_ms = [], [], [], []
        for _ in range(5):
            seen = await next_and_watch(page, looks, count=15)
            old_size, new_size = looks[seen["old"]].size, looks[seen["new"]].size
            after, first = seen["after"], seen["first"]
            # Before the first new frame the previous stage may still be on screen;
            # after it, never again.
            stale = [f for f in after[first:] if (f["w"], f["h"]) == old_size]
            assert not stale, (
                f"{looks[seen['old']].name} -> {looks[seen['new']].name}: "
                f"{len(stale)} frames of the previous stage after the first new one "
                f"(first new at +{seen['ms']:.0f} ms; stale at "
                f"{[round(f['t'] - seen['pressed']) for f in stale]} ms)"
            )
            others = [f for f in after if (f["w"], f["h"]) not in (old_size, new_size)]
            assert not others, [describe(f, looks) for f in others]
            busy, named = await name_follows_picture(page, seen, looks)
            switch_ms.append(seen["ms"])
            held.append(first)
            busy_ms.append(busy)
            name_ms.append(named)
        print(f"\nNext -> first new frame, ms: {spread(switch_ms)}")
        print(f"Next -> name changed, ms: {spread(name_ms)}")
        print(f"Next -> button busy, ms: {spread(busy_ms)}")
        print(f"frames of the previous stage presented after the press: {held}")


async def test_no_freeze_after_next(server, new_stage):
    red = Look("Red Room", 320, 240, RED, 440)
    blue = Look("Blue Hall", 480, 270, BLUE, 880)
    async with (
        live_stages(server, new_stage, red, blue) as looks,
        launch_chromium(None) as browser,
    ):
        page = await open_watch(browser, server.base, looks)
        worst, switch_gaps = [], []
        for _ in range(3):
            seen = await next_and_watch(page, looks, count=10, span=FREEZE_WATCH_MS)
            after, first = seen["after"], seen["first"]
            start = after[first]["t"]
            shown = [f for f in after[first:] if f["t"] <= start + FREEZE_WATCH_MS]
            gaps = [b["t"] - a["t"] for a, b in zip(shown, shown[1:])]
            longest = max(range(len(gaps)), key=gaps.__getitem__)
            a, b = shown[longest], shown[longest + 1]
            # For telling a relay stall from a starved machine: the same stage's
            # largest gap in the second before the press, and whether the frame
            # after the longest gap arrived late or was held back by the page.
            before = [f["t"] for f in seen["before"]]
            calm = max((y - x for x, y in zip(before, before[1:])), default=None)
            arrived = (b["r"] - a["r"]) if a["r"] and b["r"] else None
            held = (b["t"] - b["r"]) if b["r"] else None
            last_old = (seen["before"] + after[:first])[-1:]
            if last_old:
                switch_gaps.append(start - last_old[0]["t"])
            worst.append(gaps[longest])
            report = (
                f"{looks[seen['old']].name} -> {looks[seen['new']].name}: first new "
                f"frame +{seen['ms']:.0f} ms; then {len(shown)} frames in "
                f"{FREEZE_WATCH_MS:.0f} ms, gaps median {statistics.median(gaps):.0f},"
                f" longest {gaps[longest]:.0f} ms after new frame {longest} "
                f"(received {arrived and round(arrived)} ms after the one before, "
                f"presented {held and round(held)} ms after it came); "
                f"longest gap in the second before the press {calm and round(calm)} ms"
            )
            print("\n" + report)
            assert gaps[longest] < FREEZE_LIMIT_MS, report
        print(f"longest gap after each switch, ms: {spread(worst)}")
        print(f"last old frame -> first new frame, ms: {spread(switch_gaps)}")


async def test_audio_switches_with_the_picture(server, new_stage):
    red = Look("Red Room", 320, 240, RED, 440)
    blue = Look("Blue Hall", 480, 270, BLUE, 880)
    async with (
        live_stages(server, new_stage, red, blue) as looks,
        launch_chromium(None) as browser,
    ):
        page = await open_watch(browser, server.base, looks)
        order = list(looks)
        tones = [looks[s].tone for s in order]
        context = await page.evaluate(LISTEN, tones)
        assert context["state"] == "running", context
        on = await current_stage(page)
        await page.wait_for_function(
            f"""() => window.__probe.audio.slice(-20).filter(
                  (s) => s.levels[{order.index(on)}] > {TONE_FLOOR_DB}).length >= 15""",
            timeout=UI_TIMEOUT_MS,
            polling=50,
        )
        offsets, audio_ms, buffered, heard_share = [], [], [], []
        counted = await page.evaluate(JITTER_BUFFERS)
        for _ in range(3):
            # How long the browser's buffers held audio and video on average since
            # the last round: the old stage's sound still buffered plays out first.
            now = await page.evaluate(JITTER_BUFFERS)
            buffered.append(
                {
                    kind: round(
                        1000
                        * (now[kind][0] - counted[kind][0])
                        / max(1, now[kind][1] - counted[kind][1])
                    )
                    for kind in now
                }
            )
            counted = now
            seen = await next_and_watch(page, looks, count=10, span=1000)
            old, new = order.index(seen["old"]), order.index(seen["new"])
            pressed = seen["pressed"]
            picture = seen["after"][seen["first"]]["t"]
            samples = await page.evaluate(
                "(t) => window.__probe.audio.filter((s) => s.t > t)", pressed - 300
            )
            which = [(s["t"], heard(s, tones)) for s in samples]
            before = [w for t, w in which if t <= pressed]
            assert before.count(old) >= len(before) * 0.8, (
                f"before the press the old tone was heard in only "
                f"{before.count(old)} of {len(before)} samples"
            )
            switched = next((t for t, w in which if t > pressed and w == new), None)
            assert switched is not None, (
                f"{looks[seen['new']].name}'s tone never heard after Next: "
                f"{[w for t, w in which if t > pressed]}"
            )
            late_old = [
                round(t - switched) for t, w in which if t > switched and w == old
            ]
            assert not late_old, (
                f"the previous stage's tone came back {late_old} ms after the new one"
            )
            settled = [w for t, w in which if t > switched + 200]
            # Samples with no clear tone are glitches of a starved machine (the
            # browser conceals lost audio); the new tone must carry the rest.
            assert settled and settled.count(new) >= len(settled) * 0.5, (
                f"after the switch the new tone was heard in only "
                f"{settled.count(new)} of {len(settled)} samples"
            )
            heard_share.append(round(settled.count(new) / len(settled), 2))
            offset = switched - picture
            offsets.append(offset)
            audio_ms.append(switched - pressed)
            assert abs(offset) <= AUDIO_PICTURE_LIMIT_MS, (
                f"sound switched {offset:.0f} ms from the picture "
                f"(press -> picture {picture - pressed:.0f} ms, "
                f"press -> sound {switched - pressed:.0f} ms)"
            )
        print(f"\nNext -> new tone heard, ms: {spread(audio_ms)}")
        print(f"new tone heard minus first new frame presented, ms: {spread(offsets)}")
        print(f"mean jitter buffer delay before each press, ms: {buffered}")
        print(f"share of samples with the new tone after the switch: {heard_share}")


async def test_stages_of_different_sizes_switch_without_artefacts(server, new_stage):
    small = Look("Small Red", 320, 240, RED, 440)
    large = Look("Large Blue", 1280, 720, BLUE, 880, fps=10)
    odd = Look("Odd Yellow", 481, 271, YELLOW, 660)
    async with (
        live_stages(server, new_stage, small, large, odd) as looks,
        launch_chromium(None) as browser,
    ):
        page = await open_watch(browser, server.base, looks)
        directions = set()
        for _ in range(4):
            seen = await next_and_watch(page, looks, count=10)
            old, new = seen["old"], seen["new"]
            shown = [shown_stage(f, looks) for f in seen["after"]]
            # Every presented frame is a clean picture of the old stage until the
            # new stage's first, and a clean picture of the new stage from then on.
            first = seen["first"]
            wrong = [
                (i, describe(f, looks))
                for i, (f, s) in enumerate(zip(seen["after"], shown))
                if s != (old if i < first else new)
            ]
            assert not wrong, (
                f"{looks[old].name} -> {looks[new].name}: frames that are not clean "
                f"pictures of the right stage (index, first new {first}): {wrong[:5]}"
            )
            area = lambda s: looks[s].width * looks[s].height  # noqa: E731
            directions.add("up" if area(new) > area(old) else "down")
            print(
                f"\n{looks[old].name} -> {looks[new].name}: first new frame "
                f"+{seen['ms']:.0f} ms, {len(shown) - first} clean frames of it"
            )
        # Three sizes and never the same stage twice in a row: any three Nexts in a
        # row go up and down.
        assert directions == {"up", "down"}, directions


# Five clicks on Next, 60 ms apart, all scheduled at once so that a busy page bunches
# them up rather than spreading them out.
BURST = """
async () => {
  const next = document.getElementById('next');
  const clicked = [0, 60, 120, 180, 240].map((ms) => new Promise((resolve) => {
    setTimeout(() => { next.click(); resolve(); }, ms);
  }));
  await Promise.all(clicked);
  return window.__probe.presses.slice(-5);
}
"""


async def test_rapid_next_presses_end_on_one_stage(server, new_stage, http):
    looks_in_order = (
        Look("Red Room", 320, 240, RED, 440),
        Look("Blue Hall", 480, 270, BLUE, 880),
        Look("Yellow Square", 256, 256, YELLOW, 660),
    )
    async with (
        live_stages(server, new_stage, *looks_in_order) as looks,
        launch_chromium(None) as browser,
    ):
        page = await open_watch(browser, server.base, looks)
        viewer_id = await page.evaluate("() => window.stageWatch.viewerId")
        label = lambda s: looks[s].name if s in looks else repr(s)  # noqa: E731
        for burst in range(2):
            # A page starved of CPU may fire the clicks later than planned; the
            # printout below says how close together they came.
            presses = await page.evaluate(BURST)
            last = presses[-1]
            # Settled: a second and a half after the last click, nothing in flight,
            # and (if all is well) a second of the named stage's frames.
            await page.wait_for_function(
                "(t) => performance.now() > t"
                " && document.getElementById('next').ariaBusy !== 'true'",
                arg=last + 1500,
                polling=50,
            )
            with contextlib.suppress(PlaywrightTimeout):
                await page.wait_for_function(
                    """({ last, sizes }) => {
                      const [w, h] = sizes[window.stageWatch.stage.id];
                      const mine = window.__probe.frames.filter(
                        (f) => f.t > last && f.w === w && f.h === h);
                      return mine.length >= 20 && mine.at(-1).t - mine[0].t >= 1000;
                    }""",
                    arg={
                        "last": last,
                        "sizes": {k: list(v.size) for k, v in looks.items()},
                    },
                    timeout=SWITCH_TIMEOUT_MS,
                    polling=50,
                )
            final, counts = await server_view(http, server.base, viewer_id)
            page_on = await current_stage(page)
            name = await page.locator("#stage-name").text_content()
            recent = await page.evaluate("() => window.__probe.frames.slice(-10)")
            state = (
                f"server: {label(final)}, page: {label(page_on)}, "
                f"name shown: {name!r}, last frames: "
                f"{[describe(f, looks) for f in recent[-3:]]}"
            )
            assert page_on == final, state
            assert name == looks[final].name, state
            assert [shown_stage(f, looks) for f in recent] == [final] * 10, state
            assert counts == {s: int(s == final) for s in looks}, counts

            # The page's Next requests in this burst, and what it showed from the
            # first click on, as runs of one stage.
            calls = await page.evaluate(
                "(t) => performance.getEntriesByType('resource')"
                ".filter((e) => e.name.endsWith('/next') && e.startTime >= t)"
                ".map((e) => e.responseEnd)",
                presses[0] - 1,
            )
            frames = await page.evaluate(
                "(t) => window.__probe.frames.filter((f) => f.t > t)", presses[0]
            )
            runs = []
            for f in frames:
                stage = shown_stage(f, looks)
                if runs and runs[-1][0] == stage:
                    runs[-1][1] += 1
                else:
                    runs.append([stage, 1])
            story = [f"{label(s) if s else 'no stage'} x{n}" for s, n in runs]
            # Once the last answer is in, the final stage's first picture is the last
            # change: nothing of another stage, and nothing broken, after it.
            settled = [f for f in frames if f["t"] > max(calls)]
            shown = [shown_stage(f, looks) for f in settled]
            first = shown.index(final)
            assert shown[first:] == [final] * (len(shown) - first), story
            names = await page.evaluate(
                "(t) => window.__probe.names.filter((n) => n.t > t).map((n) => n.name)",
                presses[0],
            )
            print(
                f"\nburst {burst}: clicks at "
                f"{[round(p - presses[0]) for p in presses]} ms, {len(calls)} Next "
                f"requests, names shown {[n for n in names if n]}, pictures {story}"
            )
