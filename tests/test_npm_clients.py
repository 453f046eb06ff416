"""Clients no one here wrote, from npm: `@roamhq/wrtc` in Node and `whip-whep` in Chromium.

`@roamhq/wrtc` is Google's libwebrtc bound to Node 20; tests/node/roamhq.mjs is a thin
WHIP publisher and WHEP viewer on top of it. `whip-whep` is a WHIP/WHEP client library
for pages (ES modules, trickle PATCH); here it runs unmodified in headless Chromium
from a page on another 127.0.0.1 port, so every request it makes to Stage is
cross-origin. Both packages are pinned in tests/node/package.json and installed by
`make test` (`npm ci --prefix tests/node`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

import pytest
from aiohttp import web

from stage.appkeys import VENUE
from tests.browser import launch_chromium, new_page
from tests.peers import Publisher, Viewer
from tests.test_ffmpeg_whip import decode_counts, download_recording, wait_for
from tests.test_server_contract import live_ids

NODE_DIR = Path(__file__).parent / "node"
NODE = os.environ.get("STAGE_NODE", "/usr/bin/node")
ROAMHQ = NODE_DIR / "roamhq.mjs"
WHIP_WHEP = NODE_DIR / "node_modules" / "whip-whep"

# Seconds the Node publisher sends and the Node viewer watches before they end by
# themselves; the test kills them only if they overrun by far.
SECONDS = 6


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The npm packages are part of the test setup: missing ones fail, not skip."""
    for package in ("@roamhq/wrtc", "whip-whep"):
        if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
            pytest.fail(
                f"npm package {package} is missing: run `npm ci --prefix tests/node` "
                "(make test does)",
                pytrace=False,
            )
    return NODE_DIR / "node_modules"


class NodeClient:
    """tests/node/roamhq.mjs as a child process; its JSON lines are collected."""

    def __init__(self, *args: str, log: Path) -> None:
        self.args, self.log = args, log
        self.events: list[dict] = []
        self.launched = 0.0
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> NodeClient:
        self.launched = time.monotonic()
        self._log = open(self.log, "wb")
        self.process = await asyncio.create_subprocess_exec(
            NODE,
            str(ROAMHQ),
            *self.args,
            cwd=NODE_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        async for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                event["at"] = time.monotonic()
                self.events.append(event)

    def event(self, name: str) -> dict | None:
        return next((e for e in self.events if e["event"] == name), None)

    async def wait_event(self, name: str, timeout: float) -> dict:
        async def seen():
            failed = self.event("error")
            assert failed is None, f"node client failed: {failed['message']}"
            return self.event(name)

        return await wait_for(seen, f"node client said no {name!r}", timeout, self.log)

    async def finish(self, timeout: float) -> dict:
        """Wait for the client to end by itself; its "done" figures."""
        returncode = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        done = self.event("done")
        assert returncode == 0 and done, (
            f"node client ended with {returncode}: {self.events}\n"
            + self.log.read_text(errors="replace")[-3000:]
        )
        return done

    async def __aexit__(self, *exc) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        if self._reader:
            self._reader.cancel()
        self._log.close()


def server_pair(pc) -> tuple[str, str]:
    """(local, remote) address of the pair the server's ICE agent nominated."""
    transport = pc.getTransceivers()[0].sender.transport.transport
    pair = next(iter(transport._connection._nominated.values()))
    return pair.local_candidate.host, pair.remote_addr[0]


def assert_stays_on_this_host(client: NodeClient, on_server: tuple[str, str]) -> None:
    """Stage offered only 127.0.0.1, and the pair both sides use is loopback to loopback.

    libwebrtc gathers on every interface and also checks Stage's 127.0.0.1 from its
    other host addresses; a loopback-only Stage leaves those checks unanswered (see
    stage/relay/ice.py), so only the 127.0.0.1 pair can succeed.
    """
    answer = client.event("answer")
    assert answer["candidates"], "the answer carries no candidates"
    assert set(answer["candidates"]) == {"127.0.0.1"}, answer["candidates"]
    offered = client.event("offer")["candidates"]
    assert "127.0.0.1" in offered, f"wrtc gathered no loopback candidate: {offered}"
    pair = client.event("done")["pair"]
    assert pair and pair["remote"] == "127.0.0.1", pair
    assert pair["local"] == "127.0.0.1", pair
    assert on_server == ("127.0.0.1", "127.0.0.1"), on_server
    print(f"\nwrtc offered {offered}; wrtc pair {pair}; Stage's pair {on_server}")


async def test_roamhq_wrtc_publishes_to_a_viewer_and_the_recording(
    server, http, new_stage, node_modules, tmp_path
):
    stage = await new_stage("wrtc publisher")
    url = f"{server.base}/whip/{stage['id']}"
    log = tmp_path / "publish.log"
    async with NodeClient("publish", url, stage["key"], str(SECONDS), log=log) as node:

        async def is_live():
            return stage["id"] in await live_ids(server, http)

        await wait_for(is_live, "the wrtc publisher's stage is not live", 20, log)
        viewer = await Viewer(server.base).start(stage_id=stage["id"])
        try:
            first = await viewer.wait_video(count=1, timeout=15)
            await viewer.wait_video(count=30, timeout=15)
            sizes = {s[:2] for s in viewer.video_since(0)}
            assert sizes == {(320, 240)}, sizes
            # The bar moves: the frames are not one picture repeated.
            assert len({s[2] for s in viewer.video_since(0)}) > 1
            (publishing,) = server.app[VENUE].publishers.values()
            on_server = server_pair(publishing.pc)
        finally:
            await viewer.stop()
        done = await node.finish(SECONDS + 30)
    assert_stays_on_this_host(node, on_server)
    assert done["deleteStatus"] == 200, done
    print(
        f"\n@roamhq/wrtc WHIP: launch -> first decoded frame at an aiortc viewer "
        f"{first - node.launched:.2f} s; {done['framesEncoded']} frames encoded"
    )

    counts = decode_counts(
        await download_recording(server, http, stage, tmp_path / "recording")
    )
    assert counts["codecs"] == {"video": "vp8", "audio": "opus"}, counts
    # SECONDS at 30 fps after connecting: well over half of it must be in the file.
    assert counts["video"] >= SECONDS * 30 // 2, counts
    assert counts["audio"] >= SECONDS * 50 // 2, counts
    print(f"@roamhq/wrtc recording decodes: {counts}")


async def test_roamhq_wrtc_watches_an_aiortc_publisher(
    server, http, new_stage, node_modules, tmp_path
):
    stage = await new_stage("aiortc publisher")
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    try:
        url = f"{server.base}/whep/{stage['id']}"
        log = tmp_path / "watch.log"
        async with NodeClient("watch", url, str(SECONDS), log=log) as node:
            first = await node.wait_event("first-frame", 20)
            (watching,) = server.app[VENUE].viewers.values()
            on_server = server_pair(watching.pc)
            done = await node.finish(SECONDS + 30)
    finally:
        await publisher.stop()
    assert_stays_on_this_host(node, on_server)
    assert done["deleteStatus"] == 200, done
    assert done["sizes"] == ["320x240"], done
    # About SECONDS of 30 fps video: far more than a handful must have been decoded.
    assert done["frames"] >= SECONDS * 30 // 3, done
    print(
        f"\n@roamhq/wrtc WHEP: launch -> first decoded frame {first['at'] - node.launched:.2f} s; "
        f"{done['frames']} frames in {SECONDS} s"
    )


# whip-whep in Chromium, from a page on another origin

PAGE = "<!doctype html><title>whip-whep</title><body></body>"

# Publishes the fake camera and microphone with whip-whep's WHIPClient, unmodified.
PUBLISH = """async ([url, key]) => {
  const { WHIPClient } = await import("/whip-whep/whip.js");
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly" });
  const client = new WHIPClient();
  window.whip = client;
  window.pc = pc;
  await client.publish(pc, url, key);
  return client.resourceURL.href;
}"""

# Watches with whip-whep's WHEPClient and plays the video in a <video> element.
WATCH = """async (url) => {
  const { WHEPClient } = await import("/whip-whep/whep.js");
  const pc = new RTCPeerConnection();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  document.body.append(video);
  window.painted = 0;
  pc.ontrack = ({ track }) => {
    if (track.kind !== "video") return;
    video.srcObject = new MediaStream([track]);
    const count = () => { window.painted++; video.requestVideoFrameCallback(count); };
    video.requestVideoFrameCallback(count);
  };
  const client = new WHEPClient();
  window.whep = client;
  window.pc = pc;
  await client.view(pc, url);
  return client.resourceURL.href;
}"""

# A real receive-only offer, POSTed as a page elsewhere would: what can it read back?
WATCH_REFUSED = """async (url) => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  const offer = await pc.createOffer();
  pc.close();
  const response = await fetch(url, {
    method: "POST", body: offer.sdp, headers: { "Content-Type": "application/sdp" },
  });
  return {
    status: response.status,
    body: await response.text(),
    retryAfter: response.headers.get("retry-after"),
  };
}"""

FRAMES_DECODED = """async () => {
  let decoded = 0;
  (await window.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") decoded += s.framesDecoded || 0;
  });
  return decoded;
}"""

# A cross-origin request to Stage as a page makes it; what the page may read of it.
FETCH = """async ([url, method, headers]) => {
  try {
    const response = await fetch(url, { method, headers, body: method === "POST" ? "v=0\\r\\n" : undefined });
    return {
      status: response.status,
      body: await response.text(),
      retryAfter: response.headers.get("retry-after"),
    };
  } catch (error) {
    return { blocked: String(error) };
  }
}"""


@contextlib.asynccontextmanager
async def other_origin(modules: Path):
    """A static site on its own 127.0.0.1 port: an empty page and whip-whep's modules."""
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", page)
    app.router.add_static("/whip-whep/", modules / "whip-whep")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_whip_whep_in_chromium_publishes_and_watches_from_another_origin(
    server, http, new_stage, node_modules, tmp_path
):
    stage = await new_stage("whip-whep")
    whip_url = f"{server.base}/whip/{stage['id']}"
    async with other_origin(node_modules) as origin, launch_chromium() as browser:
        assert origin != server.base
        publish = await new_page(browser)
        # What whip-whep sends to Stage and what it got back, as Chromium saw it.
        exchanges = []
        publish.on(
            "response",
            lambda r: (
                exchanges.append((r.request.method, r.url, r.status))
                if r.url.startswith(server.base)
                else None
            ),
        )
        await publish.goto(origin + "/")
        started = time.monotonic()
        resource = await publish.evaluate(PUBLISH, [whip_url, stage["key"]])
        assert resource.startswith(f"{server.base}/whip/{stage['id']}/publishers/")

        async def is_live():
            return stage["id"] in await live_ids(server, http)

        await wait_for(is_live, "whip-whep's stage is not live", 20)
        live_after = time.monotonic() - started

        watch = await new_page(browser)
        await watch.goto(origin + "/")
        watching = time.monotonic()
        await watch.evaluate(WATCH, f"{server.base}/whep/{stage['id']}")

        async def decoded(count):
            async def enough():
                return await watch.evaluate(FRAMES_DECODED) >= count

            return enough

        await wait_for(await decoded(1), "the whip-whep viewer decoded nothing", 20)
        first_frame_after = time.monotonic() - watching
        await wait_for(await decoded(30), "the whip-whep viewer stalled", 20)
        painted = await watch.evaluate("() => window.painted")
        assert painted > 0, "no frame reached the <video> element"

        # Trickle: whip-whep PATCHed its candidates and Stage took them.
        patches = [s for m, u, s in exchanges if m == "PATCH" and u == resource]
        assert patches and set(patches) == {204}, exchanges

        # A page elsewhere may read Stage's refusals, not just its answers.
        refused = await publish.evaluate(
            FETCH, [whip_url, "POST", {"Content-Type": "application/sdp"}]
        )
        assert refused.get("status") == 401, refused
        assert json.loads(refused["body"])["error"], refused

        # A performance of a few seconds, so that the recording is more than its
        # alignment buffer (stage/recorder/recording.py waits up to 3 s for reports).
        await asyncio.sleep(max(0, SECONDS - (time.monotonic() - started)))
        await watch.evaluate("() => window.whep.stop()")
        await publish.evaluate("() => window.whip.stop()")
        # whip-whep closes its connection before it DELETEs; Stage may see the DTLS
        # close first and end the session itself, so the DELETE finds it gone.
        deletes = [s for m, u, s in exchanges if m == "DELETE" and u == resource]
        assert len(deletes) == 1 and deletes[0] in (200, 404), exchanges

        async def is_over():
            return stage["id"] not in await live_ids(server, http)

        await wait_for(is_over, "the stage is still live after whip-whep's DELETE", 10)
        not_live = await watch.evaluate(
            WATCH_REFUSED, f"{server.base}/whep/{stage['id']}"
        )
    assert not_live["status"] == 409 and not_live["retryAfter"], not_live
    assert json.loads(not_live["body"])["error"], not_live
    print(
        f"\nwhip-whep in Chromium: publish -> live {live_after:.2f} s, "
        f"WHEP view -> first decoded frame {first_frame_after:.2f} s"
    )

    counts = decode_counts(
        await download_recording(server, http, stage, tmp_path / "recording")
    )
    assert counts["codecs"] == {"video": "vp8", "audio": "opus"}, counts
    # Chromium's fake camera runs at 20 to 30 fps: a third of SECONDS at 30 is little.
    assert counts["video"] >= SECONDS * 30 // 3, counts
    assert counts["audio"] >= SECONDS * 50 // 2, counts
    print(f"whip-whep recording decodes: {counts}")
