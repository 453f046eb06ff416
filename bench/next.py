"""Next latency: press Next -> first presented frame of the new stage, in headless Chromium.

    .venv/bin/python -m bench.next [--nexts 100] [--fresh 100] [--block 10] [--budget 240]

Everything runs on 127.0.0.1. The server is its own process (`python -m stage`); three
aiortc publishers in this process keep three stages live, each with its own picture
size, so a frame's size (requestVideoFrameCallback metadata) tells which stage it
belongs to. One Chromium page opens /watch and the run alternates, in blocks, two
ways of getting to another stage:

* keep-connection: click #next on the watch page; the page keeps its one peer
  connection and the server moves its tracks. Measured from the click reaching the
  page to the presentation time of the first frame of the new stage's size; frames of
  the previous stage presented after that one are counted as stale.
* fresh-connection: what random-chat sites do, from the same page: a new recvonly
  RTCPeerConnection, full ICE gathering, POST /whep/{stage}, answer, a new <video>;
  measured from the start of that to the first presented frame; then DELETE and close.

After each measurement the run waits a random 300-800 ms (`--wait LOW HIGH` seconds:
above about a second a visit has settled, and video's playout delay has been let go
for lip sync before the next press). The run stops by itself:
after the counts asked for, or when --budget seconds have passed (then it says how
many it got). The table gives median, p95 (nearest rank) and max per method and the
keep/fresh ratios; the JSON with every sample goes to bench/results/next-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.machine import cpu_model, load_average, machine_busy
from stage.relay.ice import gather_on
from tests.browser import launch_chromium, new_page
from tests.peers import PatternTrack, Publisher, ToneTrack, only

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# One picture size per stage: 4:3, 16:9 and square, each with its own shade.
STAGES = (
    ("Four Three", 320, 240, 40),
    ("Wide", 480, 270, 120),
    ("Square", 256, 256, 200),
)

WAIT_RANGE = (0.3, 0.8)  # seconds between measurements, by default
STEP_TIMEOUT_MS = 10_000  # one Next or one fresh connection
HARD_LIMIT = 265.0  # seconds; the whole run is cut here whatever happens

# Added before the watch page's scripts: notes the moment a click on #next reaches
# the page and every frame the page's <video id="player"> presents.
PROBE = """
(() => {
  const seen = { clicks: [], shown: [] };
  window.__nextBench = seen;
  window.addEventListener('click', (event) => {
    const el = event.target;
    if (el instanceof Element && el.closest('#next')) seen.clicks.push(performance.now());
  }, true);
  const follow = () => {
    const player = document.getElementById('player');
    if (!player) return;
    const onShown = (now, meta) => {
      seen.shown.push({
        t: meta.presentationTime, w: meta.width, h: meta.height,
        r: meta.receiveTime ?? null, rtp: meta.rtpTimestamp ?? null,
      });
      player.requestVideoFrameCallback(onShown);
    };
    player.requestVideoFrameCallback(onShown);
  };
  document.addEventListener('DOMContentLoaded', follow);
})();
"""

CURRENT_STAGE = "() => (window.stageWatch && window.stageWatch.stage || {}).id || null"

# Resolves once the click has been seen, the page has been told its new stage and a
# frame of that stage's size was presented after the click.
NEXT_ARRIVED = """
({ clicksBefore, previous, sizes }) => {
  const seen = window.__nextBench;
  if (seen.clicks.length <= clicksBefore) return null;
  const pressed = seen.clicks[seen.clicks.length - 1];
  const stage = window.stageWatch && window.stageWatch.stage;
  if (!stage || stage.id === previous) return null;
  const size = sizes[stage.id];
  if (!size) return null;
  const frame = seen.shown.find((f) => f.t > pressed && f.w === size[0] && f.h === size[1]);
  return frame ? { pressed, stage: stage.id } : null;
}
"""

NEXT_CALLS = """
(pressed) => performance.getEntriesByType('resource')
  .filter((e) => e.name.endsWith('/next') && e.startTime >= pressed)
  .map((e) => ({ start: e.startTime, end: e.responseEnd }))
"""

# The whole fresh-connection round, timed inside the page.
FRESH_ROUND = """
async ({ stageId, timeoutMs }) => {
  const t0 = performance.now();
  const since = () => performance.now() - t0;
  const marks = {};
  const shown = [];
  let location = null;
  const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle' });
  const video = document.createElement('video');
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  video.style.cssText =
    'position:fixed;left:0;top:0;width:320px;height:240px;z-index:50;background:#000';
  document.body.appendChild(video);
  const limit = (promise, what) => Promise.race([
    promise,
    new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`${what}: no result in ${timeoutMs} ms`)), timeoutMs)),
  ]);
  try {
    const firstShown = new Promise((resolve) => {
      const onShown = (now, meta) => {
        shown.push({
          t: meta.presentationTime - t0, w: meta.width, h: meta.height,
          r: meta.receiveTime === undefined ? null : meta.receiveTime - t0,
        });
        if (shown.length === 1) resolve();
        video.requestVideoFrameCallback(onShown);
      };
      video.requestVideoFrameCallback(onShown);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'connected' && marks.connected === undefined) {
        marks.connected = since();
      }
    });
    const stream = new MediaStream();
    pc.addEventListener('track', (event) => {
      stream.addTrack(event.track);
      if (video.srcObject !== stream) {
        video.srcObject = stream;
        video.play().catch(() => {});
      }
    });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    await pc.setLocalDescription(await pc.createOffer());
    await limit(new Promise((resolve) => {
      const done = () => pc.iceGatheringState === 'complete' && resolve();
      pc.addEventListener('icegatheringstatechange', done);
      done();
    }), 'ICE gathering');
    marks.gathered = since();
    const response = await limit(fetch(`/whep/${encodeURIComponent(stageId)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    }), 'WHEP POST');
    const answer = await response.text();
    if (response.status !== 201) {
      throw new Error(`WHEP POST answered ${response.status}: ${answer.slice(0, 200)}`);
    }
    location = new URL(response.headers.get('Location'), response.url).href;
    marks.answered = since();
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    await limit(firstShown, 'first frame');
    const first = shown[0];
    // A few more frames, so that a wrong first picture would show.
    await new Promise((resolve) => setTimeout(resolve, 100));
    return { ms: first.t, first, marks, frames: shown.length,
             sizes: shown.map((f) => `${f.w}x${f.h}`), error: null };
  } catch (err) {
    return { ms: null, first: null, marks, frames: shown.length, sizes: [],
             error: String(err && err.message || err) };
  } finally {
    if (location) {
      await fetch(location, { method: 'DELETE' }).catch(() => {});
    }
    pc.close();
    video.srcObject = null;
    video.remove();
  }
}
"""


# ------------------------------------------------------------------ the machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu(root: int) -> float:
    """user+sys CPU seconds of `root` and every live process under it."""
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(rest[1])
        cpu[int(entry.name)] = int(rest[11]) + int(rest[12])
    total = 0
    for pid, ticks in cpu.items():
        p = pid
        while p and p != root and p in parents:
            p = parents[p]
        if p == root:
            total += ticks
    return total / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ statistics


def nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarise(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": statistics.median(values) if values else None,
        "p95": nearest_rank(values, 0.95),
        "max": max(values) if values else None,
    }


# ------------------------------------------------------------------ the run


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.sizes: dict[str, tuple[int, int]] = {}
        self.codecs: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.next_samples: list[dict] = []
        self.fresh_samples: list[dict] = []
        self.failures = {"keep-connection": [], "fresh-connection": []}
        self.notes: list[str] = []
        self.rng = random.Random(args.seed)
        self.deadline = 0.0
        self.block = -1  # the measured block a sample belongs to; -1 = warm-up

    def stage_of(self, width: int, height: int) -> str | None:
        for stage_id, size in self.sizes.items():
            if size == (width, height):
                return stage_id
        return None

    async def pause(self) -> None:
        await asyncio.sleep(self.rng.uniform(*self.args.wait))

    # keep-connection: the page's own Next button

    async def one_next(self, page, record: bool) -> None:
        previous = await page.evaluate(CURRENT_STAGE)
        old_size = self.sizes.get(previous)
        clicks = await page.evaluate(
            "() => { window.__nextBench.shown.length = 0;"
            " performance.clearResourceTimings();"
            " return window.__nextBench.clicks.length; }"
        )
        await page.click("#next")
        try:
            handle = await page.wait_for_function(
                NEXT_ARRIVED,
                arg={
                    "clicksBefore": clicks,
                    "previous": previous,
                    "sizes": {k: list(v) for k, v in self.sizes.items()},
                },
                timeout=STEP_TIMEOUT_MS,
                polling=20,
            )
        except Exception as err:  # playwright's TimeoutError, or a page error
            if record:
                self.failures["keep-connection"].append(str(err).splitlines()[0])
            await asyncio.sleep(1)
            return
        arrived = await handle.json_value()
        await self.pause()
        shown = await page.evaluate("() => window.__nextBench.shown.slice()")
        pressed, new = arrived["pressed"], arrived["stage"]
        # The page's POST .../next, from resource timing: when it left and came back.
        calls = await page.evaluate(NEXT_CALLS, pressed)
        new_size = self.sizes[new]
        after = [f for f in shown if f["t"] > pressed]
        first = next(f for f in after if (f["w"], f["h"]) == new_size)
        stale = [
            f for f in after if f["t"] > first["t"] and (f["w"], f["h"]) == old_size
        ]
        foreign = [f for f in after if (f["w"], f["h"]) not in (old_size, new_size)]
        if record:
            self.next_samples.append(
                {
                    "ms": round(first["t"] - pressed, 2),
                    "from": previous,
                    "to": new,
                    "stale": len(stale),
                    "stale_last_ms": round(stale[-1]["t"] - first["t"], 2)
                    if stale
                    else None,
                    "other_stage_frames": len(foreign),
                    "request_sent_ms": round(calls[0]["start"] - pressed, 2)
                    if calls
                    else None,
                    "answered_ms": round(calls[0]["end"] - pressed, 2)
                    if calls
                    else None,
                    # When the last packet of that first frame reached the page.
                    "received_ms": round(first["r"] - pressed, 2)
                    if first.get("r") is not None
                    else None,
                    "first_rtp": first.get("rtp"),
                    "pressed_at": round(pressed, 2),
                    "block": self.block,
                    "frames_watched": len(after),
                }
            )

    # fresh-connection: a new peer connection per Next, from the same page

    async def one_fresh(self, page, previous: str | None, record: bool) -> str:
        choices = [s for s in self.sizes if s != previous]
        stage_id = self.rng.choice(choices)
        result = await page.evaluate(
            FRESH_ROUND, {"stageId": stage_id, "timeoutMs": STEP_TIMEOUT_MS}
        )
        await self.pause()
        if result["error"] is not None:
            if record:
                self.failures["fresh-connection"].append(result["error"])
            return stage_id
        want = "{}x{}".format(*self.sizes[stage_id])
        if record:
            self.fresh_samples.append(
                {
                    "ms": round(result["ms"], 2),
                    "to": stage_id,
                    "block": self.block,
                    "first_frame_right_stage": result["sizes"][0] == want,
                    "wrong_stage_frames": sum(1 for s in result["sizes"] if s != want),
                    **{
                        f"{mark}_ms": round(result["marks"][mark], 2)
                        if mark in result["marks"]
                        else None
                        for mark in ("gathered", "answered", "connected")
                    },
                    "received_ms": round(result["first"]["r"], 2)
                    if result["first"].get("r") is not None
                    else None,
                }
            )
        return stage_id

    async def run(self) -> dict:
        gather_on(("127.0.0.1",))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        data = tempfile.mkdtemp(prefix="stage-bench-next-")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stage",
                "--port",
                str(port),
                "--data",
                data,
                "--ice-address",
                "127.0.0.1",
                "--log-level",
                "WARNING",
            ],
            cwd=ROOT,
        )
        publishers: list[Publisher] = []
        try:
            async with aiohttp.ClientSession() as http:
                for index, (name, width, height, shade) in enumerate(STAGES):
                    stage = await create_stage(http, base, name)
                    publisher = Publisher(base, stage["id"], stage["key"])
                    publisher.pc.addTransceiver(ToneTrack(), direction="sendonly")
                    video = publisher.pc.addTransceiver(
                        PatternTrack(width=width, height=height, shade=shade),
                        direction="sendonly",
                    )
                    # With --h264 the second stage sends H.264, as OBS or ffmpeg
                    # would: Next then crosses codecs on the same connection.
                    codec = "H264" if self.args.h264 and index == 1 else "VP8"
                    only(video, codec)
                    await publisher.start(audio=False, video=False)
                    publishers.append(publisher)
                    self.sizes[stage["id"]] = (width, height)
                    self.names[stage["id"]] = name
                    self.codecs[stage["id"]] = codec
            async with launch_chromium(None) as browser:
                page = await new_page(browser)
                await page.add_init_script(PROBE)
                await page.goto(f"{base}/watch")
                await page.wait_for_function(
                    "() => window.__nextBench.shown.length > 10"
                    " && window.stageWatch && window.stageWatch.stage",
                    timeout=15_000,
                    polling=50,
                )
                return await self.measure(page)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(p.stop() for p in publishers)), 5
                )
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
            shutil.rmtree(data, ignore_errors=True)

    async def measure(self, page) -> dict:
        args = self.args
        # Warm-up, not recorded: the first rounds pay for codec and JIT start-up.
        fresh_prev = None
        for _ in range(args.warmup):
            await self.one_next(page, record=False)
            fresh_prev = await self.one_fresh(page, fresh_prev, record=False)

        me = os.getpid()
        load0 = load_average()
        busy0, stolen0 = machine_busy()
        ours0 = tree_cpu(me)
        t0 = time.monotonic()
        block = 0
        stopped_early = False
        while (
            len(self.next_samples) + len(self.failures["keep-connection"]) < args.nexts
            or len(self.fresh_samples) + len(self.failures["fresh-connection"])
            < args.fresh
        ):
            method = "keep-connection" if block % 2 == 0 else "fresh-connection"
            self.block = block
            for _ in range(args.block):
                if time.monotonic() > self.deadline:
                    stopped_early = True
                    break
                if method == "keep-connection":
                    done = len(self.next_samples) + len(self.failures[method])
                    if done >= args.nexts:
                        break
                    await self.one_next(page, record=True)
                else:
                    done = len(self.fresh_samples) + len(self.failures[method])
                    if done >= args.fresh:
                        break
                    fresh_prev = await self.one_fresh(page, fresh_prev, record=True)
            print(
                f"{time.monotonic() - t0:6.1f} s  keep-connection "
                f"{len(self.next_samples):3d}  fresh-connection "
                f"{len(self.fresh_samples):3d}",
                flush=True,
            )
            if stopped_early:
                break
            block += 1
        elapsed = time.monotonic() - t0
        busy1, stolen1 = machine_busy()
        ours = tree_cpu(me) - ours0
        cores = len(os.sched_getaffinity(0))  # what `nproc` prints
        machine = {
            "nproc": cores,
            "cpu_model": cpu_model(),
            "load_average_start": load0,
            "load_average_end": load_average(),
            "machine_busy_cores": round((busy1 - busy0) / elapsed, 2),
            "this_run_cores": round(ours / elapsed, 2),
            "others_cores": round(((busy1 - busy0) - ours) / elapsed, 2),
            "stolen_cores": round((stolen1 - stolen0) / elapsed, 2),
        }
        if stopped_early:
            self.notes.append(
                f"stopped at the {args.budget:.0f} s budget: "
                f"{len(self.next_samples)} Nexts, {len(self.fresh_samples)} fresh "
                f"connections instead of {args.nexts} and {args.fresh}"
            )
        return {"elapsed_s": round(elapsed, 1), "machine": machine}


async def create_stage(http, base: str, name: str) -> dict:
    for _ in range(200):
        try:
            async with http.post(f"{base}/api/stages", json={"name": name}) as r:
                assert r.status == 201, (r.status, await r.text())
                return await r.json()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the server at {base} never answered")


# ------------------------------------------------------------------ report


def phase_medians(samples: list[dict], names: tuple[str, ...]) -> dict:
    """Median of each `{name}_ms` over the samples that have it."""
    medians = {}
    for name in names:
        values = [s[f"{name}_ms"] for s in samples if s[f"{name}_ms"] is not None]
        if values:
            medians[name] = round(statistics.median(values), 1)
    return medians


def rtp_drift(samples: list[dict]) -> dict:
    """How far the RTP clock of the page's stream gets ahead of arrival, press by press.

    For the first frame of each new stage: its RTP timestamp (90 kHz) in ms minus the
    page-clock time its last packet arrived, relative to the first press. The
    stream's timestamps only move forward, so the wrap-around is undone modulo 2**32. Chromium
    plays a frame at a time derived from its RTP timestamp, so a timeline that runs
    ahead of arrival is held back for longer.
    """
    usable = [
        s
        for s in samples
        if s["first_rtp"] is not None and s["received_ms"] is not None
    ]
    # RTP timestamps start at a random value and wrap at 2**32: count from the first.
    origin = usable[0]["first_rtp"] if usable else 0
    points = [
        ((s["first_rtp"] - origin) % 2**32) / 90 - (s["pressed_at"] + s["received_ms"])
        for s in usable
    ]
    for sample, point in zip(usable, points, strict=True):
        sample["rtp_ahead_ms"] = round(point - points[0], 1)
    steps = [b - a for a, b in zip(points, points[1:], strict=False)]
    return {
        "per_next_ms": statistics.median(steps) if steps else None,
        "total_ms": points[-1] - points[0] if points else None,
    }


def report(bench: Bench, run: dict, args) -> dict:
    keep = [s["ms"] for s in bench.next_samples]
    fresh = [s["ms"] for s in bench.fresh_samples]
    rows = {
        "keep-connection": {
            **summarise(keep),
            "stale_frames": sum(s["stale"] for s in bench.next_samples),
            "presses_with_stale": sum(1 for s in bench.next_samples if s["stale"]),
            "other_stage_frames": sum(
                s["other_stage_frames"] for s in bench.next_samples
            ),
            "failures": len(bench.failures["keep-connection"]),
        },
        "fresh-connection": {
            **summarise(fresh),
            # A new connection has no previous stage whose frames could come late.
            "stale_frames": None,
            "presses_with_stale": None,
            "other_stage_frames": sum(
                s["wrong_stage_frames"] for s in bench.fresh_samples
            ),
            "failures": len(bench.failures["fresh-connection"]),
        },
    }
    drift = rtp_drift(bench.next_samples)
    transitions: dict[str, list[float]] = {}
    for sample in bench.next_samples:
        key = f"{bench.codecs.get(sample['from'], '?')}->{bench.codecs[sample['to']]}"
        transitions.setdefault(key, []).append(sample["ms"])
    by_codec = {key: summarise(values) for key, values in sorted(transitions.items())}
    keep_phases = phase_medians(
        bench.next_samples, ("request_sent", "answered", "received")
    )
    phases = phase_medians(
        bench.fresh_samples, ("gathered", "answered", "connected", "received")
    )

    def ratio(key: str) -> float | None:
        a, b = rows["keep-connection"][key], rows["fresh-connection"][key]
        return round(a / b, 3) if a is not None and b else None

    ratios = {"p50": ratio("p50"), "p95": ratio("p95")}

    def ms(value) -> str:
        return f"{value:8.1f}" if value is not None else "       -"

    print(
        "\nmethod             n      p50      p95      max"
        "  stale frames (presses)  other-stage frames  failures"
    )
    for method, row in rows.items():
        stale = (
            f"{row['stale_frames']:5d} ({row['presses_with_stale']:3d})"
            if row["stale_frames"] is not None
            else "  n/a (new pc)"
        )
        print(
            f"{method:16s} {row['n']:3d} {ms(row['p50'])} {ms(row['p95'])} "
            f"{ms(row['max'])}  {stale:>22s}  {row['other_stage_frames']:18d}"
            f"  {row['failures']:8d}"
        )
    print(
        f"\nratio keep/fresh: p50 {ratios['p50']}, p95 {ratios['p95']}"
        "   (ms from press / from start of the new connection to the first presented"
        " frame)"
    )
    if len(by_codec) > 1:
        print("keep-connection by codec, from -> to (ms):")
        for key, row in by_codec.items():
            print(
                f"  {key:10s} n {row['n']:3d}  p50 {ms(row['p50'])}  "
                f"p95 {ms(row['p95'])}  max {ms(row['max'])}"
            )
    if keep_phases:
        print(
            "keep-connection medians from the press (ms): POST .../next "
            "request_sent/answered, first new frame received "
            + ", ".join(f"{k} {v:.1f}" for k, v in keep_phases.items())
        )
    if phases:
        print(
            "fresh-connection medians from its start (ms): ICE gathered, WHEP "
            "answered, connected, first frame received "
            + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
        )
    for method, samples in (
        ("keep-connection", bench.next_samples),
        ("fresh-connection", bench.fresh_samples),
    ):
        blocks: dict[int, list[float]] = {}
        for sample in samples:
            blocks.setdefault(sample["block"], []).append(sample["ms"])
        print(
            f"{method} median by block, in order: "
            + " ".join(f"{statistics.median(v):.0f}" for v in blocks.values())
        )
        places: dict[int, list[float]] = {}
        for run_of_block in blocks.values():
            for place, value in enumerate(run_of_block, 1):
                places.setdefault(place, []).append(value)
        print(
            f"{method} median by place within its block (1st, 2nd, ...): "
            + " ".join(f"{statistics.median(v):.0f}" for v in places.values())
        )
    if drift["per_next_ms"] is not None:
        print(
            "keep-connection: the RTP timestamps the page receives run ahead of their"
            f" arrival by {drift['per_next_ms']:.1f} ms more per Next (median; "
            f"{drift['total_ms']:.0f} ms over the run)"
        )
    m = run["machine"]
    if "load_average_end" in m:
        print(
            f"machine: {m['nproc']} x {m['cpu_model']}; load average "
            f"{m['load_average_start'][0]:.2f} -> {m['load_average_end'][0]:.2f}; "
            f"busy {m['machine_busy_cores']:.2f} cores, this run "
            f"{m['this_run_cores']:.2f}, others {m['others_cores']:.2f}, "
            f"stolen by the host {m['stolen_cores']:.2f}; "
            f"{run['elapsed_s']} s measured"
        )
    for note in bench.notes:
        print("note:", note)
    for method, errors in bench.failures.items():
        for error in errors[:5]:
            print(f"{method} failure: {error}")
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": vars(args),
        "stages": {
            sid: {
                "name": bench.names[sid],
                "size": list(size),
                "codec": bench.codecs.get(sid),
            }
            for sid, size in bench.sizes.items()
        },
        "summary": rows,
        "keep_by_codec": by_codec,
        "ratio_keep_over_fresh": ratios,
        "keep_phase_medians_ms": keep_phases,
        "keep_rtp_drift": drift,
        "fresh_phase_medians_ms": phases,
        "run": run,
        "notes": bench.notes,
        "failures": bench.failures,
        "samples": {
            "keep-connection": bench.next_samples,
            "fresh-connection": bench.fresh_samples,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nexts", type=int, default=100, help="Next presses")
    parser.add_argument("--fresh", type=int, default=100, help="fresh connections")
    parser.add_argument("--block", type=int, default=10, help="rounds per block")
    parser.add_argument("--warmup", type=int, default=2, help="unrecorded rounds each")
    parser.add_argument(
        "--budget",
        type=float,
        default=240,
        help="seconds from the start after which no new measurement starts",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--wait",
        type=float,
        nargs=2,
        default=WAIT_RANGE,
        metavar=("LOW", "HIGH"),
        help="seconds between measurements, drawn between these",
    )
    parser.add_argument(
        "--h264",
        action="store_true",
        help="the second stage publishes H.264, so Next crosses codecs",
    )
    args = parser.parse_args()

    bench = Bench(args)

    async def bounded() -> dict:
        bench.deadline = time.monotonic() + args.budget
        return await asyncio.wait_for(bench.run(), HARD_LIMIT)

    try:
        run = asyncio.run(bounded())
    except TimeoutError:
        # Something hung: keep what was measured and say so.
        bench.notes.append(f"cut at the hard limit of {HARD_LIMIT:.0f} s")
        run = {"elapsed_s": None, "machine": {"nproc": os.cpu_count()}}
    result = report(bench, run, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"next-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
