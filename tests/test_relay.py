"""The relay end to end: real aiortc publishers and viewers against the real server."""

import asyncio
import time

from tests.peers import Publisher, Viewer


async def test_viewer_sees_the_publisher(server, new_stage):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start()
    await viewer.wait_video(count=30, timeout=10)
    sizes = {s[:2] for s in viewer.video_since(0)}
    assert sizes == {(320, 240)}
    assert len(viewer.frames["audio"]) > 20
    await viewer.stop()
    await publisher.stop()
