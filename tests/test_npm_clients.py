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
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.browser import launch_chromium, new_page
from tests.peers import Publisher, Viewer
from tests.test_ffmpeg_whip import decode_counts, wait_for
from stage.appkeys import VENUE
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


def is_this_host(address: str) -> bool:
    """Whether `address` belongs to this machine: only then can a socket bind to it.

    Packets to an address of this machine never leave it (the kernel loops them back),
    whichever interface carries the address.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def server_pair(pc) -> tuple[str, str]:
    """(local, remote) address of the pair the server's ICE agent nominated."""
    transport = pc.getTransceivers()[0].sender.transport.transport
    pair = next(iter(transport._connection._nominated.values()))
    return pair.local_candidate.host, pair.remote_addr[0]


def assert_stays_on_this_host(client: NodeClient, on_server: tuple[str, str]) -> None:
    """Stage offered only 127.0.0.1; every address either side used is this machine's.

    libwebrtc gathers on every interface and, preferring anything to loopback, sends
    its checks to Stage's 127.0.0.1 from its other host address too; Stage drops that
    candidate from the offer but aioice learns it back as peer-reflexive from the
    checks, so the pair is (that address, 127.0.0.1). It is an address of this
    machine, so nothing leaves it; what must never happen is a pair off the host.
    """
    answer = client.event("answer")
    assert answer["candidates"], "the answer carries no candidates"
    assert set(answer["candidates"]) == {"127.0.0.1"}, answer["candidates"]
    offered = client.event("offer")["candidates"]
    assert "127.0.0.1" in offered, f"wrtc gathered no loopback candidate: {offered}"
    pair = client.event("done")["pair"]
    assert pair and pair["remote"] == "127.0.0.1", pair
    assert is_this_host(pair["local"]), pair
    local, remote = on_server
    assert local == "127.0.0.1" and is_this_host(remote), on_server
    print(f"\nwrtc offered {offered}; wrtc pair {pair}; Stage's pair {on_server}")


async def download_recording(server, http, stage, path: Path) -> Path:
    async def ready_recording():
        async with http.get(
            f"{server.base}/api/stages/{stage['id']}/performances",
            headers={"Authorization": f"Bearer {stage['key']}"},
        ) as response:
            performances = (await response.json())["performances"]
        recording = performances[0]["recording"] if performances else None
        return recording if recording and recording["state"] == "ready" else None

    recording = await wait_for(ready_recording, "no ready recording", 20)
    async with http.get(
        server.base + recording["url"],
        headers={"Authorization": f"Bearer {stage['key']}"},
    ) as response:
        assert response.status == 200, response.status
        path.write_bytes(await response.read())
    return path


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
    assert counts["codecs"]["video"] in ("vp8", "libvpx", "h264"), counts
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
