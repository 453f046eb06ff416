"""Faults of `--workers 2` found by trying to break it (see each test).

A real server subprocess with two workers (tests/test_workers.py's Front), real aiortc
publishers, plain HTTP through the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import aiohttp

from stage.requests import BODY_SECONDS

from .peers import Publisher, Viewer
from .test_workers import front, new_stage, until  # noqa: F401 (front: a fixture)

OVERSIZED_OFFER = b"v=0\r\n" + b"a" * 3_000_000


async def worker_of(http, base: str, stage_id: str) -> str:
    async with http.get(f"{base}/api/stages/{stage_id}") as r:
        return r.headers["X-Stage-Worker"]


async def listed(http, base: str) -> set[str]:
    async with http.get(f"{base}/api/stages") as r:
        return {s["id"] for s in (await r.json())["stages"]}


async def test_a_show_that_ended_no_longer_counts_where_new_stages_go(front):
    """While stage A is live on one worker and nothing is live on the other, every
    new stage should go to the empty worker. Shows that went live and then ended
    must not weigh on the choice, however many there were."""
    base = front.base
    async with aiohttp.ClientSession() as http:
        first = await new_stage(http, base, "First")
        a = await new_stage(http, base, "A")
        first_publisher = await Publisher(base, first["id"], first["key"]).start()
        a_publisher = await Publisher(base, a["id"], a["key"]).start()
        try:
            busy = await worker_of(http, base, a["id"])
            assert await worker_of(http, base, first["id"]) != busy
            await first_publisher.stop()

            async def only_a():
                return await listed(http, base) == {a["id"]}

            await until(only_a, what="only A live")
            placed = []
            for n in range(3):
                short = await new_stage(http, base, f"Short show {n}")
                publisher = await Publisher(base, short["id"], short["key"]).start()
                placed.append(await worker_of(http, base, short["id"]))
                await publisher.stop()
                await until(only_a, what=f"short show {n} ended")
            assert busy not in placed, (
                f"A is live on worker {busy}, the other is empty, yet new stages "
                f"went to workers {placed}"
            )
        finally:
            await a_publisher.stop()


async def _post_oversized(port: int) -> tuple[str, float]:
    """An oversized offer sent as curl sends a body over 1 MB: headers with
    `Expect: 100-continue`, the body once `100 Continue` came (or after 1 s); the
    final status line, and how long it took."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /whep HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/sdp\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(OVERSIZED_OFFER)
        )
        try:
            first = await asyncio.wait_for(reader.readline(), 1.0)
        except TimeoutError:
            first = b""
        if first.startswith(b"HTTP/1.1 100"):
            await reader.readline()  # the blank line after 100 Continue
            first = b""
        if not first:
            writer.write(OVERSIZED_OFFER)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                first = await asyncio.wait_for(reader.readline(), 15.0)
            except TimeoutError:
                first = b"(no answer within 15 s)"
        return first.decode().strip(), time.monotonic() - started
    finally:
        writer.close()


async def test_oversized_offers_do_not_stall_the_front(front):
    """Offers far over the size limit, sent with `Expect: 100-continue` (as curl
    does for bodies over 1 MB), are refused with 413 at once, and a small request
    from another client right after is answered at once too; not after the
    workers' 10 s lingering time, nor with a 502 that blames a failure."""
    port = int(front.base.rsplit(":", 1)[1])
    answers = []
    for _ in range(3):
        answers += [await _post_oversized(port) for _ in range(2)]
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.post(
                f"{front.base}/api/stages",
                json={"name": "After the big ones"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as r:
                answers.append(
                    (f"HTTP/1.1 {r.status} {await r.text()}", time.monotonic() - started)
                )
    late = [(line, round(took, 1)) for line, took in answers if took > 3]
    assert not late, answers
    assert [line.split()[1] for line, _ in answers] == ["413", "413", "201"] * 3, answers


async def test_a_stranger_gets_nothing_from_the_session_of_whoever_made_a_stage(front):
    """Making a stage opens its owner's dashboard session (a cookie) in the owner's
    browser only. Through the front, a stranger with no cookie and no key must
    still be refused the stage's numbers and a new key, as in one process."""
    base = front.base
    async with aiohttp.ClientSession() as owner:
        stage = await new_stage(owner, base, "Mine")
    async with aiohttp.ClientSession() as stranger:
        async with stranger.get(f"{base}/api/stages/{stage['id']}/performances") as r:
            numbers = r.status
        async with stranger.post(f"{base}/api/stages/{stage['id']}/key") as r:
            new_key = (r.status, await r.text())
    assert (numbers, new_key[0]) == (401, 401), (numbers, new_key)


async def test_two_browsers_watching_are_two_visitors(front):
    """Each browser gets its own visitor cookie, so two viewers are two browsers in
    the numbers (views, browsers, average watch), as in one process."""
    base = front.base
    async with aiohttp.ClientSession() as http:
        stage = await new_stage(http, base, "Watched")
    publisher = await Publisher(base, stage["id"], stage["key"]).start()
    viewers = []
    try:
        for _ in range(2):
            viewers.append(await Viewer(base).start(stage["id"]))
        cookies = [
            {c.key: c.value for c in v.cookies}.get("stage_visitor") for v in viewers
        ]
        assert None not in cookies and cookies[0] != cookies[1], cookies
    finally:
        for viewer in viewers:
            await viewer.stop()
        await publisher.stop()


async def test_a_client_that_leaves_mid_upload_is_not_taken_for_a_failed_worker(front):
    """A client that closes its connection halfway through its body (a closed tab, a
    lost network) is nobody's fault: the front says nothing at WARNING about it, and
    the worker serves the next request as before."""
    port = int(front.base.rsplit(":", 1)[1])
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /whep HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: 60000\r\n\r\n"
            + b"v=0\r\n" * 200
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
    async with aiohttp.ClientSession() as http:
        stage = await new_stage(http, front.base, "Still here")
    log = await front.stop()
    assert stage["id"]
    assert "did not answer" not in log and "Traceback" not in log, log


async def test_a_stalled_offer_is_answered_408_by_the_front_as_by_one_process(front):
    """Headers promising an offer, then nothing: the front reads `POST /whep` whole
    (its roulette reads the codecs) and gives up as a worker would, with the same
    sentence, rather than holding the connection."""
    port = int(front.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /whep HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: 200\r\n\r\nv=0\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), BODY_SECONDS + 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert f"did not arrive within {BODY_SECONDS:g} s".encode() in answer, answer


async def test_viewers_arriving_together_fill_both_workers_before_any_is_refused(
    tmp_path,
):
    """Four viewers of one stage arrive at the same moment, two workers each carry
    two (`--max-viewers 2`): every one gets in, two on each worker, though no report
    could have counted the first ones when the last were placed."""
    from .test_workers import Front

    front = await Front(tmp_path / "data", "--max-viewers", "2").start()
    publisher, viewers = None, [Viewer(front.base) for _ in range(4)]
    try:
        async with aiohttp.ClientSession() as http:
            stage = await new_stage(http, front.base, "Crowded")
            publisher = await Publisher(front.base, stage["id"], stage["key"]).start()
            await asyncio.sleep(0.5)  # the stage's worker has reported it live
            await asyncio.gather(*(viewer.start(stage["id"]) for viewer in viewers))
            workers = []
            for viewer in viewers:
                async with http.get(front.base + viewer.location) as r:
                    workers.append(r.headers["X-Stage-Worker"])
        assert sorted(workers) == ["0", "0", "1", "1"], workers
    finally:
        for viewer in viewers:
            if viewer.location:
                await viewer.stop()
        if publisher is not None:
            await publisher.stop()
        await front.stop()
        await front.kill()


# Installed before the watch page's scripts: notes when each overlay on the screen is
# shown or hidden (page clock), with the name it shows, and every video frame's size.
OVERLAY_PROBE = """
(() => {
  window.__overlays = [];
  window.__frames = [];
  document.addEventListener('DOMContentLoaded', () => {
    const note = (overlay) => window.__overlays.push({
      t: performance.now(), id: overlay.id, shown: !overlay.hidden,
      text: overlay.textContent.replace(/\\s+/g, ' ').trim(),
    });
    const observer = new MutationObserver((changes) => {
      for (const change of changes) note(change.target);
    });
    for (const overlay of document.querySelectorAll('#screen .overlay')) {
      observer.observe(overlay, { attributes: true, attributeFilter: ['hidden'] });
    }
    const video = document.getElementById('player');
    const onFrame = (now, meta) => {
      window.__frames.push({ t: now, w: meta.width, h: meta.height });
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
})();
"""

# The first frame of the given size the page presented after t0 (page clock).
FRAME_OF_SIZE_AFTER = """(args) => window.__frames.find(
  (f) => f.t > args.t0 && f.w === args.w && f.h === args.h) || null"""


async def test_a_watch_page_whose_worker_dies_says_so_and_moves_on(front, tmp_path):
    """SIGKILL to the worker carrying what a /watch page shows: its stage and its
    viewer are gone. The page must not call the stage it was on "audio only" (its
    picture stopped because the connection is gone, not because the stage has no
    camera): it says the connection was lost and lands on the stage left, on the
    other worker, as soon as it can."""
    from .browser import launch_chromium, new_page, screenshot
    from .test_browser import keep_shot

    sizes = {"A": (320, 240), "B": (160, 128)}
    publishers = []
    async with aiohttp.ClientSession() as http:
        stages = {n: await new_stage(http, front.base, f"Stage {n}") for n in sizes}
        try:
            for name, stage in stages.items():
                publisher = Publisher(front.base, stage["id"], stage["key"])
                publishers.append(await publisher.start(size=sizes[name]))
            workers = {
                n: await worker_of(http, front.base, s["id"]) for n, s in stages.items()
            }
            assert sorted(workers.values()) == ["0", "1"], workers

            async with launch_chromium(None) as browser:
                page = await new_page(browser)
                await page.add_init_script(OVERLAY_PROBE)
                await page.goto(f"{front.base}/watch")
                await page.wait_for_function(
                    "() => window.stageWatch.stage && window.__frames.length > 30",
                    timeout=15_000,
                )
                watched = await page.evaluate("() => window.stageWatch.stage.id")
                (on,) = [n for n, s in stages.items() if s["id"] == watched]
                (left,) = [n for n in stages if n != on]
                await page.wait_for_function(
                    "(name) => document.getElementById('stage-name').textContent"
                    " === name",
                    arg=f"Stage {on}",
                    timeout=10_000,
                )

                killed_at = await page.evaluate("() => performance.now()")
                os.kill(front.worker_pids[int(workers[on])], signal.SIGKILL)
                width, height = sizes[left]
                frame = await page.wait_for_function(
                    FRAME_OF_SIZE_AFTER,
                    arg={"t0": killed_at, "w": width, "h": height},
                    timeout=30_000,
                    polling=50,
                )
                landed_at = (await frame.json_value())["t"]
                await page.wait_for_function(
                    "(name) => document.getElementById('stage-name').textContent"
                    " === name",
                    arg=f"Stage {left}",
                    timeout=10_000,
                )
                keep_shot(await screenshot(page, tmp_path / "watch-after-worker.png"))
                overlays = await page.evaluate(
                    "(t0) => window.__overlays.filter((o) => o.t > t0)", killed_at
                )
        finally:
            for publisher in publishers:
                await publisher.stop(say_goodbye=False)

    def shown(overlay_id):
        return [
            (round(o["t"] - killed_at), o["text"])
            for o in overlays
            if o["id"] == overlay_id and o["shown"]
        ]

    print(
        f"\nworker {workers[on]} killed under stage {on}: the page showed "
        f"{[(round(o['t'] - killed_at), o['id'], o['shown']) for o in overlays]}, "
        f"stage {left}'s picture {landed_at - killed_at:.0f} ms after the kill"
    )
    assert not shown("audio-only"), (
        f"the page called stage {on} audio only once its worker was gone: "
        f"{shown('audio-only')}"
    )
    lost = shown("lost")
    assert lost and lost[0][0] < landed_at - killed_at, (
        f"the page never said the connection was lost before stage {left}: {overlays}"
    )


async def test_a_perform_page_whose_worker_dies_says_off_air_at_once(front):
    """SIGKILL to the worker carrying a show a /perform page is live on: the front
    ends the show within about 2 s. The page must say so then (off air, recording
    kept, Go live offered), not go on showing "Live" until its connection times out
    some 16 s later."""
    from playwright.async_api import expect

    from .browser import launch_chromium, new_page

    async with launch_chromium(None) as browser, aiohttp.ClientSession() as http:
        page = await new_page(browser)
        await page.goto(f"{front.base}/perform")
        await page.fill("#stage-name", "Short Lived")
        await page.click("#create-stage")
        await expect(page.locator("#go-live")).to_be_enabled(timeout=10_000)
        await page.click("#go-live")
        status = page.locator("#live-status")
        await expect(status).to_have_text("Live", timeout=15_000)
        stage = await page.evaluate(
            "() => JSON.parse(localStorage.getItem('stage.performer'))"
        )
        worker = await worker_of(http, front.base, stage["id"])

        async def live_on_the_server():
            url = f"{front.base}/api/stages/{stage['id']}"
            async with http.get(url) as response:
                return (await response.json())["live"]

        # A show that has been on for a moment: the page heard the server say so.
        await until(live_on_the_server, what="the show live on the server")
        await asyncio.sleep(2)
        killed = time.monotonic()
        os.kill(front.worker_pids[int(worker)], signal.SIGKILL)
        # The front ends the show ~2 s after the kill; the old page only said
        # "The connection to Stage was lost" ~16 s after it.
        await expect(status).to_contain_text(
            "Stage ended your show on its side", timeout=8_000
        )
        said_after = time.monotonic() - killed
        await expect(status).to_contain_text("What was recorded is kept")
        await expect(page.locator("#end-show")).to_be_hidden()
        await expect(page.locator("#go-live")).to_be_enabled()
    print(f"\nworker {worker} killed: off air said {said_after:.1f} s later")
